"""A cluster's prequential error metrics as numpy sums and a ring, updated a batch at a time.

Since start: count, sum of |e|, sum of e^2, and the values' mean and M2 (Chan et al.'s merge of
a batch into the running summary), so MAE, RMSE and R2 cost O(1) to read. Rolling: the last
`window` (value, valuation) pairs in a ring, summarised when read (snapshots are periodic, the
ring is a few hundred numbers). R2 follows river's definition (0 when the values do not vary, or
with fewer than two of them). The ring's values also give the warming fallback of an asset with
no value yet: the median of the cluster's recent values.

Values and valuations are clipped to +-_LIMIT first: the contract allows numbers up to the
double range, whose squares would overflow.

>>> import numpy as np
>>> m = ErrorMetrics(window=2)
>>> m.observe(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0]))
>>> m.stats(rolling=False).mae, m.stats(rolling=True).mae
(1.3333333333333333, 2.0)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamval.stream.contract.outputs import ErrorStats

FloatArray = NDArray[np.float64]

_LIMIT = 1e100


class ErrorMetrics:
    """MAE, RMSE and R2 of one cluster, since start and over the last `window` labelled events."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self._sum_abs = 0.0
        self._sum_sq = 0.0
        self._y_mean = 0.0
        self._y_m2 = 0.0
        self._ring_y = np.zeros(self.window)
        self._ring_e = np.zeros(self.window)
        self._pos = 0  # next ring slot to write

    def observe(self, values: FloatArray, valuations: FloatArray) -> None:
        """Score labelled events, in order."""
        if not len(values):
            return
        y = np.clip(values, -_LIMIT, _LIMIT)
        e = y - np.clip(valuations, -_LIMIT, _LIMIT)
        k = len(y)
        self._sum_abs += float(np.abs(e).sum())
        self._sum_sq += float((e * e).sum())
        mean_b = float(y.mean())
        m2_b = float(((y - mean_b) ** 2).sum())
        n = self.n + k
        delta = mean_b - self._y_mean
        self._y_mean += delta * k / n
        self._y_m2 += m2_b + delta * delta * self.n * k / n
        self.n = n
        tail_y, tail_e = y[-self.window :], e[-self.window :]
        idx = (self._pos + np.arange(len(tail_y))) % self.window
        self._ring_y[idx] = tail_y
        self._ring_e[idx] = tail_e
        self._pos = int((self._pos + k) % self.window)

    def _ring(self) -> tuple[FloatArray, FloatArray]:
        m = min(self.n, self.window)
        idx = (self._pos - m + np.arange(m)) % self.window
        return self._ring_y[idx], self._ring_e[idx]

    def recent_values(self) -> FloatArray:
        """The last `window` values, oldest first."""
        return self._ring()[0]

    def stats(self, rolling: bool) -> ErrorStats:
        if rolling:
            y, e = self._ring()
            n = len(y)
            if n == 0:
                return ErrorStats(0, None, None, None)
            sse = float((e * e).sum())
            mae, mse = float(np.abs(e).mean()), sse / n
            sst = float(((y - y.mean()) ** 2).sum())
        else:
            n = self.n
            if n == 0:
                return ErrorStats(0, None, None, None)
            sse = self._sum_sq
            mae, mse = self._sum_abs / n, sse / n
            sst = self._y_m2
        r2 = (1.0 - sse / sst if sst > 0 else 0.0) if n >= 2 else None
        return ErrorStats(n, mae, math.sqrt(mse), r2)

    def state_dict(self) -> dict[str, Any]:
        y, e = self._ring()
        return {
            "n": self.n,
            "sum_abs": self._sum_abs,
            "sum_sq": self._sum_sq,
            "y_mean": self._y_mean,
            "y_m2": self._y_m2,
            "ring_y": y.copy(),
            "ring_e": e.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._reset()
        self.n = int(state["n"])
        self._sum_abs = float(state["sum_abs"])
        self._sum_sq = float(state["sum_sq"])
        self._y_mean = float(state["y_mean"])
        self._y_m2 = float(state["y_m2"])
        y = np.asarray(state["ring_y"], dtype=np.float64).reshape(-1)
        e = np.asarray(state["ring_e"], dtype=np.float64).reshape(-1)
        m = min(self.n, self.window)
        if len(y) != m or len(e) != m:
            raise ValueError(f"error metrics: ring of {len(y)} values, expected {m}")
        self._ring_y[:m] = y
        self._ring_e[:m] = e
        self._pos = m % self.window
