"""Drift detectors whose state is plain numbers: ADWIN (own), Page-Hinkley and KSWIN (river's).

A checkpoint must never hold code, so every detector here exports its learned state as a tree of
numbers and arrays (`state_dict`) and rebuilds itself from one (`load_state_dict`):

    ADWIN         own implementation of ADWIN2 (Bifet & Gavalda, SDM 2007), the same algorithm
                  and defaults as river's `drift.ADWIN` (river's is compiled and cannot export
                  its bucket rows); a unit test checks both fire at the same points
    page_hinkley  river's `drift.PageHinkley`, its six running numbers exported and restored
    kswin         river's `drift.KSWIN`, its window and its `random.Random` state exported

All three reset themselves after firing (as river's do), so callers count alarms themselves.

>>> detector = make_detector("adwin", {"delta": 0.01})
>>> type(detector).__name__
'ADWIN'
>>> for x in [0.0] * 200 + [1.0] * 100:
...     detector.update(x)
...     if detector.drift_detected:
...         break
>>> detector.drift_detected
True
"""

from __future__ import annotations

import collections
import copy
import math
import random
from typing import Any, Literal, Protocol

import numpy as np
from river import drift

DetectorName = Literal["adwin", "page_hinkley", "kswin"]


class Detector(Protocol):
    """What the drift monitor needs from a detector."""

    @property
    def drift_detected(self) -> bool: ...

    def update(self, x: float) -> None: ...

    def copy(self) -> Detector: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ADWIN:
    """Adaptive windowing: fires when two sub-windows of recent inputs differ in mean.

    The window is kept as rows of buckets, row i holding up to `max_buckets` + 1 buckets of
    2**i inputs each (their total and variance); every `clock` inputs each cut between buckets,
    oldest first, is tested with the Hoeffding-style bound of the paper, and the oldest bucket
    is dropped while a cut holds. As in river, the newest bucket of each row is not a cut point.
    """

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._reset()

    def _reset(self) -> None:
        self._totals: list[list[float]] = [[]]
        self._variances: list[list[float]] = [[]]
        self._total = 0.0
        self._variance = 0.0
        self._width = 0
        self._tick = 0
        self._drift_detected = False

    @property
    def drift_detected(self) -> bool:
        return self._drift_detected

    @property
    def width(self) -> int:
        """Inputs in the current window."""
        return self._width

    @property
    def estimation(self) -> float:
        """Mean of the current window."""
        return self._total / self._width if self._width else 0.0

    def update(self, x: float) -> None:
        if self._drift_detected:
            self._reset()
        self._insert(float(x))
        self._drift_detected = self._detect()

    def _insert(self, x: float) -> None:
        self._totals[0].append(x)
        self._variances[0].append(0.0)
        self._width += 1
        if self._width > 1:
            d = x - self._total / (self._width - 1)
            self._variance += (self._width - 1) * d * d / self._width
        self._total += x
        row = 0
        while len(self._totals[row]) == self.max_buckets + 1:
            if row + 1 == len(self._totals):
                self._totals.append([])
                self._variances.append([])
            n = 2.0**row
            t1, t2 = self._totals[row][0], self._totals[row][1]
            mu1, mu2 = t1 / n, t2 / n
            merged = self._variances[row][0] + self._variances[row][1]
            merged += n * n * (mu1 - mu2) * (mu1 - mu2) / (n + n)
            self._totals[row + 1].append(t1 + t2)
            self._variances[row + 1].append(merged)
            del self._totals[row][:2]
            del self._variances[row][:2]
            row += 1

    def _delete_oldest(self) -> float:
        row = len(self._totals) - 1
        n = 2.0**row
        u, v = self._totals[row][0], self._variances[row][0]
        self._width -= int(n)
        self._total -= u
        if self._width > 0:
            mu, mu_window = u / n, self._total / self._width
            self._variance -= v + n * self._width * (mu - mu_window) ** 2 / (n + self._width)
        del self._totals[row][0]
        del self._variances[row][0]
        if not self._totals[row] and row > 0:
            self._totals.pop()
            self._variances.pop()
        return n

    def _detect(self) -> bool:
        self._tick += 1
        if self._tick % self.clock or self._width <= self.grace_period:
            return False
        m = self.min_window_length
        detected = False
        reduce = True
        while reduce:
            reduce = False
            # The bound of a cut (n0 oldest inputs | n1 newest) for the current window.
            delta_prime = math.log(2.0 * math.log(self._width) / self.delta)
            variance = max(self._variance / self._width, 0.0)
            n0, n1, u0, u1 = 0.0, float(self._width), 0.0, self._total
            for row in range(len(self._totals) - 1, -1, -1):
                n2 = 2.0**row
                totals = self._totals[row]
                last = len(totals) - 1 if row == 0 else len(totals)
                for k in range(last):  # the newest input is no cut point
                    n0 += n2
                    n1 -= n2
                    u0 += totals[k]
                    u1 -= totals[k]
                    if n1 < m or n0 < m:
                        continue
                    m_recip = 1.0 / (n0 - m + 1) + 1.0 / (n1 - m + 1)
                    epsilon = math.sqrt(2.0 * m_recip * variance * delta_prime)
                    epsilon += 2.0 / 3.0 * delta_prime * m_recip
                    if abs(u0 / n0 - u1 / n1) > epsilon:
                        reduce = detected = True
                        break
                if reduce:
                    self._delete_oldest()
                    break
        return detected

    def copy(self) -> ADWIN:
        """An independent copy (cheap: the bucket rows are lists of floats)."""
        out = ADWIN.__new__(ADWIN)
        out.__dict__.update(self.__dict__)
        out._totals = [list(row) for row in self._totals]
        out._variances = [list(row) for row in self._variances]
        return out

    def state_dict(self) -> dict[str, Any]:
        rows = len(self._totals)
        totals = np.full((rows, self.max_buckets + 1), np.nan)
        variances = np.full((rows, self.max_buckets + 1), np.nan)
        for i, (t, v) in enumerate(zip(self._totals, self._variances, strict=True)):
            totals[i, : len(t)] = t
            variances[i, : len(v)] = v
        return {
            "counts": np.array([len(t) for t in self._totals], dtype=np.int64),
            "totals": totals,
            "variances": variances,
            "total": self._total,
            "variance": self._variance,
            "width": self._width,
            "tick": self._tick,
            "drift": self._drift_detected,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], dtype=np.int64)
        totals = np.asarray(state["totals"], dtype=np.float64)
        variances = np.asarray(state["variances"], dtype=np.float64)
        if (
            counts.ndim != 1
            or len(counts) == 0
            or totals.shape != (len(counts), self.max_buckets + 1)
            or variances.shape != totals.shape
            or counts.min() < 0
            or counts.max() > self.max_buckets
        ):
            raise ValueError("ADWIN state: bucket rows of the wrong shape")
        self._totals = [totals[i, :c].tolist() for i, c in enumerate(counts)]
        self._variances = [variances[i, :c].tolist() for i, c in enumerate(counts)]
        self._total = float(state["total"])
        self._variance = float(state["variance"])
        self._width = int(state["width"])
        self._tick = int(state["tick"])
        self._drift_detected = bool(state["drift"])


class PageHinkley:
    """river's Page-Hinkley test, with its running numbers exported as state."""

    def __init__(self, **params: Any) -> None:
        self._river: Any = drift.PageHinkley(**params)

    @property
    def drift_detected(self) -> bool:
        return bool(self._river.drift_detected)

    def update(self, x: float) -> None:
        self._river.update(x)

    def copy(self) -> PageHinkley:
        out = PageHinkley.__new__(PageHinkley)
        out._river = copy.deepcopy(self._river)
        return out

    def state_dict(self) -> dict[str, Any]:
        r = self._river
        return {
            "n": float(r._x_mean.n),
            "mean": float(r._x_mean._mean),
            "sum_increase": float(r._sum_increase),
            "sum_decrease": float(r._sum_decrease),
            "min_increase": float(r._min_increase),
            "max_decrease": float(r._max_decrease),
            "drift": bool(r._drift_detected),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r = self._river
        r._reset()
        r._x_mean.n = float(state["n"])
        r._x_mean._mean = float(state["mean"])
        r._sum_increase = float(state["sum_increase"])
        r._sum_decrease = float(state["sum_decrease"])
        r._min_increase = float(state["min_increase"])
        r._max_decrease = float(state["max_decrease"])
        r._drift_detected = bool(state["drift"])


class KSWIN:
    """river's Kolmogorov-Smirnov windowing test, with its window and RNG exported as state."""

    def __init__(self, **params: Any) -> None:
        self._river: Any = drift.KSWIN(**params)

    @property
    def drift_detected(self) -> bool:
        return bool(self._river.drift_detected)

    def update(self, x: float) -> None:
        self._river.update(x)

    def copy(self) -> KSWIN:
        out = KSWIN.__new__(KSWIN)
        out._river = copy.deepcopy(self._river)
        return out

    def state_dict(self) -> dict[str, Any]:
        r = self._river
        version, key, gauss = r._rng.getstate()
        return {
            "n": int(r.n),
            "p_value": float(r.p_value),
            "window": np.asarray(list(r.window), dtype=np.float64),
            "rng_version": int(version),
            "rng_key": np.asarray(key, dtype=np.int64),
            "rng_gauss": None if gauss is None else float(gauss),
            "drift": bool(r._drift_detected),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r = self._river
        r._reset()
        r.n = int(state["n"])
        r.p_value = float(state["p_value"])
        window = np.asarray(state["window"], dtype=np.float64).tolist()
        r.window = collections.deque(window, maxlen=r.window_size)
        key = tuple(int(k) for k in np.asarray(state["rng_key"], dtype=np.int64))
        gauss = state["rng_gauss"]
        rng = random.Random()
        rng.setstate((int(state["rng_version"]), key, None if gauss is None else float(gauss)))
        r._rng = rng
        r._drift_detected = bool(state["drift"])


def make_detector(
    name: DetectorName, params: dict[str, float] | None = None, seed: int = 0
) -> Detector:
    """A fresh drift detector by name, with optional constructor keyword arguments."""
    kwargs: dict[str, Any] = dict(params or {})
    if name == "adwin":
        return ADWIN(**kwargs)
    if name == "page_hinkley":
        return PageHinkley(**kwargs)
    if name == "kswin":
        kwargs.setdefault("seed", seed)
        return KSWIN(**kwargs)
    raise ValueError(f"unknown drift detector {name!r}")
