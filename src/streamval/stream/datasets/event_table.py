"""`EventTable`: a long table of asset observations that knows which columns are what.

Every dataset in this package (generated, long file, wide price table) ends up as one `EventTable`:
one row per asset and event time, columns `asset_id`, `ts` (int64 epoch milliseconds, UTC),
`value` (float, NaN = no observed value), then feature columns (floats, NaN = not known at that
time) and attribute columns (static profile: numbers or strings). Scenarios transform an
`EventTable` into another one; replay turns it into `AssetEvent`s in event-time order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamval.errors import DataError
from streamval.stream.contract.schema import ASSET_ID, TS, VALUE, AssetEvent, Attribute

if TYPE_CHECKING:  # pandas loads with the first table, not with the package
    import pandas as pd

RESERVED = (ASSET_ID, TS, VALUE)


@dataclass(frozen=True)
class EventTable:
    """A long table of events plus the names of its feature and attribute columns.

    The frame is kept sorted by (`ts`, `asset_id`): event-time order across assets, ties broken
    by asset id so that the order is deterministic.

    >>> import pandas as pd
    >>> t = EventTable.from_frame(
    ...     pd.DataFrame({"asset_id": ["b", "a"], "ts": [2, 1], "value": [1.0, 2.0],
    ...                   "score": [0.5, 0.7], "tier": ["x", "y"]}),
    ...     features=["score"], attributes=["tier"])
    >>> [e.asset_id for e in t.events()]
    ['a', 'b']
    >>> next(iter(t.events())).to_bytes()
    b'{"asset_id":"a","ts":1,"value":2.0,"features":{"score":0.7},"attributes":{"tier":"y"}}'
    """

    frame: pd.DataFrame
    features: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        features: list[str] | tuple[str, ...] = (),
        attributes: list[str] | tuple[str, ...] = (),
        extra: list[str] | tuple[str, ...] = (),
    ) -> EventTable:
        """Validate, normalise dtypes and sort `frame`; keep only the named columns.

        `extra` columns (e.g. a month index) travel with the rows but are not part of events.
        """
        features, attributes, extra = tuple(features), tuple(attributes), tuple(extra)
        columns = [*RESERVED, *features, *attributes, *extra]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(f"missing column(s) {missing}; have {list(frame.columns)}")
        if len(set(columns)) != len(columns):
            dupes = sorted({c for c in columns if columns.count(c) > 1})
            raise DataError(f"column(s) {dupes} are named in more than one role")
        out = frame.loc[:, columns].copy()
        out[ASSET_ID] = out[ASSET_ID].astype(str)
        out[TS] = out[TS].astype("int64")
        out[VALUE] = out[VALUE].astype("float64")
        for name in features:
            out[name] = out[name].astype("float64")
        out = out.sort_values([TS, ASSET_ID], kind="stable").reset_index(drop=True)
        return cls(out, features, attributes, extra)

    def with_frame(self, frame: pd.DataFrame) -> EventTable:
        """The same column roles over another frame (e.g. a filtered or shocked copy)."""
        return EventTable.from_frame(
            frame, features=self.features, attributes=self.attributes, extra=self.extra
        )

    def between(self, start_ms: int | None = None, end_ms: int | None = None) -> EventTable:
        """Events with `start_ms <= ts <= end_ms` (either bound optional, both inclusive)."""
        keep = np.ones(len(self.frame), dtype=bool)
        if start_ms is not None:
            keep &= self.frame[TS].to_numpy() >= start_ms
        if end_ms is not None:
            keep &= self.frame[TS].to_numpy() <= end_ms
        frame = self.frame.loc[keep].reset_index(drop=True)
        return EventTable(frame, self.features, self.attributes, self.extra)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def assets(self) -> list[str]:
        """Distinct asset ids, sorted."""
        return sorted(self.frame[ASSET_ID].unique().tolist())

    def events(self) -> Iterator[AssetEvent]:
        """The rows as `AssetEvent`s in event-time order. NaN values and features are left out."""
        frame = self.frame
        ids = frame[ASSET_ID].tolist()
        tss = frame[TS].tolist()
        values = frame[VALUE].tolist()
        feats = [frame[name].tolist() for name in self.features]
        attrs = [frame[name].tolist() for name in self.attributes]
        for i, asset_id in enumerate(ids):
            value = values[i]
            features = {
                name: float(col[i])
                for name, col in zip(self.features, feats, strict=True)
                if not math.isnan(col[i])
            }
            attributes: dict[str, Attribute] = {}
            for name, col in zip(self.attributes, attrs, strict=True):
                attr = _attribute(col[i])
                if attr is not None:
                    attributes[name] = attr
            yield AssetEvent(
                asset_id=asset_id,
                ts_ms=int(tss[i]),
                value=None if math.isnan(value) else float(value),
                features=features,
                attributes=attributes,
            )


def _attribute(raw: object) -> Attribute | None:
    """A contract attribute (number or string) from a cell; missing cells give None."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool | np.bool_):
        return str(bool(raw)).lower()
    if isinstance(raw, int | float | np.integer | np.floating):
        number = float(raw)
        return None if not math.isfinite(number) else number
    import pandas as pd

    return None if pd.isna(raw) else str(raw)
