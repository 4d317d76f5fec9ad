"""The pure valuation pipeline (no Kafka): events in, valuations, drift alarms and metrics out.

`Engine.process(events)` is prequential (test, then train). For each event, in order:

    0. order       late -> `result.late`, duplicate -> `result.duplicates`; nothing else happens
                   for them (a duplicate is never learned from twice); an asset idle for longer
                   than `asset_ttl` (event time) is forgotten and starts afresh
    1. window      the asset's last `seq_len` steps; a step holds the *lagged* value (the last
                   value known before this event: the model sees v(t-1), never v(t)) and the
                   dynamic features of the event (carried forward when an event omits one)
    2. cluster     nearest cluster of the current clustering in the weighted profile space
                   (distance scaled by each cluster's spread) at the asset's first check; later
                   checks (when its profile may have moved: its event count grew by an eighth
                   since the last check, or its attributes changed) move it only with
                   hysteresis (another cluster closer by
                   `switch_margin` at `switch_checks` consecutive checks); re-fits keep assets
                   in place unless the new fit is clearly better for them
    3. valuation   the served scale-free change: the cluster's combination of persistence, its
                   model and (while one lives) its fast learner (`models/experts.py`),
                   v_last + scale * change; `warming` assets (window not yet full of known
                   values) get the fallback instead
    4. record      a `Valuation` (cluster, model_version, warming, adapting, lr)
    5. if value    error; the cluster's error metrics (rolling `metrics_window` and since start);
                   the experts' weights; its shock detector on the step's standardised errors
                   (`models/shocks.py`; or a per-event detector), whose alarm starts the drift
                   response (a fast learner in shadow, or an lr boost); the (window, target)
                   sample is handed to the cluster's trainer
    6. learn       every sample is trained exactly once as a fresh sample, in steps of
                   `batch_size` per cluster (`streamval.models.trainer`); clustering (re-)fits
                   run when due (bootstrap, every `refit_every` events, after a drift alarm)

Learning is tied to event time, not to batches. With `training="sync"` a due training step
(its cluster has `batch_size` queued samples) and a due fit run before the first later event
whose event time differs from that of the event that made them due: events sharing an event time
are valued by one model, a stream whose time starts over (a backtest's next split) keeps
learning, and any cut of the input into batches gives the same valuations as the events one by
one (tested). With `training="background"` (the service) a trainer thread runs the steps and
valuations use the latest published model; each carries its version.

A batch is processed in segments that end where an action (a step, a fit) is due. A segment is
computed first (pure: a copy of the touched assets' rows is changed in waves, the k-th event of
an asset in wave k, each wave vectorised; then one forward pass per cluster) and committed
after (array assignments). If computing raises, the rest of the batch is processed event by
event and each event that still raises is reported in `result.failed`; the others are
processed normally.

Warming fallback: the last known value (persistence). An asset with no value yet is valued at
the median of its cluster's last `metrics_window` values (all clusters' if its cluster has
none; 0.0 before any value). Valuations are always finite.

Scale-free target: per asset, a robust unit (EW mean |change|, winsorised, shrunk towards the
peers' relative scale while the history is short; `models/assets.py`); the model predicts
(v_t - v_last) / unit, the residual over persistence, with a zero-initialised output layer: an
untrained model is exactly persistence. The served change is bounded at `change_clip` units, a
change beyond `spike_guard` units is held until the next value confirms it, and every
model-made valuation carries conformal bounds (`models/intervals.py`). Ratios are formed as
v/unit - w/unit and clipped, so no input (1e308 then -1e308) can overflow.

Before the first clustering fit every asset is in the provisional cluster 0, whose single shared
model already learns from all assets. The bootstrap fit runs once `bootstrap_assets` assets have
at least `min_history` values; it is a re-fit against cluster 0, so one new cluster keeps id 0 and
every other cluster starts as a copy of that shared model. With `n_clusters=1` there is no fit.

`model_version` = optimizer updates of the cluster's model, including those of the model it was
copied from. `state_dict()` is a tree of numbers, strings, lists, dicts and arrays (no pickles).

>>> from streamval.config import EngineSettings
>>> from streamval.stream.contract.schema import AssetEvent
>>> engine = Engine(EngineSettings(hidden=[8], n_clusters=1, training="sync"))
>>> events = [AssetEvent("a", 1, 10.0), AssetEvent("a", 2, 11.0), AssetEvent("a", 2, 11.0)]
>>> result = engine.process(events)
>>> [(v.valuation, v.warming) for v in result.valuations], result.duplicates
([(0.0, True), (10.0, True)], [2])
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from streamval.config import EngineSettings
from streamval.errors import CheckpointError
from streamval.models.assets import (
    FEATURE_LIMIT,
    MAX_RATIO,
    AssetTable,
    Rows,
    ScaleRule,
    WindowStep,
)
from streamval.models.clustering import AssetClustering, FitResult
from streamval.models.drift import AdaptiveLearningRate, DriftMonitor
from streamval.models.error_metrics import ErrorMetrics
from streamval.models.experts import EXPERTS, ExpertMix
from streamval.models.fitting import FitJob, FitRunner, Fitted
from streamval.models.intervals import AdaptiveConformal, update_error_scale
from streamval.models.learner import Predictor, SequenceLearner
from streamval.models.profiles import ProfileInputs, ProfileSpace, series_counts, series_vector
from streamval.models.shared import AssetProfile, SharedClustering
from streamval.models.shocks import CrossSectionalDetector
from streamval.models.state import rng_state, set_rng_state
from streamval.models.trainer import Scored, Trainer
from streamval.stream.contract.ordering import Order, order_of
from streamval.stream.contract.outputs import (
    BatchResult,
    ClusteringStats,
    ClusterSnapshot,
    DriftAlarm,
    Valuation,
)
from streamval.stream.contract.schema import AssetEvent

__all__ = ["Engine", "set_torch_threads"]

log = logging.getLogger(__name__)

STATE_VERSION = 5
# An asset's cluster is re-checked once its event count has grown by this share since the last
# check (and at least by one): early on every event, later rarely, as its profile settles.
_RECHECK_GROWTH = 8
# Feature names beyond max_features remembered (with their dropped counts) for reports; more
# are still counted, not named.
_DROPPED_NAMES = 100
# Settings a state must have been taken with (they shape the arrays and the networks).
_SHAPING = (
    "seq_len",
    "max_features",
    "cell",
    "hidden",
    "buffer_size",
    "metrics_window",
    "pooling",
)

FloatArray = NDArray[np.float64]
Float32Array = NDArray[np.float32]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def set_torch_threads(settings: EngineSettings) -> None:
    """Apply `engine.torch_threads` to this process (torch's thread pool is process-wide)."""
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)


@dataclass
class _Cluster:
    """The valuing side of one cluster: its error metrics and its serving model."""

    errors: ErrorMetrics
    predictor: Predictor
    conformal: AdaptiveConformal
    shock: CrossSectionalDetector
    mix: ExpertMix
    fast_predictor: Predictor
    expired: int = 0  # assets of this cluster forgotten after asset_ttl
    dropped: int = 0  # feature values of its events beyond max_features


@dataclass
class _FitStats:
    """What the clustering's fits and online switches did (snapshots, metrics, reports)."""

    fits: int = 0
    silhouette: float | None = None
    cluster_silhouette: dict[int, float] = field(default_factory=dict)
    churn: float | None = None  # share of live assets that changed cluster at the last re-fit
    switches: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)  # (event time, churn)

    def record(self, fit: FitResult, churn: float | None, ts: int) -> None:
        self.fits += 1
        self.silhouette = None if math.isnan(fit.silhouette) else fit.silhouette
        self.cluster_silhouette = {
            c: v for c, v in fit.cluster_silhouette.items() if not math.isnan(v)
        }
        if churn is not None:
            self.churn = churn
            self.history.append((ts, churn))

    def state_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "silhouette": self.silhouette,
            "cluster_silhouette": {str(c): v for c, v in self.cluster_silhouette.items()},
            "churn": self.churn,
            "switches": self.switches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fits = int(state["fits"])
        self.silhouette = None if state["silhouette"] is None else float(state["silhouette"])
        self.cluster_silhouette = {int(c): float(v) for c, v in state["cluster_silhouette"].items()}
        self.churn = None if state["churn"] is None else float(state["churn"])
        self.switches = int(state["switches"])


@dataclass
class _Admitted:
    """What the Python pass over a segment's events found (see `Engine._admit`)."""

    watermark: int | None  # latest accepted event time after the segment
    late: list[int] = field(default_factory=list)  # input indices
    duplicates: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # per row: the asset's slot, -1 if new
    names: list[str] = field(default_factory=list)  # per row: the asset id
    last: list[int | None] = field(default_factory=list)  # per row: last accepted event time
    index: list[int] = field(default_factory=list)  # per accepted event: its input index
    rows: list[int] = field(default_factory=list)  # its row
    waves: list[int] = field(default_factory=list)  # k-th event of its asset here: wave k
    restart: list[bool] = field(default_factory=list)  # its asset expired: start afresh
    ts: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)  # NaN: no value
    has_features: list[bool] = field(default_factory=list)
    feature_at: list[tuple[int, int, float]] = field(default_factory=list)  # (event, slot, x)
    attributes: dict[int, list[tuple[str, Any]]] = field(default_factory=dict)  # event -> ...
    features: list[str] = field(default_factory=list)  # names first seen here
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (event, name) beyond slots


@dataclass(frozen=True)
class _Alarm:
    """What a detector reported at an event of a segment (see `DriftAlarm`)."""

    ts: int  # event time of the shock step (the event's own for per-event detectors)
    before: float
    after: float
    assets: int = 1
    affected: int = 1
    detector: str = ""  # the one that fired, when not `engine.detector` itself


@dataclass
class _Plan:
    """One segment of a batch, computed but not yet committed (see `Engine._plan`)."""

    start: int  # input indices [start, stop)
    stop: int
    late: list[int]
    duplicates: list[int]
    index: IntArray  # per accepted event: its input index
    ts: IntArray
    values: FloatArray  # NaN: no value
    local: IntArray  # its row in `rows`
    rows: Rows
    slots: IntArray  # per row: its slot, -1 for a new asset
    names: list[str]  # per row: the asset id
    restarts: list[tuple[int, bool]]  # (cluster, had min_history) of assets forgotten
    last_ts: IntArray  # per row: the event time the order guard remembers after the segment
    features: list[str]  # feature names first seen in this segment
    vocabulary: dict[str, list[str]]  # attribute strings first seen in this segment
    watermark: int | None  # latest accepted event time after the segment
    cluster: IntArray
    warming: BoolArray
    v_last: FloatArray
    unit: FloatArray
    windows: Float32Array  # (k, seq_len, 1 + max_features), NaN rows where warming
    targets: FloatArray  # NaN: no training sample
    ready: BoolArray  # the event gave its asset its `min_history`-th value
    dropped: list[tuple[int, str]]  # (accepted event, feature name) beyond max_features
    valuations: FloatArray = field(default_factory=lambda: np.zeros(0))
    lower: FloatArray = field(default_factory=lambda: np.zeros(0))  # NaN: no interval
    upper: FloatArray = field(default_factory=lambda: np.zeros(0))
    conformal: dict[int, AdaptiveConformal] = field(default_factory=dict)
    err_start: tuple[FloatArray, NDArray[np.int32]] | None = None  # rows' error scales before
    versions: dict[int, int] = field(default_factory=dict)
    alarms: list[tuple[int, _Alarm]] = field(default_factory=list)
    monitors: dict[int, DriftMonitor] = field(default_factory=dict)
    shocks: dict[int, CrossSectionalDetector] = field(default_factory=dict)
    mixes: dict[int, ExpertMix] = field(default_factory=dict)
    fast_events: list[tuple[int, int, str]] = field(default_factory=list)  # (event, cluster, what)
    fast_served: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def k(self) -> int:
        return len(self.index)

    @property
    def samples(self) -> BoolArray:
        return ~np.isnan(self.targets)


# The seed key of the pooled model's RNG (`engine.pooled_expert`), beside the clusters' ids.
_POOL_SEED = 2**31 - 1


def cluster_seed(settings: EngineSettings, cluster: int) -> int:
    """The seed of a cluster's learner and policy (the same in every process)."""
    return int(np.random.SeedSequence([settings.seed, cluster]).generate_state(1)[0])


def cluster_policy(settings: EngineSettings, cluster: int) -> AdaptiveLearningRate:
    """A new cluster's learning-rate policy and drift monitor."""
    s = settings
    return AdaptiveLearningRate.from_settings(
        s,
        seed=cluster_seed(s, cluster),
        detector="adwin" if s.detector == "cross_sectional" else s.detector,
        boost=s.lr_boost if s.drift_response == "boost" else 1.0,
    )


def pool_seed(settings: EngineSettings) -> int:
    """The seed of the pooled model's learner (`engine.pooled_expert`; the same everywhere)."""
    return cluster_seed(settings, _POOL_SEED)


def pool_policy(settings: EngineSettings) -> AdaptiveLearningRate:
    """The pooled model's lr policy: the base lr, never boosted (shocks are each cluster's own
    response)."""
    return cluster_policy(settings.model_copy(update={"lr_boost": 1.0}), _POOL_SEED)


class Engine:
    """Prequential per-cluster valuation engine; see the module docstring for the semantics."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        accept_late: bool = False,
        trainer: Callable[[EngineSettings], Trainer] | None = None,
    ) -> None:
        self.settings = settings
        self.accept_late = accept_late
        # Makes the trainer (None: the local one); a valuer's sends its samples to the learners.
        self._make_trainer = trainer
        self._fitter = FitRunner()  # a subprocess for fits (background training)
        self._pending_fit: Future[Fitted] | None = None
        self._fits_clustering = True  # see `fits_clustering`
        # Other processes' assets for this one's fits (the profiles topic); None: own only.
        self.profile_source: Callable[[], Sequence[AssetProfile]] | None = None
        self._trainer: Trainer | None = None
        self._reset()

    # -- construction ---------------------------------------------------------------------------

    def _reset(self) -> None:
        s = self.settings
        if self._trainer is not None:
            self._trainer.close()
        self._trainer = (
            self._make_trainer(s)
            if self._make_trainer is not None
            else Trainer(
                batch_size=s.batch_size,
                max_backlog=s.max_backlog,
                background=s.training == "background",
                pooled=s.pooling != "cluster",
                catch_up_steps=s.catch_up_steps,
            )
        )
        self._shared: SequenceLearner | None = None  # the learner every cluster shares (pooled)
        self._pool_predictor = Predictor(s.max_features, s.seq_len, s.cell, s.hidden)
        self._rng = np.random.default_rng(s.seed)
        rule = ScaleRule(
            mode=s.scale,
            horizon=s.scale_horizon,
            winsor=s.scale_winsor,
            floor=s.scale_floor,
            prior_n=s.scale_prior_n,
            spike_guard=s.spike_guard,
            input_clip=s.input_clip,
        )
        self._assets = AssetTable(s.seq_len, rule=rule)
        self._features: dict[str, int] = {}
        self.dropped_features: dict[str, int] = {}  # name -> values dropped (max_features)
        self._prior = 0.0  # the peers' median relative scale (`AssetTable.relative_scale`)
        self._events_since_prior = 0
        self.spikes_held = 0  # values the spike guard held ...
        self.spikes_dropped = 0  # ... that reverted (never learned from)
        self.shifts_confirmed = 0  # ... that the next value confirmed
        self.shifts_returned = 0  # big changes back to the level before a confirmed shift
        self._clustering = AssetClustering.from_settings(s)
        self._space = ProfileSpace(s.profile_pseudo_count)
        self._clusters: dict[int, _Cluster] = {}
        self._fit_stats = _FitStats()
        # Every cluster's parent and every removed cluster's successor (shared clusterings).
        self._parents: dict[int, int] = {}
        self._successors: dict[int, int] = {}
        self.clustering_version = 0  # of the shared clustering adopted last (0: none)
        self._add_cluster(0, self._new_learner(0))
        self._ready = 0  # live assets with at least min_history values
        self._events_since_fit = 0
        self._fit_due: int | None = None  # event time of the event that made a fit due
        # A fit computed off the valuing thread (background training), applied between
        # batches once done; None when none is running. A running one's result is dropped.
        self._pending_fit = None
        # The first fit's rows (slots, asset ids): it labels those still holding the same asset.
        self._pending_rows: tuple[IntArray, list[str | None]] | None = None
        self._watermark: int | None = None
        self.expired_assets = 0

    @property
    def trainer(self) -> Trainer:
        assert self._trainer is not None
        return self._trainer

    def _cluster_seed(self, cluster: int) -> int:
        return cluster_seed(self.settings, cluster)

    def _new_learner(self, cluster: int) -> SequenceLearner:
        """A fresh training copy for `cluster`; pooled: the one shared learner (made once)."""
        if self.settings.pooling == "cluster":
            return SequenceLearner.from_settings(self.settings, seed=self._cluster_seed(cluster))
        if self._shared is None:
            self._shared = SequenceLearner.from_settings(self.settings, seed=self._cluster_seed(0))
        return self._shared

    def _pool_policy(self) -> AdaptiveLearningRate:
        return pool_policy(self.settings)

    def _add_cluster(
        self, cluster: int, learner: SequenceLearner, parent: int | None = None
    ) -> None:
        """A cluster with this training copy; its intervals start from `parent`'s scores."""
        s = self.settings
        self.trainer.add(cluster, learner, cluster_policy(s, cluster))
        predictor = Predictor(s.max_features, s.seq_len, s.cell, s.hidden, cluster=cluster)
        fast_predictor = Predictor(s.max_features, s.seq_len, s.cell, s.hidden, cluster=cluster)
        if parent is not None and s.pooled_expert and s.pooling == "cluster":
            self.trainer.start_pool(parent, pool_seed(s), self._pool_policy())
        if parent is not None and parent in self._clusters:
            conformal = self._clusters[parent].conformal.fork()
            shock = self._clusters[parent].shock.fork()
            mix = self._clusters[parent].mix.fork()
        else:
            shock = CrossSectionalDetector.from_settings(s)
            mix = ExpertMix.from_settings(s, can_fold=s.pooling == "cluster")
            conformal = AdaptiveConformal(
                s.interval_coverage,
                gamma=s.interval_gamma,
                cap=s.interval_cap,
                window=s.interval_window,
                metrics_window=s.metrics_window,
            )
        self._clusters[cluster] = _Cluster(
            ErrorMetrics(s.metrics_window), predictor, conformal, shock, mix, fast_predictor
        )

    def close(self) -> None:
        """Stop the background trainer (the step in flight finishes) and the fitting subprocess
        (a running fit finishes, its result is dropped). Idempotent."""
        self.trainer.release()
        self.trainer.close()
        self._pending_fit = None
        self._pending_rows = None
        self._fitter.close()

    # -- public surface -------------------------------------------------------------------------

    @property
    def clusters(self) -> list[int]:
        """Current cluster ids, sorted."""
        return sorted(self._clusters)

    @property
    def fitted(self) -> bool:
        """Whether the clustering has been bootstrapped (always False with `n_clusters=1`)."""
        return self._clustering.fitted

    @property
    def fit_pending(self) -> bool:
        """Whether a clustering fit runs in the fitting subprocess or waits to be applied."""
        return self._pending_fit is not None

    @property
    def n_assets(self) -> int:
        """Assets currently remembered."""
        return self._assets.n_live

    @property
    def state_bytes(self) -> int:
        """Bytes of the per-asset arrays (the asset id map comes on top)."""
        return self._assets.nbytes

    def cluster_of(self, asset_id: str) -> int | None:
        """The asset's current cluster, or None for an unknown asset."""
        slot = self._assets.ids.get(asset_id)
        return None if slot is None else int(self._assets["cluster"][slot])

    def cluster_sizes(self) -> dict[int, int]:
        """Live assets per cluster."""
        counts = np.bincount(self._assets["cluster"][self._assets["live"]])
        return {c: int(counts[c]) if c < len(counts) else 0 for c in self.clusters}

    def assignments(self) -> dict[str, int]:
        """Current cluster of every known asset."""
        clusters = self._assets["cluster"]
        return {name: int(clusters[slot]) for name, slot in self._assets.ids.items()}

    def fast_learners(self) -> dict[int, str]:
        """Per cluster, its fast learner: "none", "shadow" (scored, not served) or "served"."""
        return {c: cluster.mix.fast for c, cluster in self._clusters.items()}

    def pooled_samples(self) -> tuple[int, int, int] | None:
        """The pooled expert's (queued, trained, skipped) samples; None while there is none."""
        return self.trainer.pool_counts()

    def lr(self, cluster: int) -> float:
        """Current learning rate of a cluster."""
        return self.trainer.policy(cluster).lr

    def profile_inputs(self) -> tuple[list[str], ProfileInputs]:
        """Every known asset's id and profile material (attributes, series statistics)."""
        slots = self._assets.live_slots()
        return [str(self._assets.names[s]) for s in slots.tolist()], self._inputs_of_slots(slots)

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        """Value a batch of events in order; unless `learn=False`, learn from them.

        With `learn=False` the events are valued and scored but give no training samples, and
        no training step or fit runs (a frozen model).
        """
        result = BatchResult()
        self.apply_finished_fit()
        if learn and self._will_fit():
            self._fitter.start()  # its imports overlap the warm-up before the bootstrap fit
        before = {c: self.trainer.updates(c) for c in self._clusters}
        pos, n = 0, len(events)
        one_by_one = False
        plan: _Plan | None = None
        while pos < n:
            stop = pos + 1 if one_by_one else n
            due: int | None = None
            try:
                if plan is None:
                    plan = self._plan(events, pos, stop)
                cut, fit_due = self._find_cut(plan, learn)
                if cut == 0 and plan.k:
                    due = int(plan.ts[0])  # something is due before the segment's first event
                else:
                    plan, fit_due = self._value_segment(
                        events, pos, plan, cut, fit_due=fit_due, learn=learn
                    )
            except Exception as exc:
                if one_by_one:
                    result.failed.append((pos, f"{type(exc).__name__}: {exc}"))
                    log.warning("event could not be processed", extra={"index": pos})
                    pos, plan = pos + 1, None
                else:
                    log.warning("batch failed, processing its events one by one", exc_info=True)
                    one_by_one, plan = True, None
                continue
            if due is not None:
                # Training steps and fits are not about one event: an error there propagates.
                if self._act(due, learn):
                    plan = None  # see `_act`: plan again
                continue
            self._commit(plan, result, learn, fit_due)
            pos, plan = plan.stop, None
        for c in self._clusters:
            done = self.trainer.updates(c) - before.get(c, 0)
            if done > 0:
                result.updates[c] = done
        if learn and self.trainer.background:
            self._refresh_prior()  # no deterministic points to wait for in background mode
        self._expire()
        return result

    def _value_segment(
        self,
        events: Sequence[AssetEvent],
        pos: int,
        plan: _Plan,
        cut: int,
        *,
        fit_due: int | None,
        learn: bool,
    ) -> tuple[_Plan, int | None]:
        """The plan cut where an action is due, valued, with its drift alarms (pure)."""
        if cut < plan.k:
            plan = self._plan(events, pos, int(plan.index[cut]))
            cut, fit_due = self._find_cut(plan, learn)
        self._value(plan)
        alarm_cut = self._drift_cut(plan, learn)
        if alarm_cut is not None:  # an alarm makes a re-fit due inside the segment
            plan = self._plan(events, pos, int(plan.index[alarm_cut]))
            cut, fit_due = self._find_cut(plan, learn)
            self._value(plan)
            self._drift_cut(plan, learn)
        return plan, fit_due

    def flush(self) -> None:
        """Learn what is due now rather than before the next event: every full training step
        (in background mode: wait for the trainer to finish them) and a due fit."""
        self.trainer.release()  # a hold for a fit not yet applied: applied below
        self.trainer.drain()
        if self._fit_due is not None:
            self._fit()
        if self._pending_fit is not None:
            self._apply_pending_fit()

    def snapshot(self, ts_ms: int | None = None) -> list[ClusterSnapshot]:
        """Per-cluster health for the metrics topic (at `ts_ms`, default: the latest event time)."""
        ts = (self._watermark or 0) if ts_ms is None else ts_ms
        live = self._assets["live"]
        clusters = self._assets["cluster"][live]
        counts = np.bincount(clusters, minlength=max(self._clusters) + 1)
        stats = self.clustering_stats()
        out = []
        for cid in self.clusters:
            c = self._clusters[cid]
            policy = self.trainer.policy(cid)
            queued, trained, skipped = self.trainer.counts(cid)
            out.append(
                ClusterSnapshot(
                    cluster=cid,
                    ts_ms=ts,
                    assets=int(counts[cid]),
                    rolling=c.errors.stats(rolling=True),
                    total=c.errors.stats(rolling=False),
                    drift_alarms=policy.alarms,
                    lr=policy.lr,
                    updates=self.trainer.updates(cid),
                    model_version=self.trainer.snapshot(cid).version,
                    queued_samples=queued,
                    trained_samples=trained,
                    skipped_samples=skipped,
                    expired_assets=c.expired,
                    silhouette=self._fit_stats.cluster_silhouette.get(cid),
                    clustering=stats,
                    interval_coverage=c.conformal.rolling_coverage,
                    interval_width=c.conformal.rolling_width,
                    dropped_feature_values=c.dropped,
                    fast_learner=c.mix.fast,
                    fast_learners=c.mix.started,
                    expert_weights=dict(
                        zip(EXPERTS, c.mix.served_weights().round(6).tolist(), strict=True)
                    ),
                )
            )
        return out

    def clustering_stats(self) -> ClusteringStats:
        """The clustering as a whole: fits, silhouette, churn at the last re-fit, switches."""
        f = self._fit_stats
        return ClusteringStats(
            clusters=len(self._clusters),
            fits=f.fits,
            silhouette=f.silhouette,
            churn=f.churn,
            switches=f.switches,
        )

    @property
    def churn_history(self) -> list[tuple[int, float]]:
        """(event time, churn) of every re-fit this engine ran since it started or loaded."""
        return list(self._fit_stats.history)

    # -- steps 0-2: the segment's assets, computed on a copy (pure) -----------------------------

    def _admit(self, events: Sequence[AssetEvent], start: int, stop: int) -> _Admitted:
        """Step 0 for events[start:stop], one Python pass: late and duplicate events, expired
        assets, each accepted event's row and wave, and its numbers gathered into lists."""
        s = self.settings
        table = self._assets
        ttl = s.asset_ttl
        last_ts = table["last_ts"]
        out = _Admitted(watermark=self._watermark)
        row_of: dict[str, int] = {}
        row_waves: list[int] = []
        n_known = len(self._features)
        for i in range(start, stop):
            event = events[i]
            ts = event.ts_ms
            row = row_of.get(event.asset_id)
            if row is None:
                row = row_of[event.asset_id] = len(out.slots)
                slot = table.ids.get(event.asset_id, -1)
                out.slots.append(slot)
                out.names.append(event.asset_id)
                out.last.append(int(last_ts[slot]) if slot >= 0 else None)
                row_waves.append(0)
            last = out.last[row]
            watermark = out.watermark
            expired = (
                bool(ttl) and last is not None and watermark is not None and last < watermark - ttl
            )
            if expired:
                last = None
            order = order_of(last, ts, self.accept_late)
            if order is Order.DUPLICATE:
                out.duplicates.append(i)
                continue
            if order is Order.LATE:
                out.late.append(i)
                continue
            if last is None or ts > last:
                out.last[row] = ts
            value = event.value
            if value is not None and not math.isfinite(value):
                raise ValueError(f"event {i}: non-finite value {value!r}")
            position = len(out.index)
            out.index.append(i)
            out.rows.append(row)
            out.waves.append(row_waves[row])
            row_waves[row] += 1
            out.restart.append(expired)
            out.ts.append(ts)
            out.values.append(math.nan if value is None else float(value))
            out.has_features.append(bool(event.features))
            for name, x in event.features.items():
                column = self._features.get(name)
                if column is None:
                    if name not in out.features:
                        if n_known + len(out.features) >= s.max_features:
                            out.dropped.append((position, name))  # counted at commit
                            continue
                        out.features.append(name)
                    column = n_known + out.features.index(name)
                out.feature_at.append((position, column, float(x)))
            for name, a in event.attributes.items():
                out.attributes.setdefault(position, []).append((name, a))
            out.watermark = ts if watermark is None else max(watermark, ts)
        return out

    def _plan(self, events: Sequence[AssetEvent], start: int, stop: int) -> _Plan:
        """Steps 0-2 and the samples of events[start:stop], computed on a copy of the touched
        rows, wave by wave; nothing of the engine changes."""
        s = self.settings
        a = self._admit(events, start, stop)
        k = len(a.index)
        n_features = len(self._features) + len(a.features)
        feats = np.full((k, n_features), np.nan, dtype=np.float32)
        if a.feature_at:
            at, column, x = zip(*a.feature_at, strict=True)
            feats[list(at), list(column)] = np.clip(x, -FEATURE_LIMIT, FEATURE_LIMIT)
        slots = np.asarray(a.slots, dtype=np.int64)
        rows = self._rows(slots, n_features)
        out = _PlanArrays.empty(k, s.seq_len, s.max_features)
        vocabulary: dict[str, list[str]] = {}
        restarts: list[tuple[int, bool]] = []
        local = np.asarray(a.rows, dtype=np.int64)
        waves = np.asarray(a.waves, dtype=np.int64)
        values = np.asarray(a.values, dtype=np.float64)
        has_features = np.asarray(a.has_features, dtype=bool)
        restart = np.asarray(a.restart, dtype=bool)
        for wave in range(int(waves.max()) + 1 if k else 0):
            sel = np.flatnonzero(waves == wave)
            r = local[sel]
            for row in r[restart[sel]].tolist():
                had = bool(rows["n_values"][row] >= s.min_history)
                restarts.append((int(rows["cluster"][row]), had))
                rows.reset(np.array([row]))
            changed = np.zeros(len(sel), dtype=bool)
            for j, (position, row) in enumerate(zip(sel.tolist(), r.tolist(), strict=True)):
                for name, value in a.attributes.get(position, ()):
                    if isinstance(value, str):
                        code = self._assets.code(name, value, vocabulary)
                        changed[j] |= rows.set_attribute(row, name, None, code)
                    else:
                        changed[j] |= rows.set_attribute(row, name, float(value), -1)
            step = rows.shift(r, feats[sel], has_features[sel], self._prior)
            self._assign(rows, r, changed, vocabulary)
            targets, _ = rows.absorb(r, values[sel], step)
            out.fill(sel, rows["cluster"][r], step, targets)
            out.ready[sel] = ~np.isnan(values[sel]) & (rows["n_values"][r] == s.min_history)
        return _Plan(
            start=start,
            stop=stop,
            late=a.late,
            duplicates=a.duplicates,
            index=np.asarray(a.index, dtype=np.int64),
            ts=np.asarray(a.ts, dtype=np.int64),
            values=values,
            local=local,
            rows=rows,
            slots=slots,
            names=a.names,
            restarts=restarts,
            last_ts=np.array(
                [np.iinfo(np.int64).min if t is None else t for t in a.last], dtype=np.int64
            ),
            features=a.features,
            vocabulary=vocabulary,
            watermark=a.watermark,
            cluster=out.cluster,
            warming=out.warming,
            v_last=out.v_last,
            unit=out.unit,
            windows=out.windows,
            targets=out.targets,
            ready=out.ready,
            dropped=a.dropped,
        )

    def _rows(self, slots: IntArray, n_features: int) -> Rows:
        """A copy of the rows of these slots (blank rows where the slot is -1)."""
        table = self._assets
        known = slots >= 0
        if known.all() and len(slots):
            rows = table.gather(slots)
        else:
            rows = (
                table.gather(np.where(known, slots, 0))
                if table.capacity
                else table.blank(len(slots))
            )
            rows.reset(np.flatnonzero(~known))
        rows.widen(n_features)
        return rows

    def _assign(
        self, rows: Rows, r: IntArray, changed: BoolArray, vocabulary: dict[str, list[str]]
    ) -> None:
        """Step 2 for one wave: re-check the clusters of the assets that are due for it."""
        if not self._clustering.fitted:
            return  # provisional cluster 0 (rows start there)
        seen = rows["seen"][r]
        due = changed | (seen >= rows["next_check"][r])
        if not due.any():
            return
        rd = r[due]
        inputs = self._inputs_of_rows(rows, rd, vocabulary)
        cluster, candidate, streak = self._clustering.reassign(
            self._space.transform(inputs),
            rows["cluster"][rd].astype(np.int64),
            rows["candidate"][rd].astype(np.int64),
            rows["streak"][rd].astype(np.int64),
            rows["placed"][rd],
        )
        rows["cluster"][rd] = cluster
        rows["candidate"][rd] = candidate
        rows["streak"][rd] = streak
        rows["placed"][rd] = True
        rows["next_check"][rd] = seen[due] + np.maximum(1, seen[due] // _RECHECK_GROWTH)

    def _inputs_of_rows(
        self, rows: Rows, r: IntArray, vocabulary: dict[str, list[str]] | None = None
    ) -> ProfileInputs:
        a = rows.arrays
        vocabularies: dict[str, Sequence[str]] = dict(self._assets.vocabularies)
        for name, extra in (vocabulary or {}).items():
            vocabularies[name] = [*self._assets.vocabularies.get(name, []), *extra]
        return ProfileInputs(
            stats=series_vector(
                n=a["st_n"][r],
                mean=a["st_mean"][r],
                m2=a["st_m2"][r],
                n_pairs=a["st_pairs"][r],
                sum_xy=a["st_sxy"][r],
                feat_sum=a["st_fsum"][r],
                feat_count=a["st_fcount"][r],
            ),
            counts=series_counts(a["st_n"][r], a["st_pairs"][r], a["st_fcount"][r]),
            numeric={name: column[r] for name, column in rows.numeric.items()},
            categorical={
                name: codes[r].astype(np.int64) for name, codes in rows.categorical.items()
            },
            vocabularies=vocabularies,
        )

    def _inputs_of_slots(self, slots: IntArray) -> ProfileInputs:
        rows = self._assets.gather(slots)
        return self._inputs_of_rows(rows, np.arange(len(slots)))

    # -- where the segment ends -----------------------------------------------------------------

    def _find_cut(self, plan: _Plan, learn: bool) -> tuple[int, int | None]:
        """The first accepted event before which a training step or a fit is due (plan.k if
        none), and the event time at which a fit became due within the segment (or None).

        An action that became due at event time T runs before the first later event whose
        event time is not T: events sharing an event time are valued by the same model, and
        a stream whose time restarts (a backtest's next split) still learns.
        """
        if not learn:
            return plan.k, self._fit_due
        s = self.settings
        trainer = self.trainer
        sync = not trainer.background
        batch = s.batch_size
        pending: set[int] = set()
        count: dict[int, int] = {}
        latest: dict[int, int] = {}
        if sync:
            for c in self._clusters:
                pending.update(trainer.due_times(c))
                count[c] = trainer.queued(c) % batch
                partial = trainer.partial_latest(c)
                if partial is not None:
                    latest[c] = partial
        fit_due = self._fit_due
        if fit_due is not None:
            pending.add(fit_due)
        ready = self._ready
        since_fit = self._events_since_fit
        fitted = self._clustering.fitted or self._pending_fit is not None
        multi = s.n_clusters != 1 and self.fits_clustering  # a follower schedules no fit
        samples = plan.samples
        for p in range(plan.k):
            ts = int(plan.ts[p])
            if pending and (len(pending) > 1 or ts not in pending):
                return p, fit_due
            since_fit += 1
            if sync and samples[p]:
                c = int(plan.cluster[p])
                count[c] = count.get(c, 0) + 1
                latest[c] = max(latest.get(c, ts), ts)
                if count[c] == batch:
                    pending.add(latest.pop(c))
                    count[c] = 0
            ready += int(plan.ready[p])
            if fit_due is None and multi:
                bootstrap = not fitted and ready >= s.bootstrap_assets
                scheduled = fitted and bool(s.refit_every) and since_fit >= s.refit_every
                if bootstrap or scheduled:
                    fit_due = ts
                    pending.add(ts)
        return plan.k, fit_due

    # -- steps 3-5 before the commit: valuations and the drift monitors (pure) ------------------

    def _value(self, plan: _Plan) -> None:
        """Valuations of the segment's events: one forward pass per cluster for its stable model
        (and for its fast learner while one lives), each change bounded at `change_clip` units,
        the served change from the cluster's expert mix (`_mix`); then their intervals."""
        clip = self.settings.change_clip
        k = plan.k
        stable = np.zeros(k)
        fast = np.full(k, np.nan)
        pooled = np.full(k, np.nan)
        valuations = np.where(np.isnan(plan.v_last), 0.0, plan.v_last)
        model = ~plan.warming
        pool = self.trainer.pool_snapshot()
        if pool is not None and model.any():
            self._pool_predictor.load(pool)
            idx = np.flatnonzero(model)
            change = self._pool_predictor.predict(plan.windows[idx])
            pooled[idx] = np.clip(change, -clip, clip) if clip else change
        plan.versions = {}
        for c in np.unique(plan.cluster).tolist():
            cluster = self._clusters[c]
            cluster.predictor.load(self.trainer.snapshot(c))
            plan.versions[c] = cluster.predictor.version
            idx = np.flatnonzero(model & (plan.cluster == c))
            if not len(idx):
                continue
            change = cluster.predictor.predict(plan.windows[idx])
            stable[idx] = np.clip(change, -clip, clip) if clip else change
            snapshot = self.trainer.fast_snapshot(c)
            if snapshot is not None and cluster.mix.fast != "none":
                cluster.fast_predictor.load(snapshot)
                change = cluster.fast_predictor.predict(plan.windows[idx])
                fast[idx] = np.clip(change, -clip, clip) if clip else change
        served = self._mix(plan, stable, fast, pooled)
        idx = np.flatnonzero(model)
        if len(idx):
            with np.errstate(over="ignore", invalid="ignore"):
                made = plan.v_last[idx] + plan.unit[idx] * served[idx]
            valuations[idx] = np.where(np.isfinite(made), made, plan.v_last[idx])
        for p in np.flatnonzero(np.isnan(plan.v_last)).tolist():
            valuations[p] = self._median_before(plan, p)
        plan.valuations = valuations
        self._intervals(plan)

    def _mix(
        self, plan: _Plan, stable: FloatArray, fast: FloatArray, pooled: FloatArray
    ) -> FloatArray:
        """The served change of each model-valued event, in order, on copies of the clusters'
        expert mixes: a cluster's step closes (its weights move, its fast learner is judged)
        when its next event has another step; labelled events score every expert."""
        step_ms = self.settings.shock_step_ms
        served = np.zeros(plan.k)
        plan.mixes, plan.fast_events = {}, []
        plan.fast_served = np.zeros(plan.k, dtype=bool)
        model = np.flatnonzero(~plan.warming)
        if not len(model):
            return served
        with np.errstate(over="ignore", invalid="ignore"):
            targets = (plan.values - plan.v_last) / plan.unit
        clusters = plan.cluster[model].tolist()
        steps = (plan.ts[model] // step_ms if step_ms > 0 else plan.ts[model]).tolist()
        ys = targets[model].tolist()
        ms = stable[model].tolist()
        fs = fast[model].tolist()
        gs = pooled[model].tolist()
        for j, p in enumerate(model.tolist()):
            c = clusters[j]
            mix = plan.mixes.get(c)
            if mix is None:
                mix = plan.mixes[c] = self._clusters[c].mix.copy()
            what = mix.advance(steps[j])
            if what is not None:
                plan.fast_events.append((p, c, what))
            f = fs[j] if mix.fast != "none" and not math.isnan(fs[j]) else ms[j]
            if math.isnan(gs[j]):
                g = ms[j]
            else:
                g = gs[j]
                mix.join_pooled()
            out = mix.combine(ms[j], f, g)
            served[p] = out if mix.gate_open else 0.0
            plan.fast_served[p] = mix.fast == "served"
            if not math.isnan(ys[j]):
                mix.add(ys[j], (0.0, ms[j], f, g), out)
        return served

    def _intervals(self, plan: _Plan) -> None:
        """Each event's interval and the conformal updates, in order, on copies of the clusters'
        conformal states and of the rows' error scales (see `streamval.models.intervals`).

        Model-valued events get an interval once their cluster has scores; every event with a
        value and a last value updates its asset's error scale (warming ones too, so the scale
        is ready when the model starts valuing); model-valued ones also give a score.
        """
        s = self.settings
        k = plan.k
        lower, upper = np.full(k, np.nan), np.full(k, np.nan)
        states: dict[int, AdaptiveConformal] = {}
        if plan.err_start is None:  # valuing a plan twice must not count its errors twice
            plan.err_start = (plan.rows["err_scale"].copy(), plan.rows["err_n"].copy())
        r_of, n_of = plan.err_start[0].copy(), plan.err_start[1].copy()
        horizon = s.interval_horizon
        with np.errstate(over="ignore", invalid="ignore"):
            errors = np.abs(plan.values / plan.unit - plan.valuations / plan.unit)
        errors = np.minimum(np.nan_to_num(errors, nan=MAX_RATIO), MAX_RATIO)
        ts_list = plan.ts.tolist()
        rows = plan.local.tolist()
        clusters = plan.cluster.tolist()
        model = (~plan.warming).tolist()
        labelled = (~np.isnan(plan.values) & ~np.isnan(plan.v_last)).tolist()
        units = plan.unit.tolist()
        values = plan.valuations.tolist()
        for p in range(k):
            row = rows[p]
            r = float(r_of[row])
            has_r = n_of[row] > 0 and math.isfinite(r)
            hw: float | None = None
            if model[p]:
                c = clusters[p]
                state = states.get(c)
                if state is None:
                    state = states[c] = self._clusters[c].conformal.copy()
                state.advance(ts_list[p])
                q = state.quantile()
                if q is not None:
                    hw = q * (r if has_r else 1.0)
                    half = hw * units[p]
                    lo, hi = values[p] - half, values[p] + half
                    if math.isfinite(lo) and math.isfinite(hi):
                        lower[p], upper[p] = lo, hi
                    else:
                        hw = None
                if labelled[p]:
                    e = float(errors[p])
                    hit = None if hw is None else e <= hw
                    state.add(
                        ts_list[p], e / (r if has_r else 1.0), hit, None if hw is None else 2 * hw
                    )
            if labelled[p]:
                r_of[row] = update_error_scale(r, int(n_of[row]), float(errors[p]), horizon)
                n_of[row] += 1
        plan.lower, plan.upper, plan.conformal = lower, upper, states
        plan.rows["err_scale"][:] = r_of
        plan.rows["err_n"][:] = n_of

    def _median_before(self, plan: _Plan, p: int) -> float:
        """The median of the recent values of event p's cluster (of all clusters if it has
        none), including the values of the segment's earlier events."""
        window = self.settings.metrics_window
        earlier = np.arange(p)
        has = ~np.isnan(plan.values[:p])
        c = int(plan.cluster[p])
        own = np.concatenate(
            [
                self._clusters[c].errors.recent_values(),
                plan.values[earlier[has & (plan.cluster[:p] == c)]],
            ]
        )[-window:]
        if len(own):
            return float(np.median(own))
        every = [self._clusters[x].errors.recent_values() for x in self.clusters]
        pooled = np.concatenate([*every, plan.values[earlier[has]]])
        return float(np.median(pooled)) if len(pooled) else 0.0

    def _drift_cut(self, plan: _Plan, learn: bool) -> int | None:
        """Feed the segment's model errors to copies of the detectors, in order. If an alarm
        makes a re-fit or a fast learner due inside the segment, the accepted event before which
        it must start (the segment is then shortened to end there)."""
        s = self.settings
        plan.alarms = []
        labelled = ~np.isnan(plan.values) & ~plan.warming
        with np.errstate(over="ignore", invalid="ignore"):
            signed = plan.values / plan.unit - plan.valuations / plan.unit
        signed = np.clip(np.nan_to_num(signed, nan=MAX_RATIO), -MAX_RATIO, MAX_RATIO)
        monitors: dict[int, DriftMonitor] = {}
        errors = np.abs(signed)
        if s.detector == "cross_sectional":
            shocks: dict[int, CrossSectionalDetector] = {}
            ts = plan.ts.tolist()
            for p in np.flatnonzero(labelled).tolist():
                c = int(plan.cluster[p])
                detector = shocks.get(c)
                if detector is None:
                    detector = shocks[c] = self._clusters[c].shock.copy()
                if not detector.calibrated:
                    # Until the cluster's detector has calibrated (a stream shorter than
                    # shock_calibration steps never does), its per-event ADWIN watches.
                    monitor = monitors.get(c)
                    if monitor is None:
                        monitor = monitors[c] = self.trainer.policy(c).monitor.copy()
                    levels = monitor.update(float(errors[p]))
                    if levels is not None:
                        alarm = _Alarm(int(plan.ts[p]), *levels, detector="adwin")
                        plan.alarms.append((p, alarm))
                shock = detector.observe(ts[p], float(signed[p]))
                if shock is not None:
                    alarm = _Alarm(
                        shock.ts_ms,
                        shock.error_before,
                        shock.error_after,
                        shock.assets,
                        shock.affected,
                    )
                    plan.alarms.append((p, alarm))
            plan.shocks = shocks
        else:
            for p in np.flatnonzero(labelled).tolist():
                c = int(plan.cluster[p])
                monitor = monitors.get(c)
                if monitor is None:
                    monitor = monitors[c] = self.trainer.policy(c).monitor.copy()
                levels = monitor.update(float(errors[p]))
                if levels is not None:
                    plan.alarms.append((p, _Alarm(int(plan.ts[p]), *levels)))
        plan.monitors = monitors
        plan.alarms.sort(key=lambda item: item[0])
        if not (learn and plan.alarms):
            return None
        refit = s.refit_on_drift and self._clustering.fitted and self._fit_due is None
        if not refit and s.drift_response != "fast_learner":
            return None  # (a fit already due has its cut in the plan)
        first = plan.alarms[0][0]
        later = np.flatnonzero(plan.ts[first + 1 :] != plan.ts[first])
        return first + 1 + int(later[0]) if len(later) else None

    # -- commit ---------------------------------------------------------------------------------

    def _commit(self, plan: _Plan, result: BatchResult, learn: bool, fit_due: int | None) -> None:
        """Make the segment happen: plain assignments, in order."""
        s = self.settings
        trainer = self.trainer
        result.late.extend(plan.late)
        result.duplicates.extend(plan.duplicates)
        self._commit_assets(plan)
        self._events_since_fit += plan.k
        self._events_since_prior += plan.k
        self.spikes_held += plan.rows.held
        self.spikes_dropped += plan.rows.dropped
        self.shifts_confirmed += plan.rows.confirmed
        self.shifts_returned += plan.rows.returned
        for c, state in plan.conformal.items():
            self._clusters[c].conformal = state
        if plan.dropped:
            self._count_dropped(plan)
        if learn:
            self._fit_due = fit_due
        # Error metrics, drift monitors, valuations.
        labelled = ~np.isnan(plan.values)
        for c in np.unique(plan.cluster[labelled]).tolist():
            idx = np.flatnonzero(labelled & (plan.cluster == c))
            self._clusters[c].errors.observe(plan.values[idx], plan.valuations[idx])
        for c, monitor in plan.monitors.items():
            trainer.policy(c).monitor = monitor
        for c, shock in plan.shocks.items():
            self._clusters[c].shock = shock
        for c, mix in plan.mixes.items():
            self._clusters[c].mix = mix
        for _, c, what in plan.fast_events:
            if what in ("retired", "folded"):
                trainer.end_fast(c, fold=what == "folded")
        alarms = dict(plan.alarms)
        policies = {c: trainer.policy(c) for c in np.unique(plan.cluster).tolist()}
        fast_response = s.drift_response == "fast_learner"
        out = result.valuations
        for p in range(plan.k):
            c = int(plan.cluster[p])
            policy = policies[c]
            value = plan.values[p]
            out.append(
                Valuation(
                    asset_id=plan.names[int(plan.local[p])],
                    ts_ms=int(plan.ts[p]),
                    valuation=float(plan.valuations[p]),
                    cluster=c,
                    model_version=plan.versions[c],
                    warming=bool(plan.warming[p]),
                    adapting=bool(plan.fast_served[p]) if fast_response else policy.adapting,
                    lr=policy.lr,
                    value=None if math.isnan(value) else float(value),
                    lower=None if math.isnan(plan.lower[p]) else float(plan.lower[p]),
                    upper=None if math.isnan(plan.upper[p]) else float(plan.upper[p]),
                )
            )
            alarm = alarms.get(p)
            if alarm is not None:
                trainer.boost(c)  # counts the alarm; raises the lr only with the boost response
                response = s.drift_response
                if fast_response and learn and self._clusters[c].mix.start_fast():
                    seed = self._cluster_seed(c) + int(plan.ts[p]) % 1_000_003
                    trainer.start_fast(c, seed, s.lr * s.fast_lr_mult)
                elif fast_response:
                    response = "none"  # one fast learner per cluster at a time
                if s.refit_on_drift and learn and self._clustering.fitted and self._fit_due is None:
                    self._fit_due = int(plan.ts[p])
                result.drift.append(
                    DriftAlarm(
                        cluster=c,
                        detector=alarm.detector or s.detector,
                        ts_ms=alarm.ts,
                        error_before=alarm.before,
                        error_after=alarm.after,
                        lr=policy.lr,
                        assets=alarm.assets,
                        affected=alarm.affected,
                        detected_ts_ms=int(plan.ts[p]),
                        response=response,
                    )
                )
        # Training samples, with the scored events where a cluster's owner is elsewhere.
        if learn and not trainer.wants_scored:
            samples = plan.samples
            for c in np.unique(plan.cluster[samples]).tolist():
                idx = np.flatnonzero(samples & (plan.cluster == c))
                trainer.submit(c, plan.windows[idx], plan.targets[idx], plan.ts[idx])
            idx = np.flatnonzero(samples)
            trainer.submit_pool(plan.windows[idx], plan.targets[idx], plan.ts[idx])
        elif learn:
            samples = plan.samples
            with np.errstate(over="ignore", invalid="ignore"):
                z = plan.values / plan.unit - plan.valuations / plan.unit
            z = np.clip(np.nan_to_num(z, nan=MAX_RATIO), -MAX_RATIO, MAX_RATIO)
            z[plan.warming] = np.nan
            for c in np.unique(plan.cluster[labelled]).tolist():
                mine = plan.cluster == c
                idx = np.flatnonzero(samples & mine)
                scored = np.flatnonzero(labelled & mine)
                trainer.submit_scored(
                    c,
                    plan.windows[idx],
                    plan.targets[idx],
                    plan.ts[idx],
                    Scored(
                        plan.ts[scored],
                        plan.values[scored],
                        plan.valuations[scored],
                        z[scored],
                    ),
                )
            idx = np.flatnonzero(samples)  # (a remote trainer sends them on to the pool's owner)
            trainer.submit_pool(plan.windows[idx], plan.targets[idx], plan.ts[idx])

    def _commit_assets(self, plan: _Plan) -> None:
        """The assets' part of a commit: rows (windows, last values, scales, error scales,
        statistics, cluster placement), last event times, the watermark, features."""
        table = self._assets
        for cluster, had in plan.restarts:
            self._forget(cluster, had)
        for name in plan.features:
            self._features[name] = len(self._features)
        table.widen(len(self._features))
        table.add_vocabulary(plan.vocabulary)
        new = np.flatnonzero(plan.slots < 0)
        slots = plan.slots.copy()
        if len(new):
            slots[new] = table.allocate([plan.names[i] for i in new.tolist()])
        old = plan.slots >= 0
        was_placed = table["placed"][plan.slots[old]]
        moved = table["cluster"][plan.slots[old]] != plan.rows["cluster"][np.flatnonzero(old)]
        self._fit_stats.switches += int((was_placed & moved).sum())
        table.scatter(slots, plan.rows)
        table["last_ts"][slots] = plan.last_ts
        self._watermark = plan.watermark
        self._ready += int(plan.ready.sum())

    def absorb(self, events: Sequence[AssetEvent]) -> int:
        """State only: rebuild the assets' state from events another process already valued
        (a partition taken over), so they are valued by the model from their next event.

        Windows, last values, scales, error scales, statistics and cluster placement move as
        in `process`; nothing else does: no valuation comes out, no sample is learned or sent,
        no cluster's error metrics, intervals, expert mix or drift detectors see the events,
        no fit becomes due. Late and duplicate events (already known here) are skipped; an
        event that cannot be planned is skipped too. Returns the events absorbed.
        """
        self.apply_finished_fit()
        absorbed, pos, n = 0, 0, len(events)
        one_by_one = False
        while pos < n:
            stop = pos + 1 if one_by_one else n
            try:
                plan = self._plan(events, pos, stop)
                self._value(plan)  # the error scales of the assets' intervals need valuations
            except Exception:
                if not one_by_one:
                    one_by_one = True
                else:
                    log.warning("event could not be absorbed", extra={"index": pos})
                    pos += 1
                continue
            self._commit_assets(plan)
            absorbed += plan.k
            pos = stop
        self._expire()
        return absorbed

    def _count_dropped(self, plan: _Plan) -> None:
        """Feature values beyond `max_features`: counted per cluster and per name (the first
        `_DROPPED_NAMES` names), each new name warned about once."""
        new: list[str] = []
        for position, name in plan.dropped:
            self._clusters[int(plan.cluster[position])].dropped += 1
            if name in self.dropped_features:
                self.dropped_features[name] += 1
            elif len(self.dropped_features) < _DROPPED_NAMES:
                self.dropped_features[name] = 1
                new.append(name)
        if new:
            log.warning(
                "features beyond engine.max_features are dropped: %s (slots in use: %s)",
                ", ".join(new),
                ", ".join(self._features),
                extra={"dropped": new, "max_features": self.settings.max_features},
            )

    # -- actions: training steps and fits -------------------------------------------------------

    def _act(self, ts: int, learn: bool) -> bool:
        """Run what is due before an event at time `ts` (see `_find_cut`); whether the segment
        must be planned again (a fit moved assets between clusters, or the peers' relative
        scale, which the units use, changed)."""
        if not learn:
            return False
        moved = self._refresh_prior()
        if not self.trainer.background:
            self.trainer.run_due(ts)
        if self._fit_due is not None and self._fit_due != ts:
            return self._fit() or moved
        return moved

    def _refresh_prior(self) -> bool:
        """Re-estimate the peers' relative scale, at most once per eighth of the live assets in
        events (at deterministic points: before a due training step or fit); whether it moved."""
        if self._events_since_prior < max(1, self._assets.n_live // 8):
            return False
        self._events_since_prior = 0
        before, self._prior = self._prior, self._assets.relative_scale()
        return self._prior != before

    def refit(self) -> None:
        """(Re-)fit the clustering now on the assets with `min_history` values; ids stay stable."""
        if self._pending_fit is not None:
            self._apply_pending_fit()
        self._fit(inline=True)

    def _fit(self, *, inline: bool = False) -> bool:
        """(Re-)fit the clustering on the ready assets; whether assets moved now.

        With background training a fit runs in a subprocess of its own and is applied between
        batches once done (`_apply_pending_fit`): a fit of `fit_max_assets` profiles takes
        about a second, which the valuing thread would otherwise stall for (until the first
        fit lands, assets stay in the provisional cluster). Sync training fits inline, at the
        same point of event time however the stream is cut."""
        s = self.settings
        self._events_since_fit = 0
        self._fit_due = None
        if not self.fits_clustering or self._pending_fit is not None:
            return False  # a follower; or a re-fit is running already
        table = self._assets
        live = table.live_slots()
        ready = live[table["n_values"][live] >= s.min_history]
        others = self._others()
        if len(ready) + len(others) < 2 or s.n_clusters == 1:
            return False
        if len(ready) + len(others) > s.fit_max_assets:
            pick = np.sort(
                self._rng.choice(len(ready) + len(others), size=s.fit_max_assets, replace=False)
            )
            others = [others[i - len(ready)] for i in pick[pick >= len(ready)].tolist()]
            ready = ready[pick[pick < len(ready)]]
        previous = self._space
        inputs = self._inputs_of_slots(ready)
        old = table["cluster"][ready].astype(np.int64)
        if others:
            external = self._external_inputs(others)
            if self._clustering.fitted:  # their current cluster, as this process sees them
                theirs = self._clustering.assign_many(previous.transform(external))
            else:
                theirs = np.zeros(len(others), dtype=np.int64)
            inputs = _concat_inputs(inputs, external)
            old = np.concatenate([old, theirs])
        clustering = self._clustering.clone()
        clustering.load_state_dict(self._clustering.state_dict())
        job = FitJob(s.profile_pseudo_count, previous, clustering, inputs, old)
        if self.trainer.background and not inline:
            if not self._clustering.fitted:
                self._pending_rows = (ready.copy(), [table.names[i] for i in ready.tolist()])
            self._pending_fit = self._fitter.submit(job)
            return False
        self._apply_fit(job.run(), ready)
        return True

    @property
    def fits_clustering(self) -> bool:
        """False: this process follows a clustering fitted elsewhere (`adopt_clustering`) and
        never fits its own (scale-out: one clustering per deployment). A process made the
        owner before its first fit starts the fitting subprocess at once."""
        return self._fits_clustering

    @fits_clustering.setter
    def fits_clustering(self, owner: bool) -> None:
        self._fits_clustering = owner
        if self._will_fit():
            self._fitter.start()

    def _will_fit(self) -> bool:
        """Whether this engine is to run its bootstrap fit in the fitting subprocess."""
        return (
            self._fits_clustering
            and self.settings.n_clusters != 1
            and self._trainer is not None
            and self._trainer.background
            and not self._clustering.fitted
            and self._pending_fit is None
        )

    def apply_finished_fit(self) -> bool:
        """Apply a fit that finished in the fitting subprocess, once no training step is in
        flight (the trainer holds off new ones until then: a call later rather than waiting for
        the step); whether one was applied. Each `process()` calls it; the service also between
        polls, for a process whose partitions are quiet."""
        fit_done = self._pending_fit is not None and self._pending_fit.done()
        if fit_done and self.trainer.hold():
            self._apply_pending_fit()  # releases the hold
            return True
        return False

    def _apply_pending_fit(self) -> None:
        """Apply the fit that ran in the fitting subprocess (waits for it if still running); ends a
        `Trainer.hold()` taken for it."""
        pending, self._pending_fit = self._pending_fit, None
        rows, self._pending_rows = self._pending_rows, None
        if pending is None:
            self.trainer.release()
            return
        try:
            self._apply_fitted(pending.result(), rows)
        finally:
            self.trainer.release()

    def _apply_fitted(self, fitted: Fitted, rows: tuple[IntArray, list[str | None]] | None) -> None:
        """A fit from the fitting subprocess; the first one labels the rows it fitted (`rows`)."""
        if rows is None or self._clustering.fitted:
            self._apply_fit(fitted, None)
            return
        slots, names = rows  # the first fit: its labels for the assets still in their slots
        table = self._assets
        keep = np.array(
            [table.names[i] == name for i, name in zip(slots.tolist(), names, strict=True)],
            dtype=bool,
        )
        keep &= table["live"][slots]
        self._apply_fit(fitted, slots, keep)

    def _apply_fit(
        self, fitted: Fitted, ready: IntArray | None, keep: BoolArray | None = None
    ) -> None:
        """Make a fit the clustering in use: clusters added and removed, every live asset
        placed. `ready`: the slots the fit labelled (inline fits, and the first fit from the
        fitting subprocess, whose `keep` marks the slots still holding the same asset); a re-fit
        from the fitting subprocess settles every asset afresh instead."""
        table = self._assets
        live = table.live_slots()
        refit = self._clustering.fitted
        before = table["cluster"][live].astype(np.int64)
        fit = fitted.fit
        self._clustering = fitted.clustering
        self._parents.update(fit.parents)
        self._successors.update(fit.successors)
        with self.trainer.paused():
            for new_id, parent in sorted(fit.parents.items()):
                self._add_cluster(
                    new_id, self.trainer.spawn(parent, self._cluster_seed(new_id)), parent
                )
            for cid in fit.removed:
                self.trainer.remove(cid, fit.successors.get(cid))
                del self._clusters[cid]
        self._space = fitted.space
        profiles = fitted.space.transform(self._inputs_of_slots(live))
        if refit:
            labels = self._clustering.settle(profiles, before)
        else:
            labels = self._clustering.assign_many(profiles)
        if ready is not None:
            fit_labels = fit.labels[: len(ready)]
            if keep is not None:
                ready, fit_labels = ready[keep], fit_labels[keep]
            labels[np.searchsorted(live, ready)] = fit_labels
        table["cluster"][live] = labels
        table["placed"][live] = True
        table["candidate"][live] = -1
        table["streak"][live] = 0
        churn = float((labels != before).mean()) if refit and len(live) else None
        self._fit_stats.record(fit, churn, self._watermark or 0)
        seen = table["seen"][live]
        table["next_check"][live] = seen + np.maximum(1, seen // _RECHECK_GROWTH)

    # -- one clustering for several processes (`streamval.models.shared`) -----------------------

    @property
    def clustering_fits(self) -> int:
        """Fits of this engine's own clustering so far (a new one is worth publishing)."""
        return self._fit_stats.fits

    def export_clustering(self, *, version: int, owner: str) -> SharedClustering | None:
        """The current clustering as data for other processes (None before the first fit)."""
        if not self._clustering.fitted:
            return None
        state = self._clustering.state_dict()
        return SharedClustering(
            version=version,
            owner=owner,
            ids=[int(i) for i in state["ids"]],
            centroids=np.asarray(state["centroids"], dtype=np.float64),
            spread=np.asarray(state["spread"], dtype=np.float64),
            next_id=int(state["next_id"]),
            space=self._space.state_dict(),
            parents=dict(self._parents),
            successors=dict(self._successors),
            created_ms=int(time.time() * 1000),
        )

    def adopt_clustering_if_idle(self, shared: SharedClustering) -> bool:
        """`adopt_clustering` if no training step is in flight; else False, and the trainer
        starts no new step until the next call, which finds it idle (the valuing thread never
        waits for a step: the trainer is niced)."""
        if not self.trainer.hold():
            return False
        try:
            self.adopt_clustering(shared)
        finally:
            self.trainer.release()
        return True

    def adopt_clustering(self, shared: SharedClustering) -> None:
        """Assign assets with a clustering fitted elsewhere, in place of this engine's own.

        New cluster ids start as copies of their nearest known ancestor's model (as after a
        fit), removed ones hand their pending samples to their successor; live assets keep their
        cluster unless another centroid is closer by the switch margin (as after a re-fit), and
        assets still in the provisional cluster go to the nearest centroid.
        """
        self._pending_fit = None  # a re-fit of this engine's own is superseded
        self._pending_rows = None
        self.trainer.release()
        space = shared.profile_space()
        if space.dim != shared.centroids.shape[1]:
            raise ValueError(
                f"clustering v{shared.version}: centroids of {shared.centroids.shape[1]} "
                f"coordinates for a profile space of {space.dim}"
            )
        self._parents.update(shared.parents)
        self._successors.update(shared.successors)
        table = self._assets
        live = table.live_slots()
        before = table["cluster"][live].astype(np.int64)
        placed = table["placed"][live].copy()
        new_ids = [int(i) for i in shared.ids]
        with self.trainer.paused():
            for cid in new_ids:
                if cid not in self._clusters:
                    parent = self._ancestor(cid)
                    learner = self.trainer.spawn(parent, self._cluster_seed(cid))
                    self._add_cluster(cid, learner, parent)
            for cid in [c for c in self._clusters if c not in new_ids]:
                self.trainer.remove(cid, self._heir(cid, new_ids))
                del self._clusters[cid]
        self._clustering.load_state_dict(
            {
                "ids": new_ids,
                "centroids": shared.centroids,
                "spread": shared.spread,
                "dim": int(shared.centroids.shape[1]),
                "next_id": shared.next_id,
                "fitted": True,
            }
        )
        self._space = space
        self.clustering_version = shared.version
        if not len(live):
            return
        profiles = space.transform(self._inputs_of_slots(live))
        settled = self._clustering.settle(profiles, before)
        nearest = self._clustering.assign_many(profiles)
        labels = np.where(placed, settled, nearest)
        table["cluster"][live] = labels
        table["placed"][live] = True
        table["candidate"][live] = -1
        table["streak"][live] = 0

    def ready_counts(self) -> dict[str, int]:
        """Values seen per live asset with at least `min_history` of them (fit material)."""
        table = self._assets
        live = table.live_slots()
        n = table["n_values"][live]
        keep = n >= self.settings.min_history
        return {
            str(table.names[slot]): int(count)
            for slot, count in zip(live[keep].tolist(), n[keep].tolist(), strict=True)
        }

    def asset_profiles(self, assets: Iterable[str], instance: str) -> list[AssetProfile]:
        """The profile material of these live assets, for the profiles topic."""
        table = self._assets
        slots = [table.ids[a] for a in assets if a in table.ids]
        if not slots:
            return []
        index = np.asarray(slots, dtype=np.int64)
        inputs = self._inputs_of_slots(index)
        counts = inputs.counts if inputs.counts is not None else np.zeros_like(inputs.stats)
        n_values = table["n_values"][index]
        features = list(self._features)
        out = []
        for i, slot in enumerate(slots):
            attributes: dict[str, float | str] = {}
            for name, column in inputs.numeric.items():
                if not np.isnan(column[i]):
                    attributes[name] = float(column[i])
            for name, codes in inputs.categorical.items():
                if codes[i] >= 0:
                    attributes[name] = str(inputs.vocabularies[name][int(codes[i])])
            out.append(
                AssetProfile(
                    asset=str(table.names[slot]),
                    instance=instance,
                    n_values=int(n_values[i]),
                    stats=[float(v) for v in inputs.stats[i, :3]],
                    counts=[float(v) for v in counts[i, :3]],
                    features={
                        name: (float(inputs.stats[i, 3 + j]), float(counts[i, 3 + j]))
                        for j, name in enumerate(features)
                        if 3 + j < inputs.stats.shape[1] and counts[i, 3 + j] > 0
                    },
                    attributes=attributes,
                )
            )
        return out

    def bootstrap_shared(self) -> bool:
        """Bootstrap the clustering now if this process fits it, has not yet, and its own and
        the other processes' ready assets together reach `bootstrap_assets` (whether a fit is
        in use or running)."""
        s = self.settings
        if not self.fits_clustering or self._clustering.fitted or s.n_clusters == 1:
            return False
        own = len(self.ready_counts())
        if own >= s.bootstrap_assets or own + len(self._others()) < s.bootstrap_assets:
            return False  # the engine's own schedule does it, or too few assets yet
        self._fit()
        return self._clustering.fitted or self._pending_fit is not None

    def _others(self) -> list[AssetProfile]:
        """Other processes' ready assets that this one does not hold itself."""
        if self.profile_source is None:
            return []
        ids = self._assets.ids
        m = self.settings.min_history
        return [p for p in self.profile_source() if p.n_values >= m and p.asset not in ids]

    def _external_inputs(self, profiles: Sequence[AssetProfile]) -> ProfileInputs:
        """Profile material of other processes' assets, in this engine's feature slots."""
        width = 3 + self._assets.n_features
        stats = np.full((len(profiles), width), np.nan)
        counts = np.zeros((len(profiles), width))
        for i, p in enumerate(profiles):
            stats[i, :3] = p.stats
            counts[i, :3] = p.counts
            for name, (mean, count) in p.features.items():
                j = self._features.get(name)
                if j is not None and 3 + j < width:
                    stats[i, 3 + j] = mean
                    counts[i, 3 + j] = count
        inputs = ProfileInputs.from_records([p.attributes for p in profiles], stats)
        inputs.counts = counts
        return inputs

    def _ancestor(self, cluster: int) -> int:
        """The nearest known ancestor of a new cluster (cluster 0 or the lowest id if none)."""
        seen = {cluster}
        at = self._parents.get(cluster)
        while at is not None and at not in seen:
            if at in self._clusters:
                return at
            seen.add(at)
            at = self._parents.get(at)
        return 0 if 0 in self._clusters else min(self._clusters)

    def _heir(self, cluster: int, ids: list[int]) -> int | None:
        """Where a removed cluster's pending samples go: its successor among `ids`, if any."""
        seen = {cluster}
        at = self._successors.get(cluster)
        while at is not None and at not in seen:
            if at in ids:
                return at
            seen.add(at)
            at = self._successors.get(at)
        return None

    # -- idle assets ----------------------------------------------------------------------------

    def _forget(self, cluster: int, had_history: bool) -> None:
        self.expired_assets += 1
        if cluster in self._clusters:
            self._clusters[cluster].expired += 1
        self._ready -= int(had_history)

    def _expire(self) -> None:
        """Release the slots of assets idle for longer than `asset_ttl` (event time)."""
        ttl = self.settings.asset_ttl
        if not ttl or self._watermark is None:
            return
        table = self._assets
        idle = np.flatnonzero(table["live"] & (table["last_ts"] < self._watermark - ttl))
        if not len(idle):
            return
        had = table["n_values"][idle] >= self.settings.min_history
        for cluster, history in zip(table["cluster"][idle].tolist(), had.tolist(), strict=True):
            self._forget(cluster, history)
        table.release(idle.tolist())

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything learned, as a tree of numbers, strings and arrays (no pickles).

        Consistent with the events processed so far: a background step in flight finishes
        first, and none starts while the state is copied.
        """
        s = self.settings
        with self.trainer.paused():
            return {
                "version": STATE_VERSION,
                "settings": {name: _plain(getattr(s, name)) for name in _SHAPING},
                "rng": rng_state(self._rng),
                "features": list(self._features),
                "dropped_features": dict(self.dropped_features),
                "assets": self._assets.state_dict(),
                "clustering": self._clustering.state_dict(),
                "space": self._space.state_dict(),
                "clusters": {
                    str(cid): {
                        "errors": c.errors.state_dict(),
                        "expired": c.expired,
                        "dropped": c.dropped,
                        "conformal": c.conformal.state_dict(),
                        "shock": c.shock.state_dict(),
                        "mix": c.mix.state_dict(),
                    }
                    for cid, c in self._clusters.items()
                },
                "trainer": self.trainer.state_dict(),
                "shared_learner": self.trainer.shared_state_dict(),
                "pool": self.trainer.pool_state_dict(),
                "counters": {
                    "ready": self._ready,
                    "events_since_fit": self._events_since_fit,
                    "fit_due": self._fit_due,
                    "watermark": self._watermark,
                    "expired_assets": self.expired_assets,
                    "prior": self._prior,
                    "events_since_prior": self._events_since_prior,
                    "spikes": [
                        self.spikes_held,
                        self.spikes_dropped,
                        self.shifts_confirmed,
                        self.shifts_returned,
                    ],
                },
                "fit_stats": self._fit_stats.state_dict(),
            }

    def state_dict_if_idle(self) -> dict[str, Any] | None:
        """The state if no training step is in flight, else None; then the trainer starts no
        new step until the next call, which finds it idle (a checkpoint a batch later rather
        than the valuing thread waiting for a step: the trainer is niced)."""
        if not self.trainer.hold():
            return None
        try:
            return self.state_dict()
        finally:
            self.trainer.release()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; `CheckpointError` on anything it does not expect."""
        s = self.settings
        try:
            version = state.get("version") if isinstance(state, dict) else None
            if version != STATE_VERSION:
                raise CheckpointError(f"engine state version {version!r}, expected {STATE_VERSION}")
            stored = state["settings"]
            wrong = [
                f"{name}={stored.get(name)!r} (settings: {_plain(getattr(s, name))!r})"
                for name in _SHAPING
                if stored.get(name) != _plain(getattr(s, name))
            ]
            if wrong:
                raise CheckpointError(
                    "engine state was taken with other settings: " + ", ".join(wrong)
                )
            self._reset()
            set_rng_state(self._rng, state["rng"])
            self._features = {str(name): i for i, name in enumerate(state["features"])}
            self.dropped_features = {
                str(name): int(n) for name, n in state["dropped_features"].items()
            }
            self._assets.load_state_dict(state["assets"])
            if self._assets.n_features != len(self._features):
                raise ValueError("assets: feature slots do not match the feature names")
            self._clustering.load_state_dict(state["clustering"])
            self._space.load_state_dict(state["space"])
            clusters = sorted(int(c) for c in state["clusters"])
            if clusters != sorted(int(c) for c in state["trainer"]) or not clusters:
                raise ValueError("clusters: the valuing and training sides disagree")
            with self.trainer.paused():
                self.trainer.remove(0, None)
                self._clusters = {}
                for cid in clusters:
                    self._add_cluster(cid, self._new_learner(cid))
                self.trainer.load_shared(state["shared_learner"])
                for cid in clusters:
                    cs = state["clusters"][str(cid)]
                    self._clusters[cid].errors.load_state_dict(cs["errors"])
                    self._clusters[cid].expired = int(cs["expired"])
                    self._clusters[cid].dropped = int(cs["dropped"])
                    self._clusters[cid].conformal.load_state_dict(cs["conformal"])
                    self._clusters[cid].shock.load_state_dict(cs["shock"])
                    self._clusters[cid].mix.load_state_dict(cs["mix"])
                    self.trainer.load_slot(cid, state["trainer"][str(cid)])
                self.trainer.load_pool(state.get("pool"), self._pool_policy())
            counters = state["counters"]
            self._ready = int(counters["ready"])
            self._events_since_fit = int(counters["events_since_fit"])
            self._fit_due = None if counters["fit_due"] is None else int(counters["fit_due"])
            self._watermark = None if counters["watermark"] is None else int(counters["watermark"])
            self.expired_assets = int(counters["expired_assets"])
            self._fit_stats.load_state_dict(state["fit_stats"])
            self._prior = float(counters["prior"])
            self._events_since_prior = int(counters["events_since_prior"])
            held, dropped, confirmed, returned = (int(x) for x in counters["spikes"])
            self.spikes_held, self.spikes_dropped = held, dropped
            self.shifts_confirmed, self.shifts_returned = confirmed, returned
        except CheckpointError:
            self._reset()
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
            self._reset()
            raise CheckpointError(
                f"engine state is not usable: {type(exc).__name__}: {exc}"
            ) from exc
        self.trainer.wake()


@dataclass
class _PlanArrays:
    """Per accepted event of a segment: what the waves computed."""

    cluster: IntArray
    warming: BoolArray
    v_last: FloatArray
    unit: FloatArray
    windows: Float32Array
    targets: FloatArray
    ready: BoolArray

    @classmethod
    def empty(cls, k: int, seq_len: int, max_features: int) -> _PlanArrays:
        return cls(
            cluster=np.zeros(k, dtype=np.int64),
            warming=np.ones(k, dtype=bool),
            v_last=np.full(k, np.nan),
            unit=np.ones(k),
            windows=np.full((k, seq_len, 1 + max_features), np.nan, dtype=np.float32),
            targets=np.full(k, np.nan),
            ready=np.zeros(k, dtype=bool),
        )

    def fill(
        self, sel: IntArray, cluster: NDArray[Any], step: WindowStep, targets: FloatArray
    ) -> None:
        self.cluster[sel] = cluster
        self.warming[sel] = step.warming
        self.v_last[sel] = step.v_last
        self.unit[sel] = step.unit
        model = np.flatnonzero(~step.warming)
        if len(model):
            dest = sel[model]
            self.windows[dest, :, 0] = step.window_values[model]
            f = step.window_feats.shape[2]
            self.windows[dest, :, 1 : 1 + f] = step.window_feats[model]
            self.targets[dest] = targets[model]


def _concat_inputs(a: ProfileInputs, b: ProfileInputs) -> ProfileInputs:
    """Rows of `a` then `b` (same statistics columns), attributes matched by name and
    categories by their strings."""
    n_a, n_b = a.n, b.n
    names = sorted({*a.numeric, *b.numeric, *a.categorical, *b.categorical})
    out = ProfileInputs(stats=np.vstack([a.stats, b.stats]))
    if a.counts is not None or b.counts is not None:
        ca = a.counts if a.counts is not None else np.full_like(a.stats, np.inf)
        cb = b.counts if b.counts is not None else np.full_like(b.stats, np.inf)
        out.counts = np.vstack([ca, cb])
    for name in names:
        na = a.numeric.get(name, np.full(n_a, np.nan))
        nb = b.numeric.get(name, np.full(n_b, np.nan))
        out.numeric[name] = np.concatenate([na, nb])
        if name in a.categorical or name in b.categorical:
            va = list(a.vocabularies.get(name, ()))
            vb = list(b.vocabularies.get(name, ()))
            vocab = sorted({*map(str, va), *map(str, vb)})
            index = {v: i for i, v in enumerate(vocab)}
            codes = np.full(n_a + n_b, -1, dtype=np.int64)
            for offset, src, voc in ((0, a, va), (n_a, b, vb)):
                got = src.categorical.get(name)
                if got is not None and len(voc):
                    lookup = np.array([index[str(v)] for v in voc], dtype=np.int64)
                    has = got >= 0
                    codes[offset + np.flatnonzero(has)] = lookup[got[has]]
            out.categorical[name] = codes
            out.vocabularies[name] = vocab
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
