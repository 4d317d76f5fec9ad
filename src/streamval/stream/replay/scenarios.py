"""Shock scenarios: declarative, deterministic changes to an event table from a given time.

A `Scenario` is a named list of `Shock`s, applied in order. Each shock says

* which assets (`Selector`): attribute equality (`where = {tier = "high"}`), then optionally a
  seeded random `fraction` of those, or an explicit `assets` list; no selector = every asset;
* when (`at`): an RFC 3339 timestamp ("2020-03-16"), an integer step index (the N-th distinct
  event time of the table, 0-based: the month index for the monthly credit book), or a
  percentage of the table's steps ("75%");
* what: `target` (`"value"` or a feature name), `op` and `amount`:
  `shift` adds `amount`, `scale` multiplies by `amount`, `volatility` multiplies the asset's
  step-to-step changes of the target from `at` on by `amount` (in log space for `value`, so values
  stay positive; additively for features), re-accumulated from the last level before `at`;
* how (`shape`): `step` (full effect from `at`) or `ramp` (linear from no effect at `at` to the
  full effect at `at + duration`; `duration` is a step count or a time span such as "5d", "12h",
  "2w").

Events of unselected assets and events before `at` are never changed, and nothing is random
except a `fraction`, which draws from its own `seed`: the same scenario on the same table
always gives the same result. `load_scenario` reads TOML (see docs/scenarios.md); `LIBRARY`
holds the built-in scenarios; `parse_shock_arg("market-crash@2020-03-16")` is the CLI shorthand.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from streamval.errors import DataError
from streamval.stream.contract.schema import ASSET_ID, TS, VALUE, Attribute, parse_timestamp

if TYPE_CHECKING:  # pandas loads when a scenario is applied, not for the CLI's help
    import pandas as pd

    from streamval.stream.datasets.event_table import EventTable

Op = Literal["shift", "scale", "volatility"]
Shape = Literal["step", "ramp"]
At = str | int

_OPS = ("shift", "scale", "volatility")
_SHAPES = ("step", "ramp")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d|w)\s*$", re.IGNORECASE)
_SPAN_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "min": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
}


def parse_span_ms(text: str) -> float:
    """Milliseconds in a span such as "5d", "12h", "2w", "30min", "90s".

    >>> parse_span_ms("2d")
    172800000.0
    """
    match = _SPAN.match(text)
    if not match:
        raise DataError(
            f"ramp duration is not a step count or a time span (5d, 12h, 2w, 30min): {text!r}"
        )
    return float(match.group(1)) * _SPAN_MS[match.group(2).lower()]


@dataclass(frozen=True)
class Selector:
    """Which assets a shock hits: attribute equality, then a seeded fraction, or a list.

    All conditions combine: `where` filters the assets whose attributes equal every given value
    (as seen on any of their rows), `assets` keeps only the listed ones, `fraction` then keeps
    round(fraction * n) of the remaining assets, drawn with `seed`.
    """

    where: Mapping[str, Attribute] = field(default_factory=dict)
    fraction: float | None = None
    seed: int = 0
    assets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise DataError(f"fraction must be between 0 and 1, got {self.fraction}")

    def select(self, table: EventTable) -> list[str]:
        """The selected asset ids, sorted."""
        frame = table.frame
        import pandas as pd

        candidates = pd.Series(True, index=pd.Index(table.assets, name=ASSET_ID))
        for name, wanted in self.where.items():
            if name not in frame.columns:
                raise DataError(
                    f"scenario selects on attribute {name!r}, which the data does not have "
                    f"(attributes: {list(table.attributes)})"
                )
            column = frame[name]
            match = column == wanted
            if isinstance(wanted, int | float) and not isinstance(wanted, bool):
                match = pd.to_numeric(column, errors="coerce") == float(wanted)
            hit = match.groupby(frame[ASSET_ID]).any()
            candidates &= hit.reindex(candidates.index, fill_value=False)
        chosen = sorted(candidates.index[candidates.to_numpy()].tolist())
        if self.assets is not None:
            listed = set(self.assets)
            chosen = [a for a in chosen if a in listed]
        if self.fraction is not None:
            k = round(self.fraction * len(chosen))
            picks = np.random.default_rng(self.seed).choice(len(chosen), size=k, replace=False)
            chosen = sorted(chosen[i] for i in picks)
        return chosen


@dataclass(frozen=True)
class Shock:
    """One change to the `target` of the selected assets from time `at` on."""

    at: At
    target: str = VALUE
    op: Op = "scale"
    amount: float = 1.0
    shape: Shape = "step"
    duration: int | str | None = None
    select: Selector = field(default_factory=Selector)
    name: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise DataError(f"shock op must be one of {_OPS}, got {self.op!r}")
        if self.shape not in _SHAPES:
            raise DataError(f"shock shape must be one of {_SHAPES}, got {self.shape!r}")
        if self.shape == "ramp" and self.duration is None:
            raise DataError("a ramp shock needs a duration (steps, or a span such as '5d')")
        if self.op in {"scale", "volatility"} and self.amount < 0:
            raise DataError(f"a {self.op} amount must not be negative, got {self.amount}")

    def start_ms(self, steps: np.ndarray) -> int:
        """Epoch ms at which the shock starts, given the table's sorted distinct event times."""
        at = self.at
        if isinstance(at, bool):
            raise DataError(
                f"shock 'at' must be a timestamp, a step index or a percentage, got {at!r}"
            )
        if isinstance(at, int):
            if not 0 <= at < len(steps):
                raise DataError(f"shock 'at' step {at} is outside the data's 0..{len(steps) - 1}")
            return int(steps[at])
        percent = _PERCENT.match(at)
        if percent:
            index = min(len(steps) - 1, int(float(percent.group(1)) / 100.0 * len(steps)))
            return int(steps[index])
        try:
            return parse_timestamp(at)
        except Exception:
            raise DataError(
                f"shock 'at' is not a timestamp, step index or percentage: {at!r}"
            ) from None

    def weights(self, ts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Share of the full effect at each event time in `ts` (0 before `at`, 1 when full)."""
        start = self.start_ms(steps)
        after = ts >= start
        if self.shape == "step":
            return after.astype(float)
        if isinstance(self.duration, int):
            if self.duration <= 0:
                raise DataError(f"a ramp duration must be positive, got {self.duration}")
            index = np.searchsorted(steps, ts)
            k = index - np.searchsorted(steps, start)
            return np.where(after, np.clip(k / self.duration, 0.0, 1.0), 0.0)
        span = parse_span_ms(str(self.duration))
        if span <= 0:
            raise DataError(f"a ramp duration must be positive, got {self.duration!r}")
        return np.where(after, np.clip((ts - start) / span, 0.0, 1.0), 0.0)

    def apply(self, table: EventTable) -> EventTable:
        """A copy of `table` with this shock applied."""
        if self.target != VALUE and self.target not in table.features:
            raise DataError(
                f"shock target {self.target!r} is neither 'value' nor a feature of the data "
                f"(features: {list(table.features)})"
            )
        frame = table.frame.copy()
        steps = np.unique(frame[TS].to_numpy())
        if len(steps) == 0:
            return table
        chosen = frame[ASSET_ID].isin(self.select.select(table)).to_numpy()
        ts = frame[TS].to_numpy()
        w = self.weights(ts, steps) * chosen
        x = frame[self.target].to_numpy(dtype=float)
        if self.op == "shift":
            out = x + self.amount * w
        elif self.op == "scale":
            out = x * (1.0 + (self.amount - 1.0) * w)
        else:
            out = self._volatility(frame, x, w)
        frame[self.target] = np.where(w > 0, out, x)
        return table.with_frame(frame)

    def _volatility(self, frame: pd.DataFrame, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        log = self.target == VALUE
        if log and np.nanmin(np.where(w > 0, x, np.inf)) <= 0:
            raise DataError("a volatility shock on 'value' needs positive values")
        level = np.log(x, where=x > 0, out=np.full_like(x, np.nan)) if log else x.copy()
        out = x.copy()
        for _, idx in frame.groupby(ASSET_ID, sort=False).indices.items():
            rows = np.asarray(idx)  # already in time order: the table is sorted by ts
            lv, wt = level[rows], w[rows]
            if not (wt > 0).any():
                continue
            known = ~np.isnan(lv)
            # Changes between known levels are amplified; unknown levels stay unknown.
            factor = 1.0 + (self.amount - 1.0) * wt
            shocked = np.full_like(lv, np.nan)
            prev_true, prev_new = np.nan, np.nan
            for i in range(len(rows)):
                if not known[i]:
                    continue
                if np.isnan(prev_true) or wt[i] == 0:
                    shocked[i] = lv[i]
                else:
                    shocked[i] = prev_new + factor[i] * (lv[i] - prev_true)
                prev_true, prev_new = lv[i], shocked[i]
            out[rows] = np.exp(shocked) if log else shocked
            out[rows] = np.where(known, out[rows], x[rows])
        return out


@dataclass(frozen=True)
class Scenario:
    """A named list of shocks, applied in order."""

    name: str
    shocks: tuple[Shock, ...]
    description: str = ""

    def apply(self, table: EventTable) -> EventTable:
        """A copy of `table` with every shock applied, in order.

        >>> import pandas as pd
        >>> from streamval.stream.datasets import EventTable
        >>> frame = pd.DataFrame({"asset_id": ["a", "b"] * 2, "ts": [1, 1, 2, 2],
        ...     "value": [10.0] * 4, "tier": ["high", "low"] * 2})
        >>> t = EventTable.from_frame(frame, attributes=["tier"])
        >>> high = Selector({"tier": "high"})
        >>> s = Scenario("x", (Shock(at=1, op="scale", amount=0.5, select=high),))
        >>> s.apply(t).frame["value"].tolist()
        [10.0, 10.0, 5.0, 10.0]
        """
        for shock in self.shocks:
            table = shock.apply(table)
        return table

    def at(self, at: At) -> Scenario:
        """The same scenario with every shock starting at `at`."""
        return replace(self, shocks=tuple(replace(s, at=at) for s in self.shocks))


def _shock_from_dict(raw: Mapping[str, Any], where: str) -> Shock:
    known = {
        "name",
        "at",
        "target",
        "op",
        "amount",
        "shape",
        "duration",
        "where",
        "fraction",
        "seed",
        "assets",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    if "at" not in raw:
        raise DataError(f"{where}: 'at' is required (timestamp, step index or percentage)")
    assets = raw.get("assets")
    if assets is not None and (
        not isinstance(assets, list) or not all(isinstance(a, str) for a in assets)
    ):
        raise DataError(f"{where}: 'assets' must be a list of asset ids")
    where_ = raw.get("where", {})
    if not isinstance(where_, dict):
        raise DataError(f"{where}: 'where' must be a table of attribute = value")
    try:
        return Shock(
            name=str(raw.get("name", "")),
            at=raw["at"] if isinstance(raw["at"], int) else str(raw["at"]),
            target=str(raw.get("target", VALUE)),
            op=raw.get("op", "scale"),
            amount=float(raw.get("amount", 1.0)),
            shape=raw.get("shape", "step"),
            duration=raw.get("duration"),
            select=Selector(
                where=dict(where_),
                fraction=None if raw.get("fraction") is None else float(raw["fraction"]),
                seed=int(raw.get("seed", 0)),
                assets=None if assets is None else tuple(assets),
            ),
        )
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {exc}") from None


def scenario_from_dict(raw: Mapping[str, Any], *, source: str = "scenario") -> Scenario:
    """A scenario from its TOML/dict form: `name`, `description`, and `[[shock]]` tables."""
    shocks = raw.get("shock")
    if not isinstance(shocks, list) or not shocks:
        raise DataError(f"{source}: a scenario needs at least one [[shock]] table")
    return Scenario(
        name=str(raw.get("name", Path(source).stem)),
        description=str(raw.get("description", "")),
        shocks=tuple(_shock_from_dict(s, f"{source}: shock {i + 1}") for i, s in enumerate(shocks)),
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario TOML file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: not valid TOML: {exc}") from None
    return scenario_from_dict(raw, source=str(path))


HIGH_RISK = Selector(where={"tier": "high"})

LIBRARY: dict[str, Scenario] = {
    "policy-tightening": Scenario(
        "policy-tightening",
        description=(
            "The paper's policy tightening: at month 18 the credit scores of high-risk (tier "
            "'high') customers drop by 60 points and their valuations follow, 25% lower. For "
            "data with a 'tier' attribute and a 'credit_score' feature (the credit book "
            "generated with its built-in shock switched off)."
        ),
        shocks=(
            Shock(
                name="score drop",
                at=18,
                target="credit_score",
                op="shift",
                amount=-60.0,
                select=HIGH_RISK,
            ),
            Shock(
                name="valuations follow",
                at=18,
                target=VALUE,
                op="scale",
                amount=0.75,
                select=HIGH_RISK,
            ),
        ),
    ),
    "market-crash": Scenario(
        "market-crash",
        description=(
            "A broad crash three quarters of the way through the data: every asset's value "
            "falls 30% over 3 steps, and its step-to-step moves are twice as large afterwards."
        ),
        shocks=(
            Shock(name="turbulence", at="75%", op="volatility", amount=2.0),
            Shock(name="crash", at="75%", op="scale", amount=0.7, shape="ramp", duration=3),
        ),
    ),
    "rate-shock": Scenario(
        "rate-shock",
        description=(
            "A +100 bp rate shock three quarters of the way through the data: values are "
            "repriced 8% lower (a duration of about 8 years) over 5 steps."
        ),
        shocks=(
            Shock(name="repricing", at="75%", op="scale", amount=0.92, shape="ramp", duration=5),
        ),
    ),
}


def parse_shock_arg(text: str) -> Scenario:
    """The CLI shorthand `NAME[@AT]`: a library scenario, optionally moved to `AT`.

    `AT` is a timestamp, an integer step index or a percentage, as in TOML.

    >>> parse_shock_arg("market-crash@2020-03-16").shocks[0].at
    '2020-03-16'
    >>> parse_shock_arg("policy-tightening@12").shocks[0].at
    12
    """
    name, _, at = text.partition("@")
    scenario = LIBRARY.get(name.strip())
    if scenario is None:
        raise DataError(f"unknown shock {name!r}; the library has {sorted(LIBRARY)}")
    if not at:
        return scenario
    at = at.strip()
    return scenario.at(int(at) if re.fullmatch(r"\d+", at) else at)


def describe_library() -> Sequence[str]:
    """One line per library scenario, for help texts."""
    return [f"{name}: {s.description}" for name, s in sorted(LIBRARY.items())]
