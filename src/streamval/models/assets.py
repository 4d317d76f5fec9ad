"""Per-asset state as struct-of-arrays: one row per asset slot, no Python object per asset.

`AssetTable` maps asset ids to slots and keeps every per-asset quantity in an array indexed by
slot, grown in chunks; slots of expired assets are reused. Per slot (L = seq_len, F = feature
slots in use, at most `max_features`; sizes in bytes):

    live, last_ts                   1 + 8    slot in use; event time of the last accepted event
    last_value, n_values, scale     8 + 4 + 8  float64: valuations reproduce persistence exactly;
                                    scale = running mean |value| (profiles, `scale="level"`)
    step_scale, n_changes, held     8 + 4 + 8  the robust unit (below); a held suspect value
    shifted_from                    8        the level before the last confirmed big shift
    err_scale, err_n                8 + 4    EW mean |error| / unit (prediction intervals)
    filled, seen, next_check        2 + 4 + 4  window steps; events; when to re-check the cluster
    cluster, placed, candidate, streak   4 + 1 + 4 + 2  its cluster; hysteresis (the cluster it
                                    would move to and for how many consecutive checks)
    lags [L]                        8 L      the lagged values of the window (float64)
    feats [L, F], last_feat [F]     4 L F + 4 F   dynamic features (float32, clipped to 1e30)
    series statistics               40 + 12 F   Welford count/mean/M2 of the scale-free change,
                                                last change, pairs and sum of products (lag-1
                                                autocorrelation), per-feature sums and counts
    attributes                      8 per numeric, 4 per categorical attribute (codes into a
                                    vocabulary per attribute)

With L = 12 that is about 290 B + 64 B per feature slot, plus the id in a dict (about 100 B).

The unit of an asset (`ScaleRule`, mode "change") divides its window, its training target and
its served change: the EW mean |change| over `horizon` changes, each change entering clipped at
`winsor` units (one outlier moves it by at most winsor / horizon of itself), shrunk towards the
peers' median relative scale (unit / |level|) with a pseudo-count of `prior_n` changes (a new
asset starts at its peers' scale, not at its first noisy change), floored at `floor` x |level|.
A change of more than `spike_guard` units is held: the asset's last value stays, and the next
value either confirms it (nearer the held value: a level shift, accepted) or reverts (a one-row
spike: dropped, never learned from). A big change back towards the level before the last
confirmed shift (a stuck sensor coming back) is accepted at once. In the window, each step's
change is clipped at `input_clip` units, so one bad step cannot saturate the whole window.

The engine processes a batch on `Rows`: a copy of the touched slots' rows (`gather`), changed in
waves (the k-th event of an asset in the batch is in wave k, so a wave touches each row once and
is vectorised) and written back at once (`scatter`) when the batch commits. `Rows.shift` and
`Rows.absorb` are the per-event steps 1 and 5 of the engine, for a whole wave.

>>> table = AssetTable(seq_len=3)
>>> slots = table.allocate(["a", "b"])
>>> rows = table.blank(2)
>>> out = rows.shift(np.array([0, 1]), np.zeros((2, 0), dtype=np.float32), np.array([False, False]))
>>> rows.absorb(np.array([0, 1]), np.array([10.0, np.nan]), out)[0].tolist()
[nan, nan]
>>> table.scatter(slots, rows)
>>> table["last_value"][slots].tolist(), table.n_live
([10.0, nan], 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
Float32Array = NDArray[np.float32]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

# Scale-free quantities (changes, targets, window values) are clipped to +-MAX_RATIO: a value
# jumping by a factor of a million is an upstream error, and unclipped it would overflow
# statistics. Raw features are stored as float32 and saturated at FEATURE_LIMIT.
MAX_RATIO = 1e6
FEATURE_LIMIT = 1e30
# Slots are added in chunks of at least this many (and a quarter of the table), so growing the
# arrays is amortised while the unused tail stays small.
_CHUNK = 1024

# name -> (dtype, fill value, per-slot shape kind): "" scalar, "L" window, "F" feature, "LF" both.
_FIELDS: dict[str, tuple[type, Any, str]] = {
    "live": (np.bool_, False, ""),
    "last_ts": (np.int64, 0, ""),
    "last_value": (np.float64, np.nan, ""),
    "n_values": (np.int32, 0, ""),
    "scale": (np.float64, 0.0, ""),
    "step_scale": (np.float64, 0.0, ""),
    "n_changes": (np.int32, 0, ""),
    "held": (np.float64, np.nan, ""),
    "shifted_from": (np.float64, np.nan, ""),
    "err_scale": (np.float64, np.nan, ""),
    "err_n": (np.int32, 0, ""),
    "filled": (np.int16, 0, ""),
    "seen": (np.int32, 0, ""),
    "next_check": (np.int32, 0, ""),
    "cluster": (np.int32, 0, ""),
    "placed": (np.bool_, False, ""),
    "candidate": (np.int32, -1, ""),
    "streak": (np.int16, 0, ""),
    "lags": (np.float64, np.nan, "L"),
    "feats": (np.float32, np.nan, "LF"),
    "last_feat": (np.float32, np.nan, "F"),
    "st_n": (np.int32, 0, ""),
    "st_mean": (np.float64, 0.0, ""),
    "st_m2": (np.float64, 0.0, ""),
    "st_last": (np.float64, np.nan, ""),
    "st_pairs": (np.int32, 0, ""),
    "st_sxy": (np.float64, 0.0, ""),
    "st_fsum": (np.float64, 0.0, "F"),
    "st_fcount": (np.int32, 0, "F"),
}
FIELDS = tuple(_FIELDS)
# Units are kept within [_TINY, _HUGE]: usable divisors whose products stay finite.
_TINY = 1e-12
_HUGE = 1e300
# Changes an asset needs before the spike guard holds anything (its unit is a guess before).
_GUARD_AFTER = 5
# Changes after which an asset's scale counts among its peers' (`AssetTable.relative_scale`).
PEER_CHANGES = 10


@dataclass(frozen=True)
class ScaleRule:
    """How an asset's unit is kept (see the module docstring); the engine's `scale*` settings."""

    mode: Literal["change", "level"] = "change"
    horizon: int = 50
    winsor: float = 5.0
    floor: float = 1e-4
    prior_n: float = 10.0
    spike_guard: float = 50.0
    input_clip: float = 5.0


def _shape(kind: str, n: int, seq_len: int, n_features: int) -> tuple[int, ...]:
    return (n, *({"L": (seq_len,), "F": (n_features,), "LF": (seq_len, n_features)}.get(kind, ())))


def _blank(name: str, n: int, seq_len: int, n_features: int) -> NDArray[Any]:
    dtype, fill, kind = _FIELDS[name]
    return np.full(_shape(kind, n, seq_len, n_features), fill, dtype=dtype)


@dataclass
class WindowStep:
    """What step 1 (the window) says about each event of a wave."""

    v_last: FloatArray  # the last value known before the event (NaN: none yet)
    unit: FloatArray  # the asset's unit (see `ScaleRule`), usable as a divisor
    level_unit: FloatArray  # its running mean |value| (profile statistics)
    warming: BoolArray  # window not yet full of known values: the fallback values the event
    window_values: FloatArray  # (n, L) (v_lag - v_last) / unit, clipped; NaN where unknown
    window_feats: Float32Array  # (n, L, F) the features of the window's steps


class Rows:
    """A copy of some slots' rows (or blank rows of new assets), changed by whole waves."""

    def __init__(
        self,
        arrays: dict[str, NDArray[Any]],
        numeric: dict[str, FloatArray],
        categorical: dict[str, NDArray[np.int32]],
        seq_len: int,
        rule: ScaleRule | None = None,
    ) -> None:
        self.arrays = arrays
        self.numeric = numeric
        self.categorical = categorical
        self.seq_len = seq_len
        self.rule = rule or ScaleRule()
        # Spike guard outcomes in these rows (counted by the engine at commit).
        self.held = 0
        self.dropped = 0
        self.confirmed = 0
        self.returned = 0

    def __getitem__(self, name: str) -> NDArray[Any]:
        return self.arrays[name]

    @property
    def n(self) -> int:
        return len(self.arrays["live"])

    def widen(self, n_features: int) -> None:
        """Room for more feature slots (NaN / 0 in the new ones)."""
        f = self.arrays["last_feat"].shape[1]
        if n_features <= f:
            return
        for name in FIELDS:
            if "F" in _FIELDS[name][2]:
                new = _blank(name, self.n, self.seq_len, n_features)
                new[..., :f] = self.arrays[name]
                self.arrays[name] = new

    def reset(self, rows: IntArray) -> None:
        """Forget everything about these rows (an expired asset seen again starts afresh)."""
        f = self.arrays["last_feat"].shape[1]
        for name, array in self.arrays.items():
            array[rows] = _blank(name, 1, self.seq_len, f)[0]
        for column in self.numeric.values():
            column[rows] = np.nan
        for codes in self.categorical.values():
            codes[rows] = -1

    def set_attribute(self, row: int, name: str, value: float | None, code: int) -> bool:
        """An event's attribute: a number (`value`) or a string (`code` into the vocabulary);
        whether it differs from what the row held."""
        numbers = self.numeric.get(name)
        if numbers is None:
            numbers = self.numeric[name] = np.full(self.n, np.nan)
        codes = self.categorical.get(name)
        if codes is None:
            codes = self.categorical[name] = np.full(self.n, -1, dtype=np.int32)
        number = np.nan if value is None else float(value)
        old_number = float(numbers[row])
        same = old_number == number or (np.isnan(old_number) and np.isnan(number))
        if same and codes[row] == code:
            return False
        numbers[row] = number
        codes[row] = code
        return True

    def unit(self, rows: IntArray, v_last: FloatArray, prior: float) -> FloatArray:
        """The rows' robust units (mode "change"): own scale shrunk towards `prior` x |level|
        (the peers' median relative scale; 0 = none yet), floored relative to |level|."""
        a, rule = self.arrays, self.rule
        level = np.abs(np.nan_to_num(v_last, nan=0.0))
        scale = a["step_scale"][rows]
        with np.errstate(over="ignore", invalid="ignore"):
            if rule.prior_n > 0 and prior > 0:
                n = a["n_changes"][rows].astype(np.float64)
                scale = (n * scale + rule.prior_n * prior * level) / (n + rule.prior_n)
            unit = np.maximum(scale, rule.floor * level + _TINY)
        out: FloatArray = np.clip(np.nan_to_num(unit, nan=1.0, posinf=_HUGE), _TINY, _HUGE)
        return out

    def shift(
        self,
        rows: IntArray,
        features: Float32Array,
        has_features: BoolArray,
        prior: float = 0.0,
    ) -> WindowStep:
        """Step 1 for one wave: carry features forward, shift the window, say what is known.

        `features[i]` are event i's features (NaN = not carried), `has_features[i]` whether it
        carried any (only those events count in the per-feature means, as before the rewrite).
        `prior` is the peers' relative scale (`AssetTable.relative_scale`).
        """
        a = self.arrays
        last_feat = a["last_feat"][rows]
        last_feat = np.where(np.isnan(features), last_feat, features)
        a["last_feat"][rows] = last_feat
        if last_feat.shape[1] and has_features.any():
            counted = rows[has_features]
            seen = ~np.isnan(last_feat[has_features])
            a["st_fsum"][counted] += np.where(seen, last_feat[has_features], 0.0)
            a["st_fcount"][counted] += seen
        v_last = a["last_value"][rows]
        lags = np.empty((len(rows), self.seq_len))
        lags[:, :-1] = a["lags"][rows, 1:]
        lags[:, -1] = v_last
        a["lags"][rows] = lags
        feats = np.empty((len(rows), self.seq_len, last_feat.shape[1]), dtype=np.float32)
        feats[:, :-1] = a["feats"][rows, 1:]
        feats[:, -1] = last_feat
        a["feats"][rows] = feats
        filled = np.minimum(a["filled"][rows] + 1, self.seq_len).astype(np.int16)
        a["filled"][rows] = filled
        a["seen"][rows] += 1
        scale = a["scale"][rows]
        level_unit = np.where((scale > 0) & np.isfinite(scale), scale, 1.0)
        unit = level_unit if self.rule.mode == "level" else self.unit(rows, v_last, prior)
        warming = np.isnan(v_last) | (filled < self.seq_len) | np.isnan(lags[:, 0])
        with np.errstate(over="ignore", invalid="ignore"):
            # Divided first, so that 1e308 - (-1e308) cannot overflow.
            values = lags / unit[:, None] - (v_last / unit)[:, None]
            values = np.clip(values, -MAX_RATIO, MAX_RATIO)
            clip = self.rule.input_clip
            if clip > 0 and self.seq_len > 1:
                # (v_lag - v_last) / unit rebuilt from the steps' changes, each clipped.
                steps = np.clip(np.diff(values, axis=1), -clip, clip)
                values[:, :-1] = -np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
        return WindowStep(v_last, unit, level_unit, warming, values, feats)

    def absorb(
        self, rows: IntArray, values: FloatArray, step: WindowStep
    ) -> tuple[FloatArray, BoolArray]:
        """Step 5 for one wave: the events' own values become known (after their valuation).

        Returns the scale-free targets (value - v_last) / unit (NaN where there is no sample:
        no value, the asset's first value, or a value the spike guard holds) and which rows
        just reached another value (so the caller can count `min_history`).
        """
        a, rule = self.arrays, self.rule
        has = ~np.isnan(values)
        if not has.any():
            return np.full(len(rows), np.nan), has
        r, value = rows[has], values[has]
        v_last, unit, level_unit = step.v_last[has], step.unit[has], step.level_unit[has]
        known = ~np.isnan(v_last)
        with np.errstate(over="ignore", invalid="ignore"):
            # Divided first, so that 1e308 - (-1e308) cannot overflow.
            change = np.clip(value / unit - v_last / unit, -MAX_RATIO, MAX_RATIO)
            level_change = value / level_unit - v_last / level_unit
        level_change = np.clip(level_change, -MAX_RATIO, MAX_RATIO)
        # Spike guard: a held value is confirmed by a value nearer to it than to the last one.
        held = a["held"][r]
        suspect = known & ~np.isnan(held)
        with np.errstate(over="ignore", invalid="ignore"):
            confirm = suspect & (np.abs(value / unit - held / unit) < np.abs(change))
        self.confirmed += int(confirm.sum())
        self.dropped += int((suspect & ~confirm).sum())
        a["held"][r[suspect]] = np.nan
        a["shifted_from"][r[confirm]] = v_last[confirm]
        n_changes = a["n_changes"][r]
        big = np.zeros(len(r), dtype=bool)
        if rule.spike_guard > 0 and rule.mode == "change":
            big = known & ~confirm & (np.abs(change) > rule.spike_guard)
            big &= n_changes >= _GUARD_AFTER
            before = a["shifted_from"][r]
            with np.errstate(over="ignore", invalid="ignore"):
                back = big & (np.abs(value / unit - before / unit) < np.abs(change))
            a["shifted_from"][r[back]] = np.nan
            self.returned += int(back.sum())
            big &= ~back
            a["held"][r[big]] = value[big]
            self.held += int(big.sum())
        accept = known & ~big
        # Running statistics of the level-relative change (profiles) and its lag-1 products.
        cr, c = r[accept], level_change[accept]
        prev = a["st_last"][cr]
        paired = ~np.isnan(prev)
        a["st_pairs"][cr[paired]] += 1
        a["st_sxy"][cr[paired]] += prev[paired] * c[paired]
        a["st_last"][cr] = c
        n = a["st_n"][cr] + 1
        a["st_n"][cr] = n
        mean = a["st_mean"][cr]
        delta = c - mean
        mean = mean + delta / n
        a["st_mean"][cr] = mean
        a["st_m2"][cr] += delta * (c - mean)
        # The unit's scale: EW mean |change|, winsorised once the asset has a few changes.
        scale = a["step_scale"][r]
        size = np.minimum(np.abs(change) * unit, _HUGE)
        size = np.where(
            n_changes >= 3, np.minimum(size, rule.winsor * np.maximum(scale, unit)), size
        )
        weight = 1.0 / np.minimum(n_changes + 1, rule.horizon)
        a["step_scale"][r] = np.where(accept, scale + weight * (size - scale), scale)
        a["n_changes"][r] += accept
        # The level scale: running mean of |value| (exponential, span seq_len).
        first = a["n_values"][r] == 0
        level = a["scale"][r]
        # The weight first: (|v| - scale) * 2 overflows for |v| near the double range.
        weight = 2.0 / (self.seq_len + 1)
        moved = np.where(first, np.abs(value), level + (np.abs(value) - level) * weight)
        a["scale"][r] = np.where(big, level, moved)
        a["last_value"][r] = np.where(big, v_last, value)
        a["n_values"][r] += 1
        targets = np.full(len(rows), np.nan)
        targets[has] = np.where(accept, change, np.nan)
        return targets, has


class AssetTable:
    """Asset id -> slot, and every per-asset array indexed by slot (see the module docstring)."""

    def __init__(self, seq_len: int, n_features: int = 0, rule: ScaleRule | None = None) -> None:
        self.seq_len = seq_len
        self.n_features = n_features
        self.rule = rule or ScaleRule()
        self.capacity = 0
        self.ids: dict[str, int] = {}
        self.names: list[str | None] = []
        self.free: list[int] = []
        self.arrays = {name: _blank(name, 0, seq_len, n_features) for name in FIELDS}
        self.numeric: dict[str, FloatArray] = {}
        self.categorical: dict[str, NDArray[np.int32]] = {}
        self.vocabularies: dict[str, list[str]] = {}
        self._vocab_index: dict[str, dict[str, int]] = {}

    def __getitem__(self, name: str) -> NDArray[Any]:
        return self.arrays[name]

    @property
    def n_live(self) -> int:
        return len(self.ids)

    def live_slots(self) -> IntArray:
        return np.flatnonzero(self.arrays["live"]).astype(np.int64)

    def relative_scale(self) -> float:
        """The median relative scale (step scale / |last value|) of the live assets with at least
        `PEER_CHANGES` changes and a non-zero level; 0.0 while fewer than 3 have."""
        a = self.arrays
        level = np.abs(a["last_value"])
        ok = a["live"] & (a["n_changes"] >= PEER_CHANGES) & (level > 0) & np.isfinite(level)
        if ok.sum() < 3:
            return 0.0
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            ratio = a["step_scale"][ok] / level[ok]
        ratio = ratio[np.isfinite(ratio)]
        return float(np.median(ratio)) if len(ratio) >= 3 else 0.0

    # -- slots --------------------------------------------------------------------------------

    def allocate(self, names: Sequence[str]) -> IntArray:
        """Slots for new assets (free slots first, then new ones); marks them live."""
        reused = [self.free.pop() for _ in range(min(len(names), len(self.free)))]
        needed = len(names) - len(reused)
        start = len(self.names)
        if start + needed > self.capacity:
            self._grow(max(start + needed, self.capacity + max(_CHUNK, self.capacity // 4)))
        slots = np.array(reused + list(range(start, start + needed)), dtype=np.int64)
        self.names.extend([None] * needed)
        for name, slot in zip(names, slots.tolist(), strict=True):
            self.ids[name] = slot
            self.names[slot] = name
        self.arrays["live"][slots] = True
        return slots

    def release(self, slots: Iterable[int]) -> None:
        """Forget these assets; their slots are reused by later ones."""
        slots = list(slots)
        for slot in slots:
            name = self.names[slot]
            if name is not None:
                del self.ids[name]
                self.names[slot] = None
                self.free.append(slot)
        if slots:
            index = np.asarray(slots, dtype=np.int64)
            for name in FIELDS:
                self.arrays[name][index] = _blank(name, 1, self.seq_len, self.n_features)[0]
            for column in self.numeric.values():
                column[index] = np.nan
            for codes in self.categorical.values():
                codes[index] = -1

    def _grow(self, capacity: int) -> None:
        for name in FIELDS:
            old = self.arrays[name]
            new = _blank(name, capacity, self.seq_len, self.n_features)
            new[: len(old)] = old
            self.arrays[name] = new
        for key, numbers in list(self.numeric.items()):
            self.numeric[key] = np.full(capacity, np.nan)
            self.numeric[key][: len(numbers)] = numbers
        for key, codes in list(self.categorical.items()):
            self.categorical[key] = np.full(capacity, -1, dtype=np.int32)
            self.categorical[key][: len(codes)] = codes
        self.capacity = capacity

    def widen(self, n_features: int) -> None:
        """Room for more feature slots (a new feature name appeared)."""
        if n_features <= self.n_features:
            return
        for name in FIELDS:
            if "F" in _FIELDS[name][2]:
                old = self.arrays[name]
                new = _blank(name, self.capacity, self.seq_len, n_features)
                new[..., : self.n_features] = old
                self.arrays[name] = new
        self.n_features = n_features

    # -- attributes ---------------------------------------------------------------------------

    def code(self, name: str, value: str, pending: dict[str, list[str]]) -> int:
        """The vocabulary code of a string attribute; new strings go to `pending` until commit."""
        index = self._vocab_index.get(name)
        if index is not None:
            code = index.get(value)
            if code is not None:
                return code
        extra = pending.setdefault(name, [])
        base = len(self.vocabularies.get(name, ()))
        try:
            return base + extra.index(value)
        except ValueError:
            extra.append(value)
            return base + len(extra) - 1

    def add_vocabulary(self, pending: dict[str, list[str]]) -> None:
        for name, values in pending.items():
            vocab = self.vocabularies.setdefault(name, [])
            index = self._vocab_index.setdefault(name, {})
            for value in values:
                index[value] = len(vocab)
                vocab.append(value)

    # -- batches ------------------------------------------------------------------------------

    def gather(self, slots: IntArray) -> Rows:
        """A copy of these slots' rows."""
        return Rows(
            {name: array[slots] for name, array in self.arrays.items()},
            {name: column[slots] for name, column in self.numeric.items()},
            {name: codes[slots] for name, codes in self.categorical.items()},
            self.seq_len,
            self.rule,
        )

    def blank(self, n: int) -> Rows:
        """Rows of n new assets."""
        return Rows(
            {name: _blank(name, n, self.seq_len, self.n_features) for name in FIELDS},
            {name: np.full(n, np.nan) for name in self.numeric},
            {name: np.full(n, -1, dtype=np.int32) for name in self.categorical},
            self.seq_len,
            self.rule,
        )

    def scatter(self, slots: IntArray, rows: Rows) -> None:
        """Write rows back (the commit of a batch): plain array assignments."""
        for name, array in self.arrays.items():
            array[slots] = rows.arrays[name]
        self.arrays["live"][slots] = True
        for key, values in rows.numeric.items():
            if key not in self.numeric:
                self.numeric[key] = np.full(self.capacity, np.nan)
            self.numeric[key][slots] = values
        for key, codes in rows.categorical.items():
            if key not in self.categorical:
                self.categorical[key] = np.full(self.capacity, -1, dtype=np.int32)
            self.categorical[key][slots] = codes

    # -- size and state -----------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-slot arrays (the id map comes on top)."""
        arrays = [*self.arrays.values(), *self.numeric.values(), *self.categorical.values()]
        return int(sum(a.nbytes for a in arrays))

    def state_dict(self) -> dict[str, Any]:
        """The live assets' rows (compacted, in slot order) and the attribute vocabularies."""
        live = self.live_slots()
        everything = len(live) == self.capacity
        pick = slice(None) if everything else live
        return {
            "ids": [self.names[s] for s in live.tolist()],
            "n_features": self.n_features,
            "arrays": {
                name: (a.copy() if everything else a[pick]) for name, a in self.arrays.items()
            },
            "numeric": {name: c[pick].copy() for name, c in self.numeric.items()},
            "categorical": {name: c[pick].copy() for name, c in self.categorical.items()},
            "vocabularies": {name: list(v) for name, v in self.vocabularies.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ids = [str(i) for i in state["ids"]]
        n = len(ids)
        n_features = int(state["n_features"])
        fresh = AssetTable(self.seq_len, n_features, self.rule)
        if n:
            fresh._grow(n)
        arrays = state["arrays"]
        for name in FIELDS:
            dtype, _, kind = _FIELDS[name]
            value = np.asarray(arrays[name])
            expected = _shape(kind, n, self.seq_len, n_features)
            if value.shape != expected:
                raise ValueError(f"assets.{name}: shape {value.shape}, expected {expected}")
            fresh.arrays[name][:] = value.astype(dtype, copy=False)
        if n and not fresh.arrays["live"].all():
            raise ValueError("assets.live: a stored asset is not live")
        fresh.names = list(ids)
        fresh.ids = {name: i for i, name in enumerate(ids)}
        if len(fresh.ids) != n:
            raise ValueError("assets.ids: an asset id appears twice")
        for key, values in state["numeric"].items():
            column = np.asarray(values, dtype=np.float64).reshape(-1)
            if len(column) != n:
                raise ValueError(f"assets.numeric.{key}: {len(column)} values for {n} assets")
            fresh.numeric[str(key)] = column.copy()
        for key, values in state["categorical"].items():
            codes = np.asarray(values).astype(np.int32).reshape(-1)
            vocab = [str(v) for v in state["vocabularies"].get(key, [])]
            if len(codes) != n or (len(codes) and codes.max() >= len(vocab)):
                raise ValueError(f"assets.categorical.{key}: codes do not match its vocabulary")
            fresh.categorical[str(key)] = codes.copy()
        for key, vocab in state["vocabularies"].items():
            fresh.vocabularies[str(key)] = [str(v) for v in vocab]
            fresh._vocab_index[str(key)] = {str(v): i for i, v in enumerate(vocab)}
        self.__dict__.update(fresh.__dict__)
