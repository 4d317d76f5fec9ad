"""The pure valuation pipeline (no Kafka): events in, valuations, drift alarms and metrics out.

`Engine.process(events)` is prequential (test, then train). For each event, in order:

    0. order       OrderGuard: late -> `result.late`, duplicate -> `result.duplicates`; nothing
                   else happens for them (a duplicate is never learned from twice)
    1. window      the asset's last `seq_len` steps; a step holds the *lagged* value (the last
                   value known before this event: the model sees v(t-1), never v(t)) and the
                   dynamic features of the event (carried forward when an event omits one)
    2. cluster     nearest centroid of the current clustering in the standardised profile space
    3. valuation   the cluster model's scale-free change, v_last + scale * change; `warming`
                   assets (window not yet full of known values) get the fallback instead
    4. record      a `Valuation` (cluster, model_version, warming, adapting, lr)
    5. if value    error; the cluster's river metrics (rolling `metrics_window` and since start);
                   its drift detector on the scale-free absolute error (an alarm boosts the
                   cluster's lr at once); the (window, target) sample is queued for the cluster
    6. learn       after the whole batch (`learn()`): each cluster takes at most
                   `max_updates_per_batch` optimizer steps; then clustering (re-)fits that are
                   due (bootstrap, every `refit_every` events, after a drift alarm)

Steps 0-5 are exact per event, so a batch gives the same valuations as the same events sent one
by one, except that learning (step 6, which includes the normalisation statistics and the
clustering fits) happens once after the batch's predictions. Within a batch the model does not
change, which lets the engine run each cluster's forward pass once for the whole batch.

Warming fallback: the last known value (persistence). An asset with no value yet is valued at
the running median of the values observed in its cluster (river `stats.Quantile(0.5)`; of all
values if its cluster has none yet; 0.0 before any value). Valuations are always finite.

Scale-free target: per asset, `scale` = running mean of |value| (exponential, span `seq_len`);
the model predicts (v_t - v_last) / scale, the residual over persistence, with a zero-initialised
output layer: an untrained model is exactly persistence.

Before the first clustering fit every asset is in the provisional cluster 0, whose single shared
model already learns from all assets. The bootstrap fit runs once `bootstrap_assets` assets have
at least `min_history` values; it is a re-fit against cluster 0, so one new cluster keeps id 0 and
every other cluster starts as a copy of that shared model. With `n_clusters=1` there is no fit.

`model_version` = optimizer updates of the cluster's model, including those of the model it was
copied from. State: `state_dict()` holds everything learned (models, optimizers, detectors,
normalisation, clustering, windows, metrics, order guard, RNG states) as plain numbers, lists,
tensors and pickled river objects; `torch.save`/`torch.load` round-trip it.

>>> from streamval.config import EngineSettings
>>> from streamval.stream.contract.schema import AssetEvent
>>> engine = Engine(EngineSettings(hidden=[8], n_clusters=1))
>>> events = [AssetEvent("a", 1, 10.0), AssetEvent("a", 2, 11.0), AssetEvent("a", 2, 11.0)]
>>> result = engine.process(events)
>>> [(v.valuation, v.warming) for v in result.valuations], result.duplicates
([(0.0, True), (10.0, True)], [2])
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from river import metrics, stats, utils

from streamval.config import EngineSettings
from streamval.errors import CheckpointError
from streamval.models.clustering import AssetClustering
from streamval.models.drift import AdaptiveLearningRate
from streamval.models.learner import SequenceLearner
from streamval.models.profiles import ProfileSpace, SeriesStats
from streamval.stream.contract.ordering import OrderGuard
from streamval.stream.contract.outputs import (
    BatchResult,
    ClusterSnapshot,
    DriftAlarm,
    ErrorStats,
    Valuation,
)
from streamval.stream.contract.schema import AssetEvent, Attribute

__all__ = ["Engine"]

STATE_VERSION = 1
# Scale-free quantities (changes, targets, errors) are clipped to +-_MAX_RATIO: a value jumping by
# a factor of a million is an upstream error, and unclipped it would overflow statistics.
_MAX_RATIO = 1e6
# River squares errors in Python floats: contract-valid values near 1e308 would overflow, so the
# metrics see values clipped to +-_METRIC_LIMIT (valuations themselves are not clipped).
_METRIC_LIMIT = 1e150


def set_torch_threads(settings: EngineSettings) -> None:
    """Apply `engine.torch_threads` to this process (torch's thread pool is process-wide)."""
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)


def _clip(x: float, limit: float) -> float:
    return max(-limit, min(limit, x))


class _Asset:
    """Everything the engine remembers about one asset."""

    __slots__ = (
        "attributes",
        "cluster",
        "feats",
        "filled",
        "lags",
        "last_features",
        "last_value",
        "n_values",
        "scale",
        "stats",
    )

    def __init__(self, seq_len: int, n_features: int) -> None:
        self.cluster = 0
        self.attributes: dict[str, Attribute] = {}
        self.last_value: float | None = None
        self.scale = 0.0
        self.n_values = 0
        self.filled = 0
        self.lags = np.full(seq_len, np.nan)
        self.feats = np.full((seq_len, n_features), np.nan)
        self.last_features = np.full(n_features, np.nan)
        self.stats = SeriesStats(n_features)

    @property
    def unit(self) -> float:
        """The asset's scale, usable as a divisor."""
        return self.scale if self.scale > 0.0 and math.isfinite(self.scale) else 1.0


@dataclass
class _Cluster:
    """One cluster: its model, its lr policy, its error metrics."""

    learner: SequenceLearner
    policy: AdaptiveLearningRate
    window: int
    metrics: dict[str, Any] = field(default_factory=dict)
    median: Any = field(default_factory=lambda: stats.Quantile(0.5))
    n: int = 0

    def __post_init__(self) -> None:
        if not self.metrics:
            self.metrics = {
                "mae": metrics.MAE(),  # type: ignore[no-untyped-call]
                "rmse": metrics.RMSE(),  # type: ignore[no-untyped-call]
                "r2": metrics.R2(),  # type: ignore[no-untyped-call]
                "rolling_mae": utils.Rolling(metrics.MAE, window_size=self.window),
                "rolling_rmse": utils.Rolling(metrics.RMSE, window_size=self.window),
                "rolling_r2": utils.Rolling(metrics.R2, window_size=self.window),
            }

    def observe(self, value: float, valuation: float) -> None:
        self.n += 1
        y, y_hat = _clip(value, _METRIC_LIMIT), _clip(valuation, _METRIC_LIMIT)
        for metric in self.metrics.values():
            metric.update(y, y_hat)

    def stats(self, rolling: bool) -> ErrorStats:
        prefix = "rolling_" if rolling else ""
        n = min(self.n, self.window) if rolling else self.n
        if n == 0:
            return ErrorStats(0, None, None, None)
        r2 = float(self.metrics[prefix + "r2"].get()) if n >= 2 else None
        return ErrorStats(
            n,
            float(self.metrics[prefix + "mae"].get()),
            float(self.metrics[prefix + "rmse"].get()),
            r2,
        )


@dataclass
class _Queued:
    """An accepted event between the per-event pass and the batched forward pass."""

    event: AssetEvent
    cluster: int
    warming: bool
    v_last: float
    unit: float
    valuation: float
    window: NDArray[np.float64] | None


class Engine:
    """Prequential per-cluster valuation engine; see the module docstring for the semantics."""

    def __init__(self, settings: EngineSettings, *, accept_late: bool = False) -> None:
        self.settings = settings
        self.accept_late = accept_late
        self._reset()

    # -- construction ---------------------------------------------------------------------------

    def _reset(self) -> None:
        s = self.settings
        self._guard = OrderGuard(accept_late=self.accept_late)
        self._rng = np.random.default_rng(s.seed)
        self._vocab: dict[str, int] = {}
        self._assets: dict[str, _Asset] = {}
        self._clustering = AssetClustering.from_settings(s)
        self._space = ProfileSpace()
        self._clusters: dict[int, _Cluster] = {0: self._new_cluster(self._new_learner(0))}
        self._counts: dict[int, int] = {0: 0}
        self._median = stats.Quantile(0.5)
        self._ready = 0  # assets with at least min_history values
        self._events_since_fit = 0
        self._drifted = False  # an alarm since the last learning step (re-fit due)
        self._last_ts = 0

    def _cluster_seed(self, cluster: int) -> int:
        return int(np.random.SeedSequence([self.settings.seed, cluster]).generate_state(1)[0])

    def _new_learner(self, cluster: int) -> SequenceLearner:
        return SequenceLearner.from_settings(self.settings, seed=self._cluster_seed(cluster))

    def _new_cluster(self, learner: SequenceLearner) -> _Cluster:
        policy = AdaptiveLearningRate.from_settings(self.settings, seed=learner.seed)
        return _Cluster(learner=learner, policy=policy, window=self.settings.metrics_window)

    # -- public surface -------------------------------------------------------------------------

    @property
    def clusters(self) -> list[int]:
        """Current cluster ids, sorted."""
        return sorted(self._clusters)

    @property
    def fitted(self) -> bool:
        """Whether the clustering has been bootstrapped (always False with `n_clusters=1`)."""
        return self._clustering.fitted

    def cluster_of(self, asset_id: str) -> int | None:
        """The asset's current cluster, or None for an unknown asset."""
        asset = self._assets.get(asset_id)
        return None if asset is None else asset.cluster

    def assignments(self) -> dict[str, int]:
        """Current cluster of every known asset."""
        return {asset_id: asset.cluster for asset_id, asset in self._assets.items()}

    def lr(self, cluster: int) -> float:
        """Current learning rate of a cluster."""
        return self._clusters[cluster].policy.lr

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        """Value a batch of events in order, then (unless `learn=False`) run the learning step.

        With `learn=False` the labelled samples stay queued until the next `learn()` (or
        `process()`) call: `process([e1], learn=False); process([e2], learn=False); learn()`
        is exactly `process([e1, e2])`.
        """
        result = BatchResult()
        queued: list[_Queued] = []
        for event in self._guard.admit(events, result):
            queued.append(self._observe(event))
        self._forward(queued)
        self._record(queued, result)
        if learn:
            result.updates = self.learn()
        return result

    def learn(self) -> dict[int, int]:
        """The learning step: bounded optimizer steps per cluster, then due clustering fits.

        Returns the optimizer steps taken per cluster (clusters that took none are left out).
        """
        updates: dict[int, int] = {}
        for cid in self.clusters:
            c = self._clusters[cid]
            steps = c.learner.learn(self.settings.max_updates_per_batch, c.policy)
            if steps:
                updates[cid] = steps
        drifted, self._drifted = self._drifted, False
        self._maybe_fit(drifted)
        return updates

    def snapshot(self, ts_ms: int | None = None) -> list[ClusterSnapshot]:
        """Per-cluster health for the metrics topic (at `ts_ms`, default: the latest event time)."""
        ts = self._last_ts if ts_ms is None else ts_ms
        out = []
        for cid in self.clusters:
            c = self._clusters[cid]
            out.append(
                ClusterSnapshot(
                    cluster=cid,
                    ts_ms=ts,
                    assets=self._counts.get(cid, 0),
                    rolling=c.stats(rolling=True),
                    total=c.stats(rolling=False),
                    drift_alarms=c.policy.alarms,
                    lr=c.policy.lr,
                    updates=c.learner.own_updates,
                    model_version=c.learner.updates,
                )
            )
        return out

    # -- steps 1-3: per event -------------------------------------------------------------------

    def _slot(self, name: str) -> int | None:
        slot = self._vocab.get(name)
        if slot is None and len(self._vocab) < self.settings.max_features:
            slot = self._vocab[name] = len(self._vocab)
        return slot

    def _observe(self, event: AssetEvent) -> _Queued:
        s = self.settings
        self._last_ts = max(self._last_ts, event.ts_ms)
        self._events_since_fit += 1
        asset = self._assets.get(event.asset_id)
        if asset is None:
            asset = self._assets[event.asset_id] = _Asset(s.seq_len, s.max_features)
            self._counts[asset.cluster] = self._counts.get(asset.cluster, 0) + 1
        # 1. window: the lagged value and this event's features.
        if event.attributes:
            asset.attributes.update(event.attributes)
        for name, x in event.features.items():
            slot = self._slot(name)
            if slot is not None:
                asset.last_features[slot] = x
        if event.features:
            asset.stats.add_features(asset.last_features)
        asset.lags[:-1] = asset.lags[1:]
        asset.lags[-1] = math.nan if asset.last_value is None else asset.last_value
        asset.feats[:-1] = asset.feats[1:]
        asset.feats[-1] = asset.last_features
        asset.filled = min(asset.filled + 1, s.seq_len)
        # 2. cluster.
        cluster = self._assign(asset)
        if cluster != asset.cluster:
            self._counts[asset.cluster] -= 1
            self._counts[cluster] = self._counts.get(cluster, 0) + 1
            asset.cluster = cluster
        # 3. valuation (model outputs are filled in by _forward).
        v_last = asset.last_value
        unit = asset.unit
        window: NDArray[np.float64] | None = None
        if v_last is None:
            warming, valuation = True, self._median_value(cluster)
        elif asset.filled < s.seq_len or math.isnan(asset.lags[0]):
            warming, valuation = True, v_last
        else:
            warming, valuation = False, v_last
            window = np.empty((s.seq_len, 1 + s.max_features))
            window[:, 0] = (asset.lags - v_last) / unit
            window[:, 1:] = asset.feats
        # The event's own value becomes known only after its valuation.
        if event.value is not None:
            value = event.value
            if v_last is not None:
                asset.stats.add_change(_clip((value - v_last) / unit, _MAX_RATIO))
            if asset.n_values == 0:
                asset.scale = abs(value)
            else:
                asset.scale += (abs(value) - asset.scale) * 2.0 / (s.seq_len + 1)
            asset.last_value = value
            asset.n_values += 1
            if asset.n_values == s.min_history:
                self._ready += 1
            self._clusters[cluster].median.update(value)
            self._median.update(value)
        return _Queued(
            event, cluster, warming, 0.0 if v_last is None else v_last, unit, valuation, window
        )

    def _assign(self, asset: _Asset) -> int:
        if not self._clustering.fitted:
            return 0
        return self._clustering.assign(
            self._space.transform(asset.attributes, asset.stats.vector())
        )

    def _median_value(self, cluster: int) -> float:
        for estimator in (self._clusters[cluster].median, self._median):
            median = estimator.get()
            if median is not None and math.isfinite(median):
                return float(median)
        return 0.0

    def _forward(self, queued: list[_Queued]) -> None:
        """One forward pass per cluster for the batch's non-warming events."""
        by_cluster: dict[int, list[_Queued]] = {}
        for q in queued:
            if q.window is not None:
                by_cluster.setdefault(q.cluster, []).append(q)
        for cid, items in by_cluster.items():
            changes = self._clusters[cid].learner.predict(
                np.stack([q.window for q in items if q.window is not None])
            )
            for q, change in zip(items, changes, strict=True):
                valuation = q.v_last + q.unit * float(change)
                q.valuation = valuation if math.isfinite(valuation) else q.v_last

    # -- steps 4-5: record, score, detect -------------------------------------------------------

    def _record(self, queued: list[_Queued], result: BatchResult) -> None:
        for q in queued:
            c = self._clusters[q.cluster]
            value = q.event.value
            result.valuations.append(
                Valuation(
                    asset_id=q.event.asset_id,
                    ts_ms=q.event.ts_ms,
                    valuation=q.valuation,
                    cluster=q.cluster,
                    model_version=c.learner.updates,
                    warming=q.warming,
                    adapting=c.policy.adapting,
                    lr=c.policy.lr,
                    value=value,
                )
            )
            if value is None:
                continue
            c.observe(value, q.valuation)
            # Only the model's own errors feed the detector: a warming fallback (an asset's first
            # value, or a short window) says nothing about drift of the cluster's model.
            levels = (
                None
                if q.warming
                else c.policy.update(min(abs(value - q.valuation) / q.unit, _MAX_RATIO))
            )
            if levels is not None:
                self._drifted = True
                if c.policy.reset_moments_on_drift and c.policy.boost > 1.0:
                    c.learner.reset_moments()
                result.drift.append(
                    DriftAlarm(
                        cluster=q.cluster,
                        detector=self.settings.detector,
                        ts_ms=q.event.ts_ms,
                        error_before=levels[0],
                        error_after=levels[1],
                        lr=c.policy.lr,
                    )
                )
            if q.window is not None:
                c.learner.add(q.window, _clip((value - q.v_last) / q.unit, _MAX_RATIO))

    # -- step 6: learn, then (re-)fit the clustering --------------------------------------------

    def _maybe_fit(self, drifted: bool) -> None:
        s = self.settings
        if s.n_clusters == 1:
            return
        if not self._clustering.fitted:
            if self._ready >= s.bootstrap_assets:
                self.refit()
            return
        due = bool(s.refit_every) and self._events_since_fit >= s.refit_every
        if due or (drifted and s.refit_on_drift):
            self.refit()

    def refit(self) -> None:
        """(Re-)fit the clustering now on the assets with `min_history` values; ids stay stable."""
        s = self.settings
        self._events_since_fit = 0
        ready = [aid for aid, a in self._assets.items() if a.n_values >= s.min_history]
        if len(ready) < 2 or s.n_clusters == 1:
            return
        if len(ready) > s.fit_max_assets:
            pick = np.sort(self._rng.choice(len(ready), size=s.fit_max_assets, replace=False))
            ready = [ready[i] for i in pick]
        assets = [self._assets[aid] for aid in ready]
        space = ProfileSpace()
        x = space.fit([a.attributes for a in assets], [a.stats.vector() for a in assets])
        fit = self._clustering.fit(x, np.array([a.cluster for a in assets], dtype=np.int64))
        self._space = space
        for new_id, parent in sorted(fit.parents.items()):
            learner = self._clusters[parent].learner.fork(self._cluster_seed(new_id))
            self._clusters[new_id] = self._new_cluster(learner)
        for cid in [c for c in self._clusters if c not in set(self._clustering.ids)]:
            del self._clusters[cid]
        labels = dict(zip(ready, fit.labels.tolist(), strict=True))
        others = [aid for aid in self._assets if aid not in labels]
        if others:
            profiles = np.stack(
                [
                    space.transform(self._assets[a].attributes, self._assets[a].stats.vector())
                    for a in others
                ]
            )
            labels.update(zip(others, self._clustering.assign_many(profiles).tolist(), strict=True))
        self._counts = dict.fromkeys(self._clusters, 0)
        for aid, a in self._assets.items():
            a.cluster = int(labels[aid])
            self._counts[a.cluster] += 1

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything learned, as plain numbers, lists, tensors and pickled river objects."""
        ids = list(self._assets)
        assets = [self._assets[a] for a in ids]
        s = self.settings
        return {
            "version": STATE_VERSION,
            "seq_len": s.seq_len,
            "max_features": s.max_features,
            "guard": self._guard.state_dict(),
            "rng": self._rng.bit_generator.state,
            "vocab": list(self._vocab),
            "assets": {
                "ids": ids,
                "cluster": [a.cluster for a in assets],
                "attributes": [dict(a.attributes) for a in assets],
                "last_value": [a.last_value for a in assets],
                "scale": [a.scale for a in assets],
                "n_values": [a.n_values for a in assets],
                "filled": [a.filled for a in assets],
                "lags": torch.tensor(np.stack([a.lags for a in assets]))
                if assets
                else torch.zeros(0, s.seq_len, dtype=torch.float64),
                "feats": torch.tensor(np.stack([a.feats for a in assets]))
                if assets
                else torch.zeros(0, s.seq_len, s.max_features, dtype=torch.float64),
                "last_features": torch.tensor(np.stack([a.last_features for a in assets]))
                if assets
                else torch.zeros(0, s.max_features, dtype=torch.float64),
                "stats": [a.stats.state() for a in assets],
            },
            "clustering": self._clustering.state_dict(),
            "space": self._space.state_dict(),
            "clusters": {
                cid: {
                    "learner": c.learner.state_dict(),
                    "policy": c.policy.state_dict(),
                    "metrics": pickle.dumps((c.metrics, c.median)),
                    "n": c.n,
                }
                for cid, c in self._clusters.items()
            },
            "counts": dict(self._counts),
            "median": pickle.dumps(self._median),
            "events_since_fit": self._events_since_fit,
            "drifted": self._drifted,
            "last_ts": self._last_ts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the settings must match the ones it was taken with."""
        s = self.settings
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"engine state version {state.get('version')!r}, expected {STATE_VERSION}"
            )
        if state["seq_len"] != s.seq_len or state["max_features"] != s.max_features:
            raise CheckpointError(
                f"engine state has seq_len={state['seq_len']}, "
                f"max_features={state['max_features']}; "
                f"settings have {s.seq_len}, {s.max_features}"
            )
        self._reset()
        self._guard.load_state_dict(state["guard"])
        self._rng.bit_generator.state = state["rng"]
        self._vocab = {str(name): i for i, name in enumerate(state["vocab"])}
        a = state["assets"]
        lags, feats, last_features = (
            a["lags"].numpy(),
            a["feats"].numpy(),
            a["last_features"].numpy(),
        )
        for i, aid in enumerate(a["ids"]):
            asset = _Asset(s.seq_len, s.max_features)
            asset.cluster = int(a["cluster"][i])
            asset.attributes = dict(a["attributes"][i])
            last_value = a["last_value"][i]
            asset.last_value = None if last_value is None else float(last_value)
            asset.scale = float(a["scale"][i])
            asset.n_values = int(a["n_values"][i])
            asset.filled = int(a["filled"][i])
            asset.lags = lags[i].astype(np.float64).copy()
            asset.feats = feats[i].astype(np.float64).copy()
            asset.last_features = last_features[i].astype(np.float64).copy()
            asset.stats = SeriesStats.from_state(a["stats"][i])
            self._assets[str(aid)] = asset
            self._ready += asset.n_values >= s.min_history
        self._clustering.load_state_dict(state["clustering"])
        self._space.load_state_dict(state["space"])
        self._clusters = {}
        for cid, cs in state["clusters"].items():
            learner = self._new_learner(int(cid))
            learner.load_state_dict(cs["learner"])
            cluster = self._new_cluster(learner)
            cluster.policy.load_state_dict(cs["policy"])
            cluster.metrics, cluster.median = pickle.loads(cs["metrics"])
            cluster.n = int(cs["n"])
            self._clusters[int(cid)] = cluster
        self._counts = {int(k): int(v) for k, v in state["counts"].items()}
        self._median = pickle.loads(state["median"])
        self._events_since_fit = int(state["events_since_fit"])
        self._drifted = bool(state["drifted"])
        self._last_ts = int(state["last_ts"])
