"""Baseline valuation methods behind the engine's interface: the backtest treats all alike.

Every method is a `Valuer`: `process(events, learn=True) -> BatchResult`, prequential like
`Engine.process` (each event is valued before its own value is used), with the same order guard
(late events refused, duplicates dropped). The engine itself is wrapped, never copied:

    EngineValuer          the `Engine` under a name; `engine_variants()` gives the paper's
                          ablations: HC+LSTM (default settings), single global LSTM
                          (n_clusters=1), HC+linear (cell="linear"), KMeans+LSTM
                          (clustering="kmeans"), HC+LSTM with a fixed learning rate (lr_boost=1)
    Persistence           the last known value (the baseline to beat on prices)
    IncomeMethod          DCF: projected monthly cash flows discounted at a stated rate
    MarketMethod          comparables: median value multiple of the asset's peer group
    KNNAnalogues          the change that followed the k most similar historical windows
    LSTMKNNFusion         an `EngineValuer` and a `KNNAnalogues` combined by late fusion (weight
                          alpha) and by stacking (linear meta-model), weights fitted online on
                          observed outcomes, frozen for scoring (`freeze_weights`)

Valuations of baselines carry `cluster` = their peer group index (0 when they have none),
`model_version` 0, `adapting` False and `lr` 0.0.

>>> from streamval.stream.schema import AssetEvent
>>> p = Persistence()
>>> out = p.process([AssetEvent("a", 1, 10.0), AssetEvent("a", 2, 12.0)])
>>> [v.valuation for v in out.valuations]
[0.0, 10.0]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from river import stats

from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.outputs import BatchResult, Valuation
from streamval.stream.ordering import OrderGuard
from streamval.stream.schema import AssetEvent

__all__ = [
    "EngineValuer",
    "IncomeMethod",
    "KNNAnalogues",
    "LSTMKNNFusion",
    "MarketMethod",
    "Persistence",
    "Valuer",
    "alpha_from_moments",
    "annuity_factor",
    "best_alpha",
    "engine_variants",
    "fusion_moments",
    "method_suite",
    "stack_weights",
    "weights_from_moments",
]

FloatArray = NDArray[np.float64]


@runtime_checkable
class Valuer(Protocol):
    """What the backtest needs from a valuation method: a name and prequential `process`."""

    name: str

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        """Value `events` in order (each before its own value is used); learn unless told not to."""
        ...


class EngineValuer:
    """The `Engine` under a name: the adapter that makes it a `Valuer`.

    `process(events, learn=False)` values without learning; the engine keeps the labelled
    samples queued (see `Engine.process`), and they are dropped from learning for good when the
    backtest scores a frozen model (it never calls `learn()` afterwards).
    """

    def __init__(self, name: str, settings: EngineSettings) -> None:
        self.name = name
        self.settings = settings
        self.engine = Engine(settings)

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        return self.engine.process(events, learn=learn)


def engine_variants(base: EngineSettings) -> dict[str, EngineSettings]:
    """The engine and its ablations, by report name, all derived from `base`.

    >>> sorted(engine_variants(EngineSettings()))
    ['HC+LSTM', 'HC+LSTM fixed lr', 'HC+linear', 'KMeans+LSTM', 'single LSTM']
    """
    return {
        "HC+LSTM": base,
        "single LSTM": base.model_copy(update={"n_clusters": 1}),
        "HC+linear": base.model_copy(update={"cell": "linear"}),
        "KMeans+LSTM": base.model_copy(update={"clustering": "kmeans"}),
        "HC+LSTM fixed lr": base.model_copy(update={"lr_boost": 1.0}),
    }


class _EventByEvent:
    """Shared loop of the simple baselines: order guard, then value-then-observe per event."""

    name = "baseline"

    def __init__(self) -> None:
        self._guard = OrderGuard()
        self._median = stats.Quantile(0.5)

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        result = BatchResult()
        for event in self._guard.admit(events, result):
            valuation, group, warming = self._value(event)
            if not math.isfinite(valuation):
                valuation, warming = self._fallback(), True
            result.valuations.append(
                Valuation(
                    asset_id=event.asset_id,
                    ts_ms=event.ts_ms,
                    valuation=valuation,
                    cluster=group,
                    model_version=0,
                    warming=warming,
                    adapting=False,
                    lr=0.0,
                    value=event.value,
                )
            )
            if event.value is not None:
                self._median.update(event.value)
            self._observe(event, learn)
        return result

    def _fallback(self) -> float:
        median = self._median.get()
        return float(median) if median is not None and math.isfinite(median) else 0.0

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        raise NotImplementedError

    def _observe(self, event: AssetEvent, learn: bool) -> None:
        """Take in the event's value (after its valuation)."""


class Persistence(_EventByEvent):
    """Value = the asset's last known value; before it has one, the median of all values seen.

    Knowing the last value is state, not learning: it is updated with `learn=False` too (the
    engine's windows are as well).
    """

    name = "persistence"

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        last = self._last.get(event.asset_id)
        return (self._fallback(), 0, True) if last is None else (last, 0, False)

    def _observe(self, event: AssetEvent, learn: bool) -> None:
        if event.value is not None:
            self._last[event.asset_id] = event.value


def annuity_factor(annual_rate: float, months: int, monthly_growth: float = 0.0) -> float:
    """Present value of 1 a month for `months` months (first payment in one month), growing.

    >>> round(annuity_factor(0.0, 36), 6)
    36.0
    >>> round(annuity_factor(0.08, 12), 4)  # 12 payments at (1.08)^(1/12) - 1 a month
    11.5129
    """
    d = (1.0 + annual_rate) ** (1.0 / 12.0) - 1.0
    ratio = (1.0 + monthly_growth) / (1.0 + d)
    return float(sum(ratio**k for k in range(1, months + 1)))


class IncomeMethod(_EventByEvent):
    """The income approach (DCF) from an asset's own attributes and features; nothing is fitted.

    Assumptions (stated, the same for every asset, none read from the generator's hidden
    parameters):

        monthly cash flow   income / 12 * `debt_service_share` * expected collection rate
        collection rate     exponentially weighted mean of the asset's `collection_feature`
                            (repayment ratio, paid / due) with weight `memory` on the newest
        growth              none (flat projection)
        horizon             `horizon_months` monthly cash flows (36: the label's 3 years)
        discount rate       `annual_rate` a year (8 %: policy rate about 5 % plus a funding and
                            risk spread), monthly (1 + r)^(1/12) - 1

    value = cash flow * annuity_factor(annual_rate, horizon_months). An asset without the income
    attribute gets the median of the values seen (warming).

    >>> dcf = IncomeMethod(annual_rate=0.0, horizon_months=36, debt_service_share=0.5)
    >>> e = AssetEvent("a", 1, None, {"repayment_ratio": 1.0}, {"income": 24_000.0})
    >>> dcf.process([e]).valuations[0].valuation  # 1,000 a month for 36 months, undiscounted
    36000.0
    """

    name = "income (DCF)"

    def __init__(
        self,
        *,
        annual_rate: float = 0.08,
        horizon_months: int = 36,
        debt_service_share: float = 0.30,
        income_attribute: str = "income",
        collection_feature: str = "repayment_ratio",
        memory: float = 0.3,
    ) -> None:
        super().__init__()
        self.annual_rate = annual_rate
        self.horizon_months = horizon_months
        self.debt_service_share = debt_service_share
        self.income_attribute = income_attribute
        self.collection_feature = collection_feature
        self.memory = memory
        self._factor = annuity_factor(annual_rate, horizon_months)
        self._collection: dict[str, float] = {}

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        income = event.attributes.get(self.income_attribute)
        if not isinstance(income, int | float):
            return self._fallback(), 0, True
        rate = self._collection.get(event.asset_id, 1.0)
        observed = event.features.get(self.collection_feature)
        if observed is not None:  # the feature is known at valuation time (not the value)
            rate = (
                observed
                if event.asset_id not in self._collection
                else ((1 - self.memory) * rate + self.memory * observed)
            )
            self._collection[event.asset_id] = rate
        cash_flow = float(income) / 12.0 * self.debt_service_share * rate
        return cash_flow * self._factor, 0, False


class MarketMethod(_EventByEvent):
    """The market approach: the median value multiple of comparable assets, learned online.

    Peers are the assets with the same `group_attribute` (credit: the risk tier; stocks: the
    sector). A multiple is value / basis, where basis is the asset's `basis_attribute` (e.g.
    income) or, when that is None, its previous value (then the multiple is a gross return and
    the method values an asset at its last value times its peers' median recent move). The
    median is over the last `window` multiples of the group observed strictly *before* the
    event's time (multiples of the current timestamp are held back until time moves on), so no
    method sees a peer's same-time value. Without peers yet: the median of all multiples; with
    none at all: the last value, or the median value (warming). `learn=False` freezes the medians.

    >>> m = MarketMethod(group_attribute="tier", basis_attribute="income", window=3)
    >>> out = m.process([AssetEvent("a", 1, 100.0, {}, {"tier": "x", "income": 10.0}),
    ...                  AssetEvent("b", 1, 300.0, {}, {"tier": "x", "income": 10.0}),
    ...                  AssetEvent("c", 2, None, {}, {"tier": "x", "income": 20.0})])
    >>> out.valuations[2].valuation  # median multiple (10, 30) = 20, times income 20
    400.0
    """

    name = "market (comparables)"

    def __init__(
        self,
        *,
        group_attribute: str = "tier",
        basis_attribute: str | None = "income",
        window: int = 500,
    ) -> None:
        super().__init__()
        self.group_attribute = group_attribute
        self.basis_attribute = basis_attribute
        self.window = window
        self._groups: dict[str, int] = {}
        self._multiples: dict[str, deque[float]] = {}
        self._all: deque[float] = deque(maxlen=window)
        self._held: list[tuple[str, float]] = []
        self._held_ts: int | None = None
        self._last: dict[str, float] = {}
        self._group_of: dict[str, str] = {}

    def _group(self, event: AssetEvent) -> str:
        raw = event.attributes.get(self.group_attribute)
        if raw is not None:
            self._group_of[event.asset_id] = str(raw)
        return self._group_of.get(event.asset_id, "")

    def _basis(self, event: AssetEvent) -> float | None:
        if self.basis_attribute is None:
            return self._last.get(event.asset_id)
        raw = event.attributes.get(self.basis_attribute)
        return float(raw) if isinstance(raw, int | float) and raw != 0 else None

    def median_multiple(self, group: str) -> float | None:
        """The current median multiple of a group (None before it has one)."""
        values = self._multiples.get(group)
        if values:
            return float(np.median(np.fromiter(values, dtype=float)))
        return None

    def _release(self, ts_ms: int) -> None:
        if self._held_ts is not None and ts_ms > self._held_ts:
            for group, multiple in self._held:
                self._multiples.setdefault(group, deque(maxlen=self.window)).append(multiple)
                self._all.append(multiple)
            self._held = []
        self._held_ts = ts_ms if self._held_ts is None else max(self._held_ts, ts_ms)

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        self._release(event.ts_ms)
        group = self._group(event)
        index = self._groups.setdefault(group, len(self._groups))
        basis = self._basis(event)
        multiple = self.median_multiple(group)
        if multiple is None and self._all:
            multiple = float(np.median(np.fromiter(self._all, dtype=float)))
        if basis is not None and multiple is not None:
            return basis * multiple, index, False
        last = self._last.get(event.asset_id)
        return (last if last is not None else self._fallback()), index, True

    def _observe(self, event: AssetEvent, learn: bool) -> None:
        if event.value is None:
            return
        basis = self._basis(event)
        if learn and basis is not None and basis != 0:
            self._held.append((self._group(event), event.value / basis))
        self._last[event.asset_id] = event.value


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

    >>> from streamval.stream.schema import AssetEvent
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
    """An engine and KNN analogues fused two ways; `process` returns the late-fusion valuations.

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

    def __init__(self, engine: EngineValuer, knn: KNNAnalogues, *, alpha: float = 0.5) -> None:
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
            late.append(_replace_valuation(v_lstm, fused_late))
            stacked.append(_replace_valuation(v_lstm, fused_stack))
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


def _replace_valuation(v: Valuation, valuation: float) -> Valuation:
    return Valuation(
        v.asset_id,
        v.ts_ms,
        valuation,
        v.cluster,
        v.model_version,
        v.warming,
        v.adapting,
        v.lr,
        v.value,
    )


def method_suite(base: EngineSettings, market: MarketMethod, *, income: bool) -> list[Valuer]:
    """Every method of the accuracy tables, persistence first; HC+LSTM runs inside the LSTM-KNN
    fusion (one run, four outputs). `income` adds the DCF method (assets with cash flows)."""
    variants = engine_variants(base)
    fusion = LSTMKNNFusion(EngineValuer("HC+LSTM", variants.pop("HC+LSTM")), KNNAnalogues())
    return [
        Persistence(),
        *([IncomeMethod()] if income else []),
        market,
        fusion,
        *(EngineValuer(name, settings) for name, settings in variants.items()),
    ]
