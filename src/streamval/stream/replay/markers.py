"""Real-event markers: dated policy moves and market shocks to show beside replayed data.

A `Marker` is a point in event time with a name and a kind. Replay publishes each one on the
metrics topic when the stream's event time reaches it, so dashboards can draw "Fed hike" or
"COVID crash" over the error curves. Sources:

* `fed_changes(path)`: `fed_target_changes.csv` (announce_date, ..., new_target, change_bp):
  kind "tightening" when change_bp > 0, "easing" when < 0 (announcement date, 00:00 UTC).
* `MARKET_SHOCKS`: known market shocks inside the 2015-2020 S&P 500 window, kind "market-shock".
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamval.errors import DataError
from streamval.stream.contract.schema import parse_timestamp

FED_CSV = "fed_target_changes.csv"


@dataclass(frozen=True, order=True)
class Marker:
    """A real event at `ts_ms` (epoch ms, UTC): what happened (`name`) and what kind it was."""

    ts_ms: int
    name: str
    kind: str
    source: str = "built-in"

    def to_message(self) -> dict[str, Any]:
        """The metrics-topic message announcing this marker.

        >>> Marker(1584316800000, "COVID crash", "market-shock").to_message()["kind"]
        'marker'
        """
        return {
            "kind": "marker",
            "name": self.name,
            "ts": self.ts_ms,
            "source": self.source,
            "marker_kind": self.kind,
        }

    def to_bytes(self) -> bytes:
        """`to_message()` as compact JSON."""
        return json.dumps(self.to_message(), separators=(",", ":")).encode()


def _shock(day: str, name: str) -> Marker:
    return Marker(parse_timestamp(day), name, "market-shock")


MARKET_SHOCKS: tuple[Marker, ...] = (
    _shock("2015-08-24", "2015 market selloff"),
    _shock("2016-06-24", "Brexit vote"),
    _shock("2018-02-05", "2018 volatility shock"),
    _shock("2020-03-16", "COVID-19 crash"),
)


def fed_csv_in(data_folder: Path) -> Path | None:
    """`data_folder/policy/fed_target_changes.csv` if that file exists (the shared data layout)."""
    path = data_folder / "policy" / FED_CSV
    return path if path.is_file() else None


def fed_changes(
    path: str | Path, *, tightening_only: bool = False, date_column: str = "announce_date"
) -> list[Marker]:
    """Fed funds target changes from `fed_target_changes.csv`, oldest first, dated by
    `date_column` (the announcement, or `fred_effective_date`)."""
    from streamval.stream.datasets.readers import parse_numbers, parse_times, read_frame

    path = Path(path)
    raw = read_frame(path)
    for column in (date_column, "change_bp"):
        if column not in raw.columns:
            raise DataError(f"{path}: missing column {column!r}; the file has {list(raw.columns)}")
    ts = parse_times(raw[date_column], date_column, path)
    change = parse_numbers(raw["change_bp"], "change_bp", path, allow_missing=False)
    target = (
        parse_numbers(raw["new_target"], "new_target", path)
        if "new_target" in raw.columns
        else np.full(len(raw), np.nan)
    )
    markers = []
    for when, bp, level in zip(ts.tolist(), change.tolist(), target.tolist(), strict=True):
        if bp == 0 or (tightening_only and bp < 0):
            continue
        to = "" if np.isnan(level) else f" to {level:.2f}%"
        kind = "tightening" if bp > 0 else "easing"
        name = f"Fed {'hike' if bp > 0 else 'cut'} {bp:+.0f} bp{to}"
        markers.append(Marker(int(when), name, kind, source=path.name))
    return sorted(markers)


def within(markers: Iterable[Marker], start_ms: int, end_ms: int) -> list[Marker]:
    """The markers with `start_ms <= ts_ms <= end_ms`, in time order."""
    return sorted(m for m in markers if start_ms <= m.ts_ms <= end_ms)
