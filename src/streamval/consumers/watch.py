"""What a cluster's owner (its learner, `--role learner`) watches: the cluster's error metrics and
its drift detection, on the scored events every valuer sends with its samples
(`learning.SampleBlock.scored`), so both cover all the cluster's assets whichever valuer valued
them.

Error metrics: `ErrorMetrics` over every scored event (warming ones included), the engine's own
definitions, so a dashboard reads the same whichever role computed them.

Detection, as the engine's (`Engine._drift_cut`) on the model-valued events: with
`engine.detector = "cross_sectional"` the shock detector on the standardised errors per
event-time step (the lr policy's per-event ADWIN watches until it has calibrated), else the
per-event detector of the policy. A step is judged over all valuers' events: valuers run ahead
of each other in event time (as input partitions do), so a step's events wait until every valuer
heard from in the last `silence_s` has sent a later step of the cluster; an event of a step
already judged is late (in the metrics, not in the detection; counted).

The metrics' and detectors' state travels with the cluster's model record (`state_dict`), so a
learner that takes a cluster over goes on with them (no second calibration of the detector);
events of steps still waiting are not in it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np

from streamval.config import EngineSettings
from streamval.models.drift import DriftMonitor
from streamval.models.error_metrics import ErrorMetrics
from streamval.models.shocks import CrossSectionalDetector
from streamval.models.trainer import Scored
from streamval.stream.contract.outputs import DriftAlarm

# A valuer silent this long on a cluster no longer holds its steps back (it died, or its assets
# left the cluster).
VALUER_SILENCE_S = 30.0


class ClusterWatch:
    """One cluster's error metrics, detectors and valuers' asset counts, at its owner."""

    def __init__(
        self, settings: EngineSettings, cluster: int, *, silence_s: float = VALUER_SILENCE_S
    ) -> None:
        self.cluster = cluster
        self._settings = settings
        self.detector = settings.detector
        self.step_ms = settings.shock_step_ms
        self.silence_s = silence_s
        self.errors = ErrorMetrics(settings.metrics_window)
        self.shock = (
            CrossSectionalDetector.from_settings(settings)
            if settings.detector == "cross_sectional"
            else None
        )
        self.late = 0  # model-valued events of a step already judged
        self.watermark = -1  # the latest event time scored
        self._pending: defaultdict[int, list[tuple[int, float]]] = defaultdict(list)
        self._valuers: dict[str, tuple[int, int, float]] = {}  # id -> (step, assets, seen at)
        self._judged: int | None = None  # the latest step fed to the detectors

    def assets(self, now: float | None = None) -> int:
        """The cluster's assets: the sum of the latest counts of the valuers not silent."""
        now = time.monotonic() if now is None else now
        return sum(a for _, a, seen in self._valuers.values() if now - seen <= self.silence_s)

    def observe(
        self,
        valuer: str,
        assets: int,
        scored: Scored,
        monitor: DriftMonitor,
        *,
        now: float | None = None,
    ) -> list[DriftAlarm]:
        """Score one valuer's events; the alarms of the steps this completes, in order (their
        `lr` and `response` are the caller's to fill in)."""
        now = time.monotonic() if now is None else now
        if len(scored):
            self.errors.observe(scored.values, scored.valuations)
            self.watermark = max(self.watermark, int(scored.ts.max()))
        keys = scored.ts // self.step_ms if self.step_ms > 0 else scored.ts
        held = self._valuers.get(valuer)
        step = max(int(keys.max()) if len(keys) else -(2**62), held[0] if held else -(2**62))
        self._valuers[valuer] = (step, assets, now)
        model = np.flatnonzero(~np.isnan(scored.z))
        for key, ts, z in zip(
            keys[model].tolist(), scored.ts[model].tolist(), scored.z[model].tolist(), strict=True
        ):
            if self._judged is not None and key <= self._judged:
                self.late += 1
            else:
                self._pending[key].append((ts, z))
        live = [s for s, _, seen in self._valuers.values() if now - seen <= self.silence_s]
        complete = min(live)  # the valuer that just sent is live
        alarms: list[DriftAlarm] = []
        for key in sorted(k for k in self._pending if k < complete):
            for ts, z in self._pending.pop(key):
                alarms.extend(self._feed(ts, z, monitor))
            self._judged = key
        return alarms

    def _feed(self, ts: int, z: float, monitor: DriftMonitor) -> list[DriftAlarm]:
        out = []
        if self.shock is None or not self.shock.calibrated:
            levels = monitor.update(abs(z))
            if levels is not None:
                detector = "adwin" if self.shock is not None else self.detector
                out.append(DriftAlarm(self.cluster, detector, ts, *levels, 0.0, detected_ts_ms=ts))
        if self.shock is not None:
            shock = self.shock.observe(ts, z)
            if shock is not None:
                out.append(
                    DriftAlarm(
                        self.cluster,
                        self.detector,
                        shock.ts_ms,
                        shock.error_before,
                        shock.error_after,
                        lr=0.0,
                        assets=shock.assets,
                        affected=shock.affected,
                        detected_ts_ms=ts,
                    )
                )
        return out

    def state_dict(self) -> dict[str, Any]:
        """The error metrics, the shock detector, the last step judged and the scored events of
        the steps not yet complete (a learner taking over judges them as this one would)."""
        return {
            "errors": self.errors.state_dict(),
            "shock": None if self.shock is None else self.shock.state_dict(),
            "judged": self._judged,
            "watermark": self.watermark,
            "pending": [[k, ts, z] for k, events in self._pending.items() for ts, z in events],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from `state_dict` (ValueError, KeyError or TypeError if it does not fit)."""
        self.errors.load_state_dict(state["errors"])
        shock = state["shock"]
        if (shock is None) != (self.shock is None):
            raise ValueError("watch: a detector state of another engine.detector")
        if self.shock is not None:
            self.shock.load_state_dict(shock)
        judged = state["judged"]
        self._judged = None if judged is None else int(judged)
        self.watermark = int(state["watermark"])
        self._pending.clear()
        for key, ts, z in state.get("pending", []):  # records before it kept none
            self._pending[int(key)].append((int(ts), float(z)))

    def fork_detector(self, parent: ClusterWatch | dict[str, Any]) -> None:
        """A cluster split off `parent` (its watch, or its watch's `state_dict`) starts with the
        parent's detector calibration, as the engine forks it (`CrossSectionalDetector.fork`);
        its error metrics start afresh. A state that does not fit is ignored."""
        if self.shock is None:
            return
        if isinstance(parent, dict):
            other = ClusterWatch.__new__(ClusterWatch)
            other.shock = CrossSectionalDetector.from_settings(self._settings)
            try:
                other.shock.load_state_dict(parent["shock"])
            except (KeyError, ValueError, TypeError):
                return
            parent = other
        if parent.shock is not None:
            self.shock = parent.shock.fork()
