"""Valuation by historical analogues: the change that followed the k most similar past windows."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from river import stats

from streamval.stream.contract.ordering import OrderGuard
from streamval.stream.contract.outputs import BatchResult, Valuation
from streamval.stream.contract.schema import AssetEvent

FloatArray = NDArray[np.float64]


class KNNAnalogues:
    """Value by historical analogues: the mean change that followed the k nearest past windows.

    An asset's analogue vector at an event is its last `lags` relative value changes
    ((v_i - v_{i-1}) / |v_last|) and the change of each dynamic feature since its previous
    event (the first `max_features` feature names seen), every coordinate divided by its running
    standard deviation so that none dominates. The target is the relative change
    (v_t - v_last) / |v_last|. The memory is a ring buffer of the newest `memory` (vector,
    target) pairs of all assets; a batch's queries are answered before its own samples enter the
    memory (prequential). Valuation = v_last * (1 + mean target of the k nearest). Warming (the
    last value, or the median value) until the asset has `lags` changes and the memory has k
    samples.

    >>> from streamval.stream.contract.schema import AssetEvent
    >>> knn = KNNAnalogues(k=1, lags=1)
    >>> outs = [knn.process([AssetEvent("a", t, 100.0 * 1.01**t)]) for t in range(5)]
    >>> round(outs[-1].valuations[0].valuation / (100.0 * 1.01**3), 6)  # analogues grew 1 %
    1.01
    """

    name = "KNN analogues"

    def __init__(
        self, *, k: int = 20, lags: int = 6, memory: int = 5000, max_features: int = 8
    ) -> None:
        self.k = k
        self.lags = lags
        self.memory = memory
        self.max_features = max_features
        self._guard = OrderGuard()
        self._median = stats.Quantile(0.5)
        self._last: dict[str, float] = {}
        self._changes: dict[str, deque[float]] = {}
        self._feats: dict[str, dict[str, float]] = {}
        self._names: dict[str, int] = {}
        dim = lags + max_features
        self._x = np.zeros((memory, dim))
        self._y = np.zeros(memory)
        self._size = 0
        self._next = 0
        self._vars = [stats.Var() for _ in range(dim)]

    def _vector(self, event: AssetEvent) -> FloatArray | None:
        changes = self._changes.get(event.asset_id)
        last = self._last.get(event.asset_id)
        if last is None or changes is None or len(changes) < self.lags:
            return None
        previous = self._feats.get(event.asset_id, {})
        x = np.zeros(self.lags + self.max_features)
        x[: self.lags] = np.fromiter(changes, dtype=float)
        for name, value in event.features.items():
            slot = self._names.get(name)
            if slot is None and len(self._names) < self.max_features:
                slot = self._names[name] = len(self._names)
            if slot is not None and name in previous:
                x[self.lags + slot] = value - previous[name]
        return x

    def _scale(self) -> FloatArray:
        sd = np.array([math.sqrt(v.get()) if v.get() > 0 else 1.0 for v in self._vars])
        return np.asarray(sd, dtype=np.float64)

    def predict_changes(self, vectors: FloatArray) -> FloatArray:
        """Mean target of the k nearest memory samples for each (unscaled) analogue vector."""
        if len(vectors) == 0 or self._size < self.k:
            return np.full(len(vectors), np.nan)
        sd = self._scale()
        memory = self._x[: self._size] / sd
        queries = vectors / sd
        d = (
            (queries**2).sum(axis=1)[:, None]
            - 2 * queries @ memory.T
            + (memory**2).sum(axis=1)[None, :]
        )
        nearest = np.argpartition(d, self.k - 1, axis=1)[:, : self.k]
        return np.asarray(self._y[: self._size][nearest].mean(axis=1), dtype=np.float64)

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        result = BatchResult()
        rows: list[tuple[AssetEvent, FloatArray | None, float | None]] = []
        for event in self._guard.admit(events, result):
            rows.append((event, self._vector(event), self._last.get(event.asset_id)))
            self._absorb(event)
        asked = [i for i, row in enumerate(rows) if row[1] is not None]
        vectors = [row[1] for row in rows if row[1] is not None]
        changes = self.predict_changes(
            np.stack(vectors) if vectors else np.zeros((0, len(self._vars)))
        )
        predicted = dict(zip(asked, changes.tolist(), strict=True))
        for i, (event, vector, last) in enumerate(rows):
            change = predicted.get(i, math.nan)
            warming = last is None or not math.isfinite(change)
            if last is None:
                valuation = self._fallback()
            elif warming:
                valuation = last
            else:
                valuation = last * (1.0 + change)
            result.valuations.append(
                Valuation(
                    event.asset_id, event.ts_ms, valuation, 0, 0, warming, False, 0.0, event.value
                )
            )
            if learn and vector is not None and last and event.value is not None:
                self._remember(vector, (event.value - last) / abs(last))
        return result

    def _remember(self, vector: FloatArray, target: float) -> None:
        self._x[self._next] = vector
        self._y[self._next] = target
        self._next = (self._next + 1) % self.memory
        self._size = min(self._size + 1, self.memory)
        for var, x in zip(self._vars, vector.tolist(), strict=True):
            var.update(x)

    def _absorb(self, event: AssetEvent) -> None:
        """The event's value and features become history (after its vector was taken)."""
        if event.features:
            self._feats[event.asset_id] = {**self._feats.get(event.asset_id, {}), **event.features}
        if event.value is None:
            return
        self._median.update(event.value)
        last = self._last.get(event.asset_id)
        if last:
            change = (event.value - last) / abs(last)
            self._changes.setdefault(event.asset_id, deque(maxlen=self.lags)).append(change)
        self._last[event.asset_id] = event.value

    def _fallback(self) -> float:
        median = self._median.get()
        return float(median) if median is not None and math.isfinite(median) else 0.0
