"""Prediction intervals per cluster: online conformal prediction with adaptive conformal
inference (ACI, Gibbs & Candes 2021), so coverage holds through shifts.

The conformity score of a scored event of asset i is s = |e| / r_i, where e is its error in the
asset's unit and r_i the asset's EW mean |e| over `horizon` events before it (`ErrorScale`: after
a shock an asset's intervals widen with its own errors). Per cluster (`AdaptiveConformal`): the
last `window` scores and an adaptive miscoverage level alpha_t; the half-width of an event is

    hw = Quantile_{1 - alpha_t}(scores) * r_i          (in the asset's unit)

and after each event-time step of the cluster

    alpha_t += gamma * min(n, cap) * (alpha - misses / n)     n = scored events of the step

The cap keeps the step's move of alpha independent of how many assets reported in it: with the
plain per-event update a cluster of 400 assets reporting at once moves alpha by 2 x (alpha - miss
rate) per step, and coverage alternates between 0.72 and 1.00 (research note, issue 12).

A step's scores and misses are applied when the cluster's next event has another event time, so
events sharing an event time get the same quantile whatever the batching (as training does).

>>> aci = AdaptiveConformal(coverage=0.8, window=100)
>>> for t in range(50):
...     aci.advance(t)
...     aci.add(t, score=float(t % 10) / 10, hit=True, width=1.0)
>>> aci.advance(50)
>>> round(aci.alpha, 3)  # every value was inside: alpha rises from 0.2, the intervals narrow
0.25
>>> aci.quantile()  # the 75% quantile of the scores 0.0 .. 0.9
0.7
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamval.models.state import as_array

FloatArray = NDArray[np.float64]

# A cluster serves intervals once it has this many scores (fewer give no usable quantile).
MIN_SCORES = 20
# alpha_t stays in this range: below 0 the interval is the widest score seen (x 1.5), an
# infinite interval in ACI's terms; above 0.5 an interval would cover less than half.
_ALPHA_RANGE = (-0.05, 0.5)
_BEYOND_MAX = 1.5
# An error enters an asset's error scale clipped at this many times the scale (after 3 errors).
_ERR_WINSOR = 10.0
_ERR_FLOOR = 1e-3


class _Ring:
    """The last `n` floats."""

    def __init__(self, size: int) -> None:
        self.buf = np.zeros(size)
        self.n = 0
        self.pos = 0

    def extend(self, xs: list[float]) -> None:
        size = len(self.buf)
        x = np.asarray(xs[-size:], dtype=np.float64)
        k = len(x)
        end = self.pos + k
        if end <= size:
            self.buf[self.pos : end] = x
        else:
            first = size - self.pos
            self.buf[self.pos :] = x[:first]
            self.buf[: k - first] = x[first:]
        self.pos = end % size
        self.n = min(self.n + k, size)

    def values(self) -> FloatArray:
        """Oldest first: a restored ring sums them in the same order (the same mean, bit for
        bit), and a ring of another size could take them."""
        if self.n == len(self.buf):
            return np.concatenate([self.buf[self.pos :], self.buf[: self.pos]])
        return self.buf[: self.n]

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values().copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = as_array(state["values"], np.float64).reshape(-1)[-len(self.buf) :]
        self.buf[:] = 0.0
        self.buf[: len(values)] = values
        self.n = len(values)
        self.pos = self.n % len(self.buf)


class AdaptiveConformal:
    """One cluster's conformal state: scores, adaptive alpha, the pending event-time step, and
    the coverage and width of its served intervals (rolling over `metrics_window` events)."""

    def __init__(
        self,
        coverage: float = 0.9,
        *,
        gamma: float = 0.005,
        cap: int = 50,
        window: int = 2000,
        metrics_window: int = 500,
    ) -> None:
        self.coverage = coverage
        self.gamma = gamma
        self.cap = cap
        self.window = window
        self.metrics_window = metrics_window
        self.alpha = 1.0 - coverage
        self._scores = _Ring(window)
        self._hits = _Ring(metrics_window)
        self._widths = _Ring(metrics_window)
        self._pending_ts: int | None = None
        self._pending: list[float] = []
        self._pending_hits: list[float] = []
        self._pending_widths: list[float] = []
        self._pending_misses = 0
        self._pending_served = 0
        self._q: float | None = None
        self._q_valid = False
        self._q_alpha = self.alpha  # alpha and new scores since the quantile was computed
        self._q_new = 0
        self.scored = 0  # events with an interval and a value, since start
        self.covered = 0  # of which inside their interval

    def copy(self) -> AdaptiveConformal:
        out = AdaptiveConformal.__new__(AdaptiveConformal)
        out.__dict__.update(self.__dict__)
        for name in ("_scores", "_hits", "_widths"):
            ring = getattr(self, name)
            fresh = _Ring(len(ring.buf))
            fresh.buf, fresh.n, fresh.pos = ring.buf.copy(), ring.n, ring.pos
            setattr(out, name, fresh)
        out._pending = list(self._pending)
        out._pending_hits = list(self._pending_hits)
        out._pending_widths = list(self._pending_widths)
        return out

    def fork(self) -> AdaptiveConformal:
        """A new cluster's state: this one's scores and alpha, nothing pending, no metrics."""
        out = self.copy()
        out._hits = _Ring(len(self._hits.buf))
        out._widths = _Ring(len(self._widths.buf))
        out._pending_ts, out._pending = None, []
        out._pending_hits, out._pending_widths = [], []
        out._pending_misses = out._pending_served = 0
        out.scored = out.covered = 0
        return out

    def advance(self, ts: int) -> None:
        """An event of the cluster at `ts`: apply the pending step if it was of another time."""
        if self._pending_ts is not None and ts != self._pending_ts:
            self._flush()

    def quantile(self) -> float | None:
        """The current score quantile (None while the cluster has fewer than MIN_SCORES)."""
        if not self._q_valid:
            scores = self._scores.values()
            if len(scores) < MIN_SCORES:
                self._q = None
            elif self.alpha <= 0:
                self._q = float(scores.max()) * _BEYOND_MAX
            else:
                self._q = float(np.quantile(scores, min(1.0, 1.0 - self.alpha)))
            self._q_valid = True
            self._q_alpha, self._q_new = self.alpha, 0
        return self._q

    def add(self, ts: int, score: float, hit: bool | None, width: float | None) -> None:
        """A scored event of the step at `ts`: its score, and (when it had an interval) whether
        its value was inside and the interval's width in its unit."""
        self._pending_ts = ts
        self._pending.append(score)
        if hit is not None and width is not None:
            self._pending_served += 1
            self._pending_misses += int(not hit)
            self._pending_hits.append(float(hit))
            self._pending_widths.append(width)
            self.scored += 1
            self.covered += int(hit)

    def _flush(self) -> None:
        scores = self._pending
        self._scores.extend(scores)
        self._hits.extend(self._pending_hits)
        self._widths.extend(self._pending_widths)
        n = self._pending_served
        if n:  # alpha adapts on the events that were served an interval
            miss_rate = self._pending_misses / n
            step = self.gamma * min(n, self.cap) * ((1.0 - self.coverage) - miss_rate)
            self.alpha = float(np.clip(self.alpha + step, *_ALPHA_RANGE))
        self._pending_ts, self._pending = None, []
        self._pending_hits, self._pending_widths = [], []
        self._pending_misses = self._pending_served = 0
        # The quantile is recomputed once 1 % of the window is new or alpha moved by 0.01
        # (every step would cost a quantile per event on a stream whose events never share an
        # event time); both are counted in events, so it stays independent of batching.
        self._q_new += len(scores)
        if (
            self._q is None
            or self._q_new >= max(1, self._scores.n // 100)
            or abs(self.alpha - self._q_alpha) >= 0.01
        ):
            self._q_valid = False

    @property
    def rolling_coverage(self) -> float | None:
        """Share of the last `metrics_window` scored values inside their interval (of the event
        times completed: the cluster's latest step counts once its next one begins)."""
        hits = self._hits.values()
        return float(hits.mean()) if len(hits) else None

    @property
    def rolling_width(self) -> float | None:
        """Mean width (upper - lower) of those intervals, in each asset's unit."""
        widths = self._widths.values()
        return float(widths.mean()) if len(widths) else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "scores": self._scores.state_dict(),
            "hits": self._hits.state_dict(),
            "widths": self._widths.state_dict(),
            "pending_ts": self._pending_ts,
            "pending": np.asarray(self._pending, dtype=np.float64),
            "pending_hits": np.asarray(self._pending_hits, dtype=np.float64),
            "pending_widths": np.asarray(self._pending_widths, dtype=np.float64),
            "pending_misses": self._pending_misses,
            "pending_served": self._pending_served,
            "scored": self.scored,
            "covered": self.covered,
            "quantile": [self._q_valid, self._q, self._q_alpha, self._q_new],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alpha = float(state["alpha"])
        self._scores.load_state_dict(state["scores"])
        self._hits.load_state_dict(state["hits"])
        self._widths.load_state_dict(state["widths"])
        ts = state["pending_ts"]
        self._pending_ts = None if ts is None else int(ts)
        self._pending = as_array(state["pending"], np.float64).reshape(-1).tolist()
        self._pending_hits = as_array(state["pending_hits"], np.float64).reshape(-1).tolist()
        self._pending_widths = as_array(state["pending_widths"], np.float64).reshape(-1).tolist()
        self._pending_misses = int(state["pending_misses"])
        self._pending_served = int(state["pending_served"])
        self.scored = int(state["scored"])
        self.covered = int(state["covered"])
        valid, q, q_alpha, q_new = state["quantile"]
        self._q_valid = bool(valid)
        self._q = None if q is None else float(q)
        self._q_alpha, self._q_new = float(q_alpha), int(q_new)


def update_error_scale(r: float, n: int, error: float, horizon: int) -> float:
    """An asset's EW mean |error| (in its unit) after one more error: winsorised at 10 scales
    after 3 errors, and at 10 units before (an asset's first changes are measured in a unit
    that is still a guess)."""
    size = min(error, _ERR_WINSOR * r) if n >= 3 and math.isfinite(r) else min(error, _ERR_WINSOR)
    if n == 0 or not math.isfinite(r):
        return max(size, 0.1)
    weight = 1.0 / min(n + 1, horizon)
    return max(r + weight * (size - r), _ERR_FLOOR)
