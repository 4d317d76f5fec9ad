"""LSTM-KNN fusion: the engine and KNN analogues combined by late fusion and by stacking.

The weights are fitted online on observed outcomes from the 3 x 3 moments of (engine change,
KNN change, true change), so a fit costs nothing per event and frozen weights are exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from streamval.models.baselines import KNNAnalogues, Valuer
from streamval.stream.contract.outputs import BatchResult, Valuation
from streamval.stream.contract.schema import AssetEvent

FloatArray = NDArray[np.float64]


def fusion_moments(lstm: FloatArray, knn: FloatArray, truth: FloatArray) -> FloatArray:
    """The 3 x 3 matrix of sums of products of (lstm, knn, truth): all the fusion fits need."""
    z = np.column_stack([lstm, knn, truth])
    return np.asarray(z.T @ z, dtype=np.float64)


def alpha_from_moments(moments: FloatArray, grid: Sequence[float] | None = None) -> float:
    """`best_alpha` from `fusion_moments` (the squared error is quadratic in alpha)."""
    grid = list(grid) if grid is not None else [i / 20 for i in range(21)]
    s = moments
    errors = [
        a * a * s[0, 0]
        + (1 - a) ** 2 * s[1, 1]
        + 2 * a * (1 - a) * s[0, 1]
        - 2 * a * s[0, 2]
        - 2 * (1 - a) * s[1, 2]
        + s[2, 2]
        for a in grid
    ]
    best = min(errors)
    tolerance = 1e-12 * max(abs(best), float(s[2, 2]), 1e-300)
    return float(max(a for a, e in zip(grid, errors, strict=True) if e <= best + tolerance))


def weights_from_moments(moments: FloatArray, ridge: float = 1e-6) -> FloatArray:
    """`stack_weights` from `fusion_moments`."""
    gram = moments[:2, :2] + ridge * max(float(np.trace(moments[:2, :2])) / 2, 1e-300) * np.eye(2)
    return np.asarray(np.linalg.solve(gram, moments[:2, 2]), dtype=np.float64)


def best_alpha(
    lstm: FloatArray, knn: FloatArray, truth: FloatArray, grid: Sequence[float] | None = None
) -> float:
    """The late-fusion weight alpha in `grid` (default 0, 0.05, ..., 1) with the least squared error
    of alpha * lstm + (1 - alpha) * knn; ties go to the larger alpha (the engine).

    >>> import numpy as np
    >>> best_alpha(np.array([1.0, 2.0]), np.array([0.0, 0.0]), np.array([1.0, 2.0]))
    1.0
    >>> best_alpha(np.array([0.0, 0.0]), np.array([1.0, 2.0]), np.array([0.5, 1.0]))
    0.5
    """
    return alpha_from_moments(fusion_moments(lstm, knn, truth), grid)


def stack_weights(
    lstm: FloatArray, knn: FloatArray, truth: FloatArray, ridge: float = 1e-6
) -> FloatArray:
    """Linear meta-model: least squares of `truth` on (lstm, knn), no intercept, ridge-damped.

    >>> import numpy as np
    >>> a, b = np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])
    >>> np.round(stack_weights(a, b, 0.3 * a + 0.7 * b), 5).tolist()
    [0.3, 0.7]
    """
    return weights_from_moments(fusion_moments(lstm, knn, truth), ridge)


class LSTMKNNFusion:
    """An engine (any `Valuer`) and KNN analogues fused two ways; `process` returns late fusion.

    Both components value every event; the fusion works on scale-free changes over the last
    value, c = (valuation - v_last) / |v_last|, so expensive assets do not dominate the fit:

        late fusion   c = alpha * c_lstm + (1 - alpha) * c_knn       (`best_alpha`)
        stacking      c = w1 * c_lstm + w2 * c_knn                   (`stack_weights`)

    The weights are re-fitted after every batch from the outcomes observed so far (only events
    that both components valued with their models); `reset_weights()` starts the collection
    afresh (the paper protocol calls it before the validation split) and `freeze_weights()`
    stops it (before the test split), so test outcomes never choose the weights. The four
    valuations of the last batch, in `components`, are what the backtest reports as "HC+LSTM",
    "KNN analogues", "LSTM-KNN late fusion" and "LSTM-KNN stacking".
    """

    name = "LSTM-KNN late fusion"

    def __init__(self, engine: Valuer, knn: KNNAnalogues, *, alpha: float = 0.5) -> None:
        self.engine = engine
        self.knn = knn
        self.alpha = alpha
        self.weights = np.array([alpha, 1.0 - alpha])
        self.frozen = False
        self._moments = np.zeros((3, 3))
        self._n = 0
        self._last: dict[str, float] = {}
        self.components: dict[str, list[Valuation]] = {}

    def reset_weights(self) -> None:
        """Forget the outcomes collected so far (the weights stay until the next fit)."""
        self._moments = np.zeros((3, 3))
        self._n = 0

    def freeze_weights(self) -> None:
        """Keep alpha and the stacking weights as they are from now on."""
        self.frozen = True

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        last = [self._last.get(e.asset_id) for e in events]
        lstm = self.engine.process(events, learn=learn)
        knn = self.knn.process(events, learn=learn)
        if lstm.late != knn.late or lstm.duplicates != knn.duplicates:
            raise RuntimeError("the fusion's components disagree on which events to refuse")
        refused = set(lstm.late) | set(lstm.duplicates)
        before = [v for i, v in enumerate(last) if i not in refused]
        late: list[Valuation] = []
        stacked: list[Valuation] = []
        for v_lstm, v_knn, v_last in zip(lstm.valuations, knn.valuations, before, strict=True):
            fused_late, fused_stack = v_lstm.valuation, v_lstm.valuation
            if v_last and not v_lstm.warming and not v_knn.warming:
                c = np.array(
                    [
                        (v_lstm.valuation - v_last) / abs(v_last),
                        (v_knn.valuation - v_last) / abs(v_last),
                    ]
                )
                fused_late = v_last * (1 + self.alpha * c[0] + (1 - self.alpha) * c[1])
                fused_stack = v_last * (1 + float(self.weights @ c))
                if v_lstm.value is not None and not self.frozen:
                    z = np.array([c[0], c[1], (v_lstm.value - v_last) / abs(v_last)])
                    self._moments += np.outer(z, z)
                    self._n += 1
            late.append(dataclasses.replace(v_lstm, valuation=fused_late))
            stacked.append(dataclasses.replace(v_lstm, valuation=fused_stack))
        for v in lstm.valuations:
            if v.value is not None:
                self._last[v.asset_id] = v.value
        if not self.frozen and self._n >= 10:
            self.alpha = alpha_from_moments(self._moments)
            self.weights = weights_from_moments(self._moments)
        self.components = {
            "lstm": lstm.valuations,
            "knn": knn.valuations,
            "late": late,
            "stack": stacked,
        }
        return BatchResult(
            valuations=late,
            late=lstm.late,
            duplicates=lstm.duplicates,
            drift=lstm.drift,
            updates=lstm.updates,
        )
