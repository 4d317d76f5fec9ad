"""Drift-adaptive learning rate: a detector on a cluster's error drives its lr schedule.

Two parts, because they live on two threads in the engine:

    DriftMonitor             (valuing side) watches the cluster's prequential *scale-free*
                             absolute error (|value - valuation| / asset scale, so big-priced
                             assets do not dominate) and says when it rose
    AdaptiveLearningRate     (training side) the lr and replay share the trainer uses: boosted on
                             an alarm, decaying back with every optimizer update

The monitor's detector sees the error divided by the cluster's mean error over its first
`_CALIBRATION` errors (then frozen), so its input is of order 1 whatever the cluster's volatility:
the detectors' default thresholds (ADWIN's bound, Page-Hinkley's `threshold`) are made for such
numbers. A detector change in which the error *fell* (the model improved) is not an alarm. On an
alarm the schedule restarts the boost:

    lr = base_lr * boost                      the boost restarts at full strength on every alarm
    lr decays back: base_lr * (1 + (boost - 1) * 0.5 ** (updates_since_alarm / half_life))
    adapting = lr above base_lr               snapped back to base once the excess is below 1 %

The trainer reads `reset_moments_on_drift` (clear Adam's first moments on an alarm) and
`replay_fraction` (shrunk while adapting so the learner trains on the new regime). `boost == 1`
turns adaptation off (alarms are still counted and reported). Both parts export their state as
numbers (`state_dict`), never as pickles.

>>> policy = AdaptiveLearningRate(base_lr=1e-3, boost=5.0, half_life=10.0)
>>> policy.lr, policy.adapting
(0.001, False)
>>> policy.trigger()
>>> round(policy.lr, 6), policy.adapting
(0.005, True)
>>> for _ in range(10):
...     policy.on_update()
>>> round(policy.lr, 6)
0.003
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from streamval.models.base import Estimator
from streamval.models.detectors import DetectorName, make_detector

__all__ = ["AdaptiveLearningRate", "DetectorName", "DriftMonitor", "make_detector"]

# Errors kept for the before/after levels of an alarm: the newest _LEVEL_WINDOW are "after",
# the 3 * _LEVEL_WINDOW before them are "before" (ADWIN typically fires within a few dozen events).
_LEVEL_WINDOW = 32
# Below this excess over the base lr (relative to base) the boost is over.
_ADAPTING_EPS = 0.01
# Errors used to calibrate the detector's unit before it starts watching.
_CALIBRATION = 100


class DriftMonitor(Estimator):
    """A detector on a cluster's scale-free absolute error that reports error *increases*.

    Settings are the constructor arguments; learned state (detector, calibration, recent errors)
    is created by `_reset()` and round-trips through `state_dict()` / `load_state_dict()`.
    """

    def __init__(
        self,
        detector: DetectorName = "adwin",
        detector_params: dict[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.detector = detector
        self.detector_params = dict(detector_params or {})
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        self._detector = make_detector(self.detector, self.detector_params, self.seed)
        self._errors: deque[float] = deque(maxlen=4 * _LEVEL_WINDOW)
        self._calibration: list[float] = []
        self._unit = 0.0  # 0 = still calibrating

    def levels(self) -> tuple[float, float]:
        """Mean error before and after the newest `_LEVEL_WINDOW` errors (short rolling means)."""
        errors = list(self._errors)
        after = errors[-_LEVEL_WINDOW:]
        before = errors[:-_LEVEL_WINDOW] or after
        return (
            math.fsum(before) / len(before) if before else 0.0,
            math.fsum(after) / len(after) if after else 0.0,
        )

    def update(self, error: float) -> tuple[float, float] | None:
        """Feed one scale-free absolute error; on an error increase return (before, after)."""
        self._errors.append(error)
        if self._unit == 0.0:
            self._calibration.append(error)
            if len(self._calibration) >= _CALIBRATION:
                mean = math.fsum(self._calibration) / len(self._calibration)
                self._unit = mean if mean > 0.0 and math.isfinite(mean) else 1.0
                self._calibration = []
            return None
        self._detector.update(error / self._unit)
        if not self._detector.drift_detected:
            return None
        before, after = self.levels()
        return (before, after) if after > before else None

    def copy(self) -> DriftMonitor:
        """An independent copy (the engine feeds a copy while it computes a batch)."""
        out = DriftMonitor.__new__(DriftMonitor)
        out.__dict__.update(self.__dict__)
        out.detector_params = dict(self.detector_params)
        out._detector = self._detector.copy()
        out._errors = self._errors.copy()
        out._calibration = list(self._calibration)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self._detector.state_dict(),
            "errors": np.asarray(self._errors, dtype=np.float64),
            "calibration": np.asarray(self._calibration, dtype=np.float64),
            "unit": self._unit,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset()
        self._detector.load_state_dict(state["detector"])
        errors = np.asarray(state["errors"], dtype=np.float64).reshape(-1)
        self._errors = deque(errors.tolist(), maxlen=4 * _LEVEL_WINDOW)
        self._calibration = np.asarray(state["calibration"], dtype=np.float64).ravel().tolist()
        self._unit = float(state["unit"])


class AdaptiveLearningRate(Estimator):
    """A cluster's learning-rate schedule: base lr, boosted on alarms, decaying back.

    `update(error)` is a convenience for one-thread use: it feeds an own `DriftMonitor` and
    triggers the boost on an alarm. The engine keeps the monitor on the valuing side instead and
    calls `trigger()` itself.
    """

    settings_names = {
        "base_lr": "lr",
        "boost": "lr_boost",
        "half_life": "lr_half_life",
        "base_replay_fraction": "replay_fraction",
    }

    def __init__(
        self,
        base_lr: float,
        *,
        boost: float = 5.0,
        half_life: float = 50.0,
        detector: DetectorName = "adwin",
        detector_params: dict[str, float] | None = None,
        base_replay_fraction: float = 0.5,
        drift_replay_fraction: float = 0.1,
        reset_moments_on_drift: bool = True,
        seed: int = 0,
    ) -> None:
        self.base_lr = base_lr
        self.boost = boost
        self.half_life = half_life
        self.detector = detector
        self.detector_params = dict(detector_params or {})
        self.base_replay_fraction = base_replay_fraction
        self.drift_replay_fraction = drift_replay_fraction
        self.reset_moments_on_drift = reset_moments_on_drift
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        self.monitor = DriftMonitor(self.detector, self.detector_params, self.seed)
        self._alarms = 0
        self._excess = 0.0  # (multiplier - 1) right after the last alarm; 0 = not adapting
        self._updates_since_alarm = 0

    @property
    def alarms(self) -> int:
        """Alarms so far (error increases the detector confirmed)."""
        return self._alarms

    @property
    def multiplier(self) -> float:
        """Current lr / base lr."""
        if self._excess == 0.0:
            return 1.0
        decay: float = 0.5 ** (self._updates_since_alarm / self.half_life)
        return 1.0 + self._excess * decay

    @property
    def lr(self) -> float:
        return self.base_lr * self.multiplier

    @property
    def adapting(self) -> bool:
        """True while the lr is above its base (a boost is decaying)."""
        return self._excess != 0.0

    @property
    def replay_fraction(self) -> float:
        """Share of replayed old samples in a training batch: smaller while adapting."""
        return self.drift_replay_fraction if self.adapting else self.base_replay_fraction

    def update(self, error: float) -> tuple[float, float] | None:
        """Feed one scale-free absolute error; on an alarm trigger and return (before, after)."""
        levels = self.monitor.update(error)
        if levels is not None:
            self.trigger()
        return levels

    def trigger(self) -> None:
        """Register an alarm: count it and restart the boost at full strength."""
        self._alarms += 1
        if self.boost > 1.0:
            self._excess = self.boost - 1.0
            self._updates_since_alarm = 0

    def on_update(self) -> None:
        """Advance the decay by one optimizer update."""
        if self._excess == 0.0:
            return
        self._updates_since_alarm += 1
        if self.multiplier - 1.0 < _ADAPTING_EPS:
            self._excess = 0.0
            self._updates_since_alarm = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.state_dict(),
            "alarms": self._alarms,
            "excess": self._excess,
            "updates_since_alarm": self._updates_since_alarm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self._alarms = int(state["alarms"])
        self._excess = float(state["excess"])
        self._updates_since_alarm = int(state["updates_since_alarm"])
