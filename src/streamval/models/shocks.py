"""Shock detection on a cluster's cross-sectional error per event-time step.

A tightening or a crash hits many assets of a cluster at the same event time; a per-event detector
on one error stream mostly sees noise (issue 12: alarms at their background rate). Here each
labelled, model-valued event gives the standardised error z = (value - valuation) / unit of its
asset (the engine's robust per-asset unit, EW mean |change|), clipped at +-`z_clip`. Per step (the
events of the cluster sharing an event time, or an event-time bucket of `step_ms`) over the n
assets that reported:

    m = sqrt(n) * mean(z)                 a common signed move (a crash, a tightening)
    a = sqrt(n) * (mean(|z|) - 1)         a common burst of error size (a volatility shock)

Calibration: the first `calibration` steps with at least `min_assets` assets give the median and
MAD of each statistic. A later step alarms when a robust score, |m - med| / MAD or
(a - med) / MAD, exceeds its threshold: the (1 - rate / 2) quantile of that score over the
calibration steps, floored at the normal quantile of the same rate, so `rate` is the false-alarm
rate per step on calm data. Two things keep that rate honest although it is far in the tail (at
0.002 a step, one step in 1,000 per statistic, beyond what 250 steps can show): the quantile
beyond the top 10 % of the scores is extrapolated from their mean excess (an exponential tail,
peaks over threshold) rather than read off the few largest; and the calibration keeps growing,
every step judged added to it, the thresholds recomputed each time it doubles, until
`calibration_max` steps (then frozen). Measured on calm panels of 30 assets with a common factor
(tests/unit/test_shocks.py, the default rate 0.002): with the first 250 steps alone and the
empirical quantile the realised rate was 2.4 (normal errors) and 1.9 (Student t5) times `rate`,
from 0.0003 to 0.009 between runs; with both, 0.4 and 1.2 times.
After an alarm the cluster stays quiet for `refractory` steps, unless a step escalates (beyond
twice its threshold and beyond the score of the alarm that started the quiet period): a weak
false alarm must not mask the shock that follows it.

A new cluster (a re-fit's fork) calibrates afresh on its own steps: a calibration is a property of
the assets it was measured on, and a fork's are another population (fewer assets, often another
sector's tail). Until its own calibration is complete the parent's frozen thresholds are in force
if the parent had any (else the engine's per-event fallback watches, as for any uncalibrated
cluster); the parent's partial calibration steps are not carried over.

A step is closed (scored) when the cluster's next event belongs to another step, so events
sharing an event time are judged together whatever the batching; the alarm comes with that next
event and reports the closed step's event time.

>>> det = CrossSectionalDetector(rate=0.01, calibration=30, refractory=5)
>>> rng = np.random.default_rng(0)
>>> alarms = []
>>> for t in range(60):
...     z = rng.normal(size=40) * 0.8 + (3.0 if t == 45 else 0.0)
...     for x in z:
...         alarm = det.observe(t, float(x))
...         if alarm is not None:
...             alarms.append(alarm)
>>> [(a.ts_ms, a.assets) for a in alarms]
[(45, 40)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from streamval.models.base import Estimator
from streamval.models.state import as_array

# EW weight of a step's mean |z| in the cluster's error level (the alarm's "before").
_LEVEL_ALPHA = 0.05
# |z| above this counts an asset as affected by a step's shock.
_AFFECTED = 2.0
# Within the refractory period a step alarms only beyond this many thresholds (and the score of
# the alarm that started it).
_ESCALATION = 2.0
# A MAD of zero (constant calibration statistic) is replaced by this.
_MAD_FLOOR = 1e-6
# The share of the largest calibration scores whose mean excess extrapolates a far quantile.
_TAIL = 0.1


@dataclass(frozen=True, slots=True)
class Shock:
    """A closed step whose cross-sectional error was beyond the calibrated threshold."""

    ts_ms: int  # the step's (latest) event time
    assets: int  # assets that reported in the step
    affected: int  # of them with |z| > 2
    error_before: float  # the cluster's EW mean |z| over the steps before
    error_after: float  # the step's mean |z|
    score: float  # the larger robust score over its threshold (> 1 means beyond)


class CrossSectionalDetector(Estimator):
    """Per-cluster shock detector on the step means of standardised errors (see module doc)."""

    settings_names = {
        "rate": "shock_rate",
        "calibration": "shock_calibration",
        "calibration_max": "shock_calibration_max",
        "refractory": "shock_refractory",
        "min_assets": "shock_min_assets",
        "step_ms": "shock_step_ms",
    }

    def __init__(
        self,
        *,
        rate: float = 0.002,
        calibration: int = 250,
        calibration_max: int = 2000,
        refractory: int = 10,
        min_assets: int = 2,
        step_ms: int = 0,
        z_clip: float = 5.0,
    ) -> None:
        self.rate = rate
        self.calibration = calibration
        self.calibration_max = calibration_max
        self.refractory = refractory
        self.min_assets = min_assets
        self.step_ms = step_ms
        self.z_clip = z_clip
        self._reset()

    def _reset(self) -> None:
        self._key: int | None = None  # the open step
        self._ts = 0  # its latest event time
        self._sum = 0.0
        self._abs = 0.0
        self._n = 0
        self._big = 0
        self._calib: list[tuple[float, float]] = []
        self._ref: tuple[float, float, float, float] | None = None  # med/MAD of m, of a
        self._recalibrating = False  # a fork: the parent's thresholds until its own are set
        self._k = (math.inf, math.inf)
        self._quiet = 0
        self._quiet_score = 0.0
        self._level = 1.0
        self.steps = 0  # closed steps scored after calibration
        self.alarms = 0

    @property
    def calibrated(self) -> bool:
        return self._ref is not None

    @property
    def thresholds(self) -> tuple[float, float]:
        """The robust-score thresholds of m and a (inf while calibrating)."""
        return self._k

    def observe(self, ts: int, z: float) -> Shock | None:
        """One event's standardised error; a `Shock` if it closed a step that alarms."""
        key = ts // self.step_ms if self.step_ms > 0 else ts
        shock = None
        if key != self._key:
            if self._key is not None:
                shock = self._close()
            self._key, self._ts = key, ts
            self._sum = self._abs = 0.0
            self._n = self._big = 0
        z = min(max(z, -self.z_clip), self.z_clip) if math.isfinite(z) else 0.0
        self._sum += z
        self._abs += abs(z)
        self._n += 1
        self._big += int(abs(z) > _AFFECTED)
        self._ts = max(self._ts, ts)
        return shock

    def _close(self) -> Shock | None:
        n = self._n
        if n < max(self.min_assets, 1):
            return None
        root = math.sqrt(n)
        m = root * self._sum / n
        level = self._abs / n
        a = root * (level - 1.0)
        before = self._level
        self._level += _LEVEL_ALPHA * (min(level, self.z_clip) - self._level)
        if self._ref is None or self._recalibrating:
            scored = self._ref is not None  # a fork's step under the parent's thresholds
            self._calib.append((m, a))
            if len(self._calib) >= self.calibration:
                self._calibrate()
            if not scored:
                return None
            return self._judge(m, a, n, before, level)
        shock = self._judge(m, a, n, before, level)
        self._grow(m, a)
        return shock

    def _grow(self, m: float, a: float) -> None:
        """A judged step joins the calibration; it is recomputed at each doubling, up to
        `calibration_max` steps."""
        size = len(self._calib)
        if size >= self.calibration_max:
            return
        self._calib.append((m, a))
        size += 1
        doubling = size % self.calibration == 0 and (size // self.calibration).bit_count() == 1
        if doubling or size == self.calibration_max:
            self._calibrate()

    def _judge(self, m: float, a: float, n: int, before: float, level: float) -> Shock | None:
        """A step scored against the thresholds: the shock, if it is one."""
        assert self._ref is not None
        self.steps += 1
        med_m, mad_m, med_a, mad_a = self._ref
        um = abs(m - med_m) / mad_m
        ua = (a - med_a) / mad_a
        score = max(um / self._k[0], ua / self._k[1])
        if self._quiet > 0:
            self._quiet -= 1
            # Quiet, unless the step escalates: a weak (false) alarm must not mask a shock.
            if score <= max(_ESCALATION, self._quiet_score):
                return None
        elif score <= 1.0:
            return None
        self._quiet = self.refractory
        self._quiet_score = score
        self.alarms += 1
        return Shock(self._ts, n, self._big, before, level, score)

    def _calibrate(self) -> None:
        x = np.asarray(self._calib, dtype=np.float64)
        med = np.median(x, axis=0)
        mad = np.maximum(1.4826 * np.median(np.abs(x - med), axis=0), _MAD_FLOOR)
        self._ref = (float(med[0]), float(mad[0]), float(med[1]), float(mad[1]))
        um = np.abs(x[:, 0] - med[0]) / mad[0]
        ua = (x[:, 1] - med[1]) / mad[1]
        half = self.rate / 2  # two statistics share the rate
        normal = NormalDist()
        floor_m = normal.inv_cdf(1 - half / 2)  # two-sided
        floor_a = normal.inv_cdf(1 - half)
        self._k = (max(floor_m, tail_quantile(um, half)), max(floor_a, tail_quantile(ua, half)))
        self._recalibrating = False

    def copy(self) -> CrossSectionalDetector:
        """An independent copy (the engine feeds a copy while it computes a segment)."""
        out = CrossSectionalDetector.__new__(CrossSectionalDetector)
        out.__dict__.update(self.__dict__)
        out._calib = list(self._calib)
        return out

    def fork(self) -> CrossSectionalDetector:
        """A new cluster's detector: it calibrates afresh on its own steps (its assets are
        another population: fewer of them, another sector's tail); meanwhile this one's frozen
        thresholds, if any, are in force. No open step, no counts, none of this one's partial
        calibration."""
        out = self.copy()
        out._key, out._n, out._sum, out._abs, out._big = None, 0, 0.0, 0.0, 0
        out._quiet, out._quiet_score = 0, 0.0
        out._calib = []
        out._recalibrating = out._ref is not None
        out.steps = out.alarms = 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "key": self._key,
            "ts": self._ts,
            "sums": [self._sum, self._abs],
            "counts": [self._n, self._big],
            "calib": np.asarray(self._calib, dtype=np.float64).reshape(-1, 2),
            "ref": None if self._ref is None else list(self._ref),
            "recalibrating": self._recalibrating,
            "k": [_finite(v) for v in self._k],
            "quiet": [self._quiet, self._quiet_score],
            "level": self._level,
            "steps": self.steps,
            "alarms": self.alarms,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset()
        self._key = None if state["key"] is None else int(state["key"])
        self._ts = int(state["ts"])
        self._sum, self._abs = (float(x) for x in state["sums"])
        self._n, self._big = (int(x) for x in state["counts"])
        calib = as_array(state["calib"], np.float64).reshape(-1, 2)
        self._calib = [(float(m), float(a)) for m, a in calib.tolist()]
        ref = state["ref"]
        if ref is not None:
            rm, sm, ra, sa = (float(x) for x in ref)
            self._ref = (rm, sm, ra, sa)
        self._recalibrating = bool(state.get("recalibrating", False))
        km, ka = (math.inf if x is None else float(x) for x in state["k"])
        self._k = (km, ka)
        self._quiet = int(state["quiet"][0])
        self._quiet_score = float(state["quiet"][1])
        self._level = float(state["level"])
        self.steps = int(state["steps"])
        self.alarms = int(state["alarms"])


def tail_quantile(x: np.ndarray, p: float) -> float:
    """The (1 - p) quantile of `x`; beyond its top `_TAIL` share, extrapolated from their mean
    excess (an exponential tail), where a sample of this size has too few points to read it.

    >>> x = np.random.default_rng(0).exponential(size=100_000)
    >>> round(tail_quantile(x, 0.001), 1), round(float(np.log(1000)), 1)
    (6.9, 6.9)
    """
    if p >= _TAIL:
        return float(np.quantile(x, 1 - p))
    u = float(np.quantile(x, 1 - _TAIL))
    excess = x[x > u] - u
    beta = float(excess.mean()) if len(excess) else 0.0
    return u + beta * math.log(_TAIL / p)


def _finite(x: float) -> float | None:
    """JSON has no infinity: an unset threshold is stored as None."""
    return x if math.isfinite(x) else None
