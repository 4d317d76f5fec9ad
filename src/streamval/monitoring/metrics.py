"""Prometheus metrics of the engine service and of the replay job.

Every metric lives on the `CollectorRegistry` of its `EngineMetrics` / `ReplayMetrics` instance
(not the process-global default registry), so tests and tools can create as many as they like and
a scrape shows exactly one service's series.

Conventions (https://prometheus.io/docs/practices/naming/): names start with `streamval_`, values
are in base units (seconds, not milliseconds), counters end in `_total`, timestamps are
`*_timestamp_seconds` (Unix time). Labels are bounded: `cluster` (a handful of clusters),
`partition` (input partitions owned by this process), `reason` (dead-letter reasons), `detector`
(drift detector kind), `window` (`rolling` or `total`), `kind` (replay marker kind). Never
`asset_id`: one series per asset would grow without bound with the portfolio.

Engine metrics (`EngineMetrics`), name{labels} type: meaning:

    streamval_build_info{version}                      gauge      always 1, carries the version
    streamval_events_consumed_total{partition}         counter    events polled from the input
    streamval_dead_letters_total{reason}               counter    events sent to the DLQ
    streamval_duplicate_events_total                   counter    duplicates dropped
    streamval_valuations_published_total{cluster}      counter    valuations published
    streamval_cluster_mae{cluster,window}              gauge      mean absolute error
    streamval_cluster_rmse{cluster,window}             gauge      root mean squared error
    streamval_cluster_r2{cluster,window}               gauge      coefficient of determination
    streamval_cluster_error_samples{cluster,window}    gauge      labelled events behind them
    streamval_cluster_learning_rate{cluster}           gauge      current optimizer lr
    streamval_cluster_assets{cluster}                  gauge      assets in the cluster
    streamval_cluster_model_version{cluster}           gauge      model version
    streamval_cluster_model_updates_total{cluster}     counter    optimizer steps (engine total)
    streamval_cluster_skipped_samples_total{cluster}   counter    samples a lagging trainer skipped
    streamval_cluster_drift_alarms{cluster}            gauge      alarms in the engine's state
    streamval_drift_alarms_total{cluster,detector}     counter    alarms seen by this process
    streamval_cluster_silhouette{cluster}              gauge      members' mean silhouette, last fit
    streamval_clustering_silhouette                    gauge      silhouette of the last fit
    streamval_clustering_churn_ratio                   gauge      share of assets moved, last re-fit
    streamval_clustering_fits_total                    counter    fits (engine total)
    streamval_clustering_switches_total                counter    assets moved online (engine total)
    streamval_cluster_interval_coverage{cluster}       gauge      share of values inside their
                                                                  prediction interval (rolling)
    streamval_cluster_interval_width{cluster}          gauge      mean interval width, in units
    streamval_cluster_fast_learner{cluster}            gauge      drift response's fast learner:
                                                                  0 none, 1 shadow, 2 served
    streamval_cluster_fast_learners_total{cluster}     counter    fast learners started (engine
                                                                  total)
    streamval_cluster_expert_weight{cluster,expert}    gauge      served weight of persistence,
                                                                  the stable model, the fast one
    streamval_cluster_dropped_feature_values_total{cluster}
                                                       counter    feature values beyond
                                                                  engine.max_features, dropped
    streamval_processing_latency_seconds               histogram  receipt -> valuation acked
    streamval_event_time_lag_seconds                   histogram  wall clock - event time
    streamval_consumer_lag_messages{partition}         gauge      messages behind the log end
    streamval_last_checkpoint_timestamp_seconds        gauge      last checkpoint written
    streamval_batch_duration_seconds                   histogram  time to process one poll
    streamval_batch_events                             histogram  events in one poll
    streamval_broker_reachable                         gauge      0 during a broker outage
    streamval_broker_outages_total                     counter    outages (broker unreachable)
    streamval_consumer_rejoins_total                   counter    consumer re-created, join stuck
    streamval_takeovers_total                          counter    partitions taken over below the
                                                                  committed offset (rebuilt)
    streamval_takeover_records_total                   counter    records re-read to rebuild them
    streamval_takeover_seconds_total                   counter    time spent reading and absorbing
    streamval_broker_outage_seconds_total              counter    time spent in outages
    streamval_send_failures_total{kind}                counter    records that could not be
                                                                  produced (replaced or dropped)
    streamval_dead_letters_truncated_total             counter    DLQ copies cut to fit
    streamval_offset_commit_failures_total             counter    asynchronous commits that failed
    streamval_delivery_retries_total                   counter    batches re-sent after a failure
    streamval_checkpoint_pause_seconds                 histogram  poll loop blocked per checkpoint
    streamval_checkpoint_write_seconds                 histogram  background encode + write
    streamval_checkpoint_bytes                         gauge      size of the last checkpoint
    streamval_checkpoint_failures_total{reason}        counter    checkpoints not written
    streamval_expired_assets_total                     counter    idle assets expired by the engine
    streamval_pooled_model_samples{kind}               gauge      the pooled expert's samples:
                                                                  queued, trained, skipped
    streamval_held_back_partitions                     gauge      partitions paused (ahead in time)
    streamval_buffered_events                          gauge      fetched, waiting for event order
    streamval_instance_info{instance_id,group}         gauge      always 1: this process's id in
                                                                  its consumer group
    streamval_clustering_owner                         gauge      1 while this process fits and
                                                                  publishes the clustering
    streamval_clustering_version                       gauge      shared clustering version in use
    streamval_clusterings_rejected_total{reason}       counter    clusterings-topic messages ignored
    streamval_profiles_rejected_total{reason}          counter    profiles-topic messages ignored

Several processes of one consumer group: each serves its own /metrics, and Prometheus's scrape
label `instance` (the target) tells their series apart, as the alert rules' `by (job, instance)`
do. The metrics carry no `instance` label of their own (a scrape would rename it
`exported_instance`); `streamval_instance_info` maps the target to the group member's id, the one
that keys this process's snapshots on the metrics topic.

Split into valuers and learners (`consumer.role`), a cluster's series come from its owner only:
a valuer's `EngineMetrics(cluster_series=False)` exports none labelled by cluster but
`streamval_valuations_published_total` (its own count), and each learner's `LearnerMetrics`
exports those of the clusters it owns, under the same names.

Replay metrics (`ReplayMetrics`):

    streamval_build_info{version}                      gauge      always 1, carries the version
    streamval_replay_events_produced_total             counter    events produced
    streamval_replay_markers_total{kind}               counter    markers crossed
    streamval_replay_last_marker_event_timestamp_seconds{kind,name}
                                                       gauge      event time of the last marker
    streamval_replay_last_marker_timestamp_seconds{kind,name}
                                                       gauge      wall time it was produced

Example:

    >>> m = EngineMetrics()
    >>> m.consumed(partition=0, n=3)
    >>> m.registry.get_sample_value("streamval_events_consumed_total", {"partition": "0"})
    3.0
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from streamval import __version__
from streamval.config import EngineSettings
from streamval.stream.contract.outputs import (
    ClusteringStats,
    ClusterSnapshot,
    DriftAlarm,
)

__all__ = ["EngineMetrics", "LearnerMetrics", "ReplayMetrics"]

WINDOWS = ("rolling", "total")

# Counters of a cluster retired by a re-fit are kept this long: longer than the widest window of
# the shipped alerts and panels over them (10 minutes), so the alarm that led to the re-fit shows.
RETIRED_TTL_S = 900.0

# Receipt -> acknowledged valuation: a poll of up to 500 records plus a producer round trip is
# milliseconds to a few seconds; past 30 s the poll loop is in trouble anyway.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Wall clock minus event time: seconds when live, but a replay of 2015-2022 history is years
# behind, and the histogram must still say how far (1 s ... 20 years).
_DAY = 86_400.0
EVENT_LAG_BUCKETS = (
    1.0,
    10.0,
    60.0,
    600.0,
    3_600.0,
    6 * 3_600.0,
    _DAY,
    7 * _DAY,
    30 * _DAY,
    365 * _DAY,
    2 * 365 * _DAY,
    5 * 365 * _DAY,
    10 * 365 * _DAY,
    20 * 365 * _DAY,
)

BATCH_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Up to consumer.max_poll_records (500 by default) and a little beyond for raised settings.
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
# The loop may be blocked about 50 ms per checkpoint (state copy); writes take longer, off it.
CHECKPOINT_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CHECKPOINT_WRITE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# The detector kinds the engine can be configured with. Drift counters are created at 0 for
# these as soon as a cluster appears, because Prometheus' increase() cannot see the first
# increment of a series that is born at 1: without this the first alarm of a cluster would
# never show on the dashboard nor fire the per-cluster alert.
KNOWN_DETECTORS: tuple[str, ...] = tuple(
    typing.get_args(EngineSettings.model_fields["detector"].annotation)
)


def _register_info(registry: CollectorRegistry, version: str) -> None:
    info = Info(
        "streamval_build", "streamval build information; the value is always 1.", registry=registry
    )
    info.info({"version": version})


class _ClusterSeries:
    """The per-cluster series an engine (`--role all`) and a learner both export, under the
    same names and definitions, so a dashboard reads the same whichever computed them. The
    caller holds its lock around every method."""

    def __init__(self, r: CollectorRegistry, retired_ttl_s: float) -> None:
        self.retired_ttl_s = retired_ttl_s
        self.mae = Gauge(
            "streamval_cluster_mae",
            "Mean absolute error of the cluster's valuations, in the assets' value unit; "
            "window=rolling: the last engine.metrics_window labelled events, total: since start.",
            ["cluster", "window"],
            registry=r,
        )
        self.rmse = Gauge(
            "streamval_cluster_rmse",
            "Root mean squared error of the cluster's valuations, in the assets' value unit.",
            ["cluster", "window"],
            registry=r,
        )
        self.r2 = Gauge(
            "streamval_cluster_r2",
            "Coefficient of determination (R2) of the cluster's valuations.",
            ["cluster", "window"],
            registry=r,
        )
        self.samples = Gauge(
            "streamval_cluster_error_samples",
            "Labelled events behind the cluster's error metrics of the same window.",
            ["cluster", "window"],
            registry=r,
        )
        self.lr = Gauge(
            "streamval_cluster_learning_rate",
            "Current learning rate of the cluster's model (boosted on drift, then decaying).",
            ["cluster"],
            registry=r,
        )
        self.assets = Gauge(
            "streamval_cluster_assets",
            "Assets currently assigned to the cluster (at a learner: the valuers' latest counts, "
            "summed).",
            ["cluster"],
            registry=r,
        )
        self.model_version = Gauge(
            "streamval_cluster_model_version",
            "Version of the cluster's model (increases as it learns).",
            ["cluster"],
            registry=r,
        )
        self.updates = Counter(
            "streamval_cluster_model_updates",
            "Optimizer steps of the cluster's model, mirrored from the model's own count "
            "(restored from checkpoints or the models topic, so it continues across restarts "
            "and owners).",
            ["cluster"],
            registry=r,
        )
        self.skipped = Counter(
            "streamval_cluster_skipped_samples",
            "Labelled samples the cluster's trainer skipped because it fell behind (overload), "
            "mirrored from the trainer's own count; 0 while every sample is learned from.",
            ["cluster"],
            registry=r,
        )
        self.alarms = Gauge(
            "streamval_cluster_drift_alarms",
            "Drift alarms of the cluster in the engine's or learner's state (restored with "
            "it); for rates use streamval_drift_alarms_total.",
            ["cluster"],
            registry=r,
        )
        self.drift = Counter(
            "streamval_drift_alarms",
            "Drift alarms raised while this process ran, by cluster and detector.",
            ["cluster", "detector"],
            registry=r,
        )
        self.detectors: set[str] = set(KNOWN_DETECTORS)
        self.clusters: set[str] = set()
        self.retired: dict[str, float] = {}  # cluster -> time.monotonic() of its retirement
        self._update_totals: dict[str, float] = {}
        self._skipped_totals: dict[str, float] = {}

    def drift_alarm(self, alarm: DriftAlarm) -> None:
        cluster, detector = str(alarm.cluster), alarm.detector
        if detector not in self.detectors:
            self.detectors.add(detector)
            for known in self.clusters:
                self.drift.labels(known, detector)
        self.clusters.add(cluster)
        self.drift.labels(cluster, detector).inc()

    def set(self, snap: ClusterSnapshot) -> None:
        """The cluster's series from its latest snapshot. Error metrics a window does not have
        yet (no labelled event) are removed rather than exported as NaN, so panels show a gap
        and alerts see no value."""
        cluster = str(snap.cluster)
        self.retired.pop(cluster, None)
        self.clusters.add(cluster)
        for detector in self.detectors:
            self.drift.labels(cluster, detector)  # born at 0, see KNOWN_DETECTORS
        for window, stats in zip(WINDOWS, (snap.rolling, snap.total), strict=True):
            self.samples.labels(cluster, window).set(stats.n)
            for metric, value in (
                (self.mae, stats.mae),
                (self.rmse, stats.rmse),
                (self.r2, stats.r2),
            ):
                _set_or_remove(metric, value, cluster, window)
        self.lr.labels(cluster).set(snap.lr)
        self.assets.labels(cluster).set(snap.assets)
        self.model_version.labels(cluster).set(snap.model_version)
        self.alarms.labels(cluster).set(snap.drift_alarms)
        _mirror(self.updates, self._update_totals, cluster, snap.updates)
        _mirror(self.skipped, self._skipped_totals, cluster, snap.skipped_samples)

    def retire(self, cluster: str, now: float) -> None:
        """The cluster's gauges go now; its counters after `retired_ttl_s` (`sweep`)."""
        self.clusters.discard(cluster)
        self.retired.setdefault(cluster, now)
        for metric in (self.mae, self.rmse, self.r2, self.samples):
            for window in WINDOWS:
                _remove(metric, cluster, window)
        for single in (self.lr, self.assets, self.model_version, self.alarms):
            _remove(single, cluster)

    def sweep(self, now: float) -> list[str]:
        """Remove the counters of clusters retired more than `retired_ttl_s` ago; those
        clusters (for the caller's own per-cluster counters)."""
        gone = []
        for cluster, since in list(self.retired.items()):
            if now - since < self.retired_ttl_s:
                continue
            del self.retired[cluster]
            self._update_totals.pop(cluster, None)
            self._skipped_totals.pop(cluster, None)
            _remove(self.updates, cluster)
            _remove(self.skipped, cluster)
            for detector in self.detectors:
                _remove(self.drift, cluster, detector)
            gone.append(cluster)
        return gone


class EngineMetrics:
    """The engine service's metrics on their own registry.

    The consumer calls one method per fact it observes; all methods are thread-safe (the poll
    loop and the metrics server run on different threads) and cheap (no allocation per event
    beyond prometheus_client's own). Cluster-labelled gauges follow `update_clusters`; clusters
    that no longer exist are retired with `retire_clusters` (gauges at once, counters after
    `retired_ttl_s`), partition-labelled series of partitions handed to another consumer are
    removed with `partitions_revoked`.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = __version__,
        retired_ttl_s: float = RETIRED_TTL_S,
        cluster_series: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.version = version
        # False in a valuer (`--role valuer`): the clusters' owners (learners) export the
        # cluster-labelled series; a valuer keeps only valuations_published{cluster}.
        self.cluster_series = cluster_series
        self.retired_ttl_s = retired_ttl_s
        self._lock = threading.Lock()
        r = self.registry
        _register_info(r, version)
        self._consumed = Counter(
            "streamval_events_consumed",
            "Events polled from the input topic, valid or not, by partition.",
            ["partition"],
            registry=r,
        )
        self._dead_letters = Counter(
            "streamval_dead_letters",
            "Events sent to the dead-letter topic, by reason (invalid, late, ...).",
            ["reason"],
            registry=r,
        )
        self._duplicates = Counter(
            "streamval_duplicate_events",
            "Events dropped because their asset_id and ts repeat the asset's last event.",
            registry=r,
        )
        self._published = Counter(
            "streamval_valuations_published",
            "Valuations published to the valuations topic, by cluster.",
            ["cluster"],
            registry=r,
        )
        self._series = _ClusterSeries(r, retired_ttl_s)
        self._latency = Histogram(
            "streamval_processing_latency_seconds",
            "Time from receiving an event to its valuation being acknowledged by Kafka.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._event_lag = Histogram(
            "streamval_event_time_lag_seconds",
            "Wall clock minus event time when an event is valued (years in a historical replay).",
            buckets=EVENT_LAG_BUCKETS,
            registry=r,
        )
        self._consumer_lag = Gauge(
            "streamval_consumer_lag_messages",
            "Messages between the consumer's position and the end of the partition.",
            ["partition"],
            registry=r,
        )
        self._checkpoint = Gauge(
            "streamval_last_checkpoint_timestamp_seconds",
            "Unix time of the last engine checkpoint written (alert on time() minus it).",
            registry=r,
        )
        self._batch_duration = Histogram(
            "streamval_batch_duration_seconds",
            "Time to process one polled batch: engine, publish and commit.",
            buckets=BATCH_DURATION_BUCKETS,
            registry=r,
        )
        self._batch_size = Histogram(
            "streamval_batch_events",
            "Events in one polled batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self._reachable = Gauge(
            "streamval_broker_reachable",
            "1 while the Kafka cluster answers, 0 during an outage (the loop retries with "
            "backoff up to consumer.outage_timeout_s, then exits).",
            registry=r,
        )
        self._reachable.set(1)
        self._outages = Counter(
            "streamval_broker_outages",
            "Times the Kafka cluster became unreachable.",
            registry=r,
        )
        self._rejoins = Counter(
            "streamval_consumer_rejoins",
            "Times the consumer was re-created because it stayed without partitions for "
            "consumer.rejoin_after_s (a group join that never completed).",
            registry=r,
        )
        self._takeovers = Counter(
            "streamval_takeovers",
            "Takeover reads: partitions assigned below the group's committed offset without "
            "a checkpoint covering them, whose assets were rebuilt from the records before it "
            "(consumer.takeover_lookback).",
            registry=r,
        )
        self._takeover_records = Counter(
            "streamval_takeover_records",
            "Input records re-read by takeover reads (absorbed into the assets' state, not "
            "valued again).",
            registry=r,
        )
        self._takeover_seconds = Counter(
            "streamval_takeover_seconds",
            "Seconds the poll loop spent in takeover reads (read, parse, absorb).",
            registry=r,
        )
        self._outage_seconds = Counter(
            "streamval_broker_outage_seconds",
            "Seconds spent in broker outages that ended.",
            registry=r,
        )
        self._send_failures = Counter(
            "streamval_send_failures",
            "Output records that could not be produced for good, by kind: a valuation's input "
            "record goes to the DLQ (send_failed), a dead letter is resent minimal, a metrics "
            "record or a valuer's training sample is dropped.",
            ["kind"],
            registry=r,
        )
        self._truncated = Counter(
            "streamval_dead_letters_truncated",
            "Dead-letter copies cut to fit (header error.truncated).",
            registry=r,
        )
        self._commit_failures = Counter(
            "streamval_offset_commit_failures",
            "Asynchronous offset commits that failed (the next commit covers them).",
            registry=r,
        )
        self._retries = Counter(
            "streamval_delivery_retries",
            "Times outputs were sent again after the broker could not be reached.",
            registry=r,
        )
        self._ckpt_pause = Histogram(
            "streamval_checkpoint_pause_seconds",
            "Time the poll loop spent taking the engine state for a checkpoint.",
            buckets=CHECKPOINT_PAUSE_BUCKETS,
            registry=r,
        )
        self._ckpt_write = Histogram(
            "streamval_checkpoint_write_seconds",
            "Time to encode and write a checkpoint on the background writer.",
            buckets=CHECKPOINT_WRITE_BUCKETS,
            registry=r,
        )
        self._ckpt_bytes = Gauge(
            "streamval_checkpoint_bytes", "Size of the last checkpoint written.", registry=r
        )
        self._ckpt_failures = Counter(
            "streamval_checkpoint_failures",
            "Checkpoints not written, by reason (io: the disk; not_data: a bug).",
            ["reason"],
            registry=r,
        )
        self._expired = Counter(
            "streamval_expired_assets",
            "Idle assets expired by the engine (engine.asset_ttl), their state freed.",
            registry=r,
        )
        self._pooled = Gauge(
            "streamval_pooled_model_samples",
            "Samples of the pooled expert (engine.pooled_expert) since it started, restored "
            "with checkpoints: queued, trained, and skipped by a lagging trainer (overload); "
            "absent while there is no pooled model.",
            ["kind"],
            registry=r,
        )
        self._held_back = Gauge(
            "streamval_held_back_partitions",
            "Input partitions paused because they are ahead in event time of the others.",
            registry=r,
        )
        self._buffered = Gauge(
            "streamval_buffered_events",
            "Events fetched and waiting to be released in event-time order.",
            registry=r,
        )
        # Born at 0, so increase() in alerts sees the first failure of each kind.
        for kind in ("valuation", "dead_letter", "metrics"):
            self._send_failures.labels(kind)
        for reason in ("io", "not_data"):
            self._ckpt_failures.labels(reason)
        self._delivery_seen: dict[str, float] = {}
        # -- scale-out: who this process is, and the deployment's shared clustering --
        self._instance = Info(
            "streamval_instance", "This process's id in its consumer group.", registry=r
        )
        self._clustering_owner = Gauge(
            "streamval_clustering_owner",
            "1 while this process owns the clustering (assigned input partition 0): it fits and "
            "publishes it; 0 while it follows the published one.",
            registry=r,
        )
        self._clustering_version = Gauge(
            "streamval_clustering_version",
            "Version of the shared clustering in use (0: none yet).",
            registry=r,
        )
        self._clusterings_rejected = Counter(
            "streamval_clusterings_rejected",
            "Messages on the clusterings topic ignored, by reason (invalid: not a clustering; "
            "unusable: a clustering this engine cannot use).",
            ["reason"],
            registry=r,
        )
        for reason in ("invalid", "unusable"):
            self._clusterings_rejected.labels(reason)
        self._profiles_rejected = Counter(
            "streamval_profiles_rejected",
            "Messages on the profiles topic ignored, by reason (invalid: not a profile).",
            ["reason"],
            registry=r,
        )
        self._profiles_rejected.labels("invalid")
        # The clustering (from the snapshots' `silhouette` and `clustering`; engine totals).
        self._silhouette = Gauge(
            "streamval_cluster_silhouette",
            "Mean silhouette of the cluster's members at the last clustering fit.",
            ["cluster"],
            registry=r,
        )
        self._fit_silhouette = Gauge(
            "streamval_clustering_silhouette",
            "Silhouette of the last clustering fit, in its profile space.",
            registry=r,
        )
        self._churn = Gauge(
            "streamval_clustering_churn_ratio",
            "Share of the assets that changed cluster at the last re-fit (0..1).",
            registry=r,
        )
        self._fits = Counter(
            "streamval_clustering_fits",
            "Clustering fits (bootstrap and re-fits), mirrored from the engine's own count.",
            registry=r,
        )
        self._switches = Counter(
            "streamval_clustering_switches",
            "Assets that changed cluster online (hysteresis satisfied), mirrored from the engine.",
            registry=r,
        )
        self._clustering_totals: dict[str, float] = {}
        # -- prediction intervals and dropped features (from the cluster snapshots) --
        self._interval_coverage = Gauge(
            "streamval_cluster_interval_coverage",
            "Share of the cluster's last engine.metrics_window labelled values inside their "
            "prediction interval (target: engine.interval_coverage).",
            ["cluster"],
            registry=r,
        )
        self._interval_width = Gauge(
            "streamval_cluster_interval_width",
            "Mean width (upper - lower) of those intervals, in each asset's unit (its robust "
            "mean absolute change).",
            ["cluster"],
            registry=r,
        )
        self._fast = Gauge(
            "streamval_cluster_fast_learner",
            "The cluster's fast learner (drift_response = fast_learner): 0 none, 1 in shadow "
            "(scored, not served), 2 served (it won its shadow test).",
            ["cluster"],
            registry=r,
        )
        self._fast_started = Counter(
            "streamval_cluster_fast_learners",
            "Fast learners started on shock alarms, mirrored from the engine.",
            ["cluster"],
            registry=r,
        )
        self._fast_totals: dict[str, float] = {}
        self._expert_weight = Gauge(
            "streamval_cluster_expert_weight",
            "Served weight of each expert in the cluster's combination (persistence, the "
            "stable model, the fast learner); they sum to 1.",
            ["cluster", "expert"],
            registry=r,
        )
        self._dropped_features = Counter(
            "streamval_cluster_dropped_feature_values",
            "Feature values of the cluster's events dropped because their names came after "
            "engine.max_features slots were in use (the names are logged once).",
            ["cluster"],
            registry=r,
        )
        self._dropped_totals: dict[str, float] = {}

    # -- the input side ---------------------------------------------------------------------

    def consumed(self, partition: int, n: int = 1) -> None:
        """`n` events were polled from input partition `partition`."""
        self._consumed.labels(str(partition)).inc(n)

    def dead_lettered(self, reason: str, n: int = 1) -> None:
        """`n` events went to the dead-letter topic for `reason` (a short fixed code)."""
        self._dead_letters.labels(reason).inc(n)

    def duplicates(self, n: int = 1) -> None:
        """`n` duplicate events were dropped."""
        self._duplicates.inc(n)

    def consumer_lag(self, partition: int, lag: int) -> None:
        """The consumer is `lag` messages behind the end of `partition`."""
        self._consumer_lag.labels(str(partition)).set(max(lag, 0))

    def sends_samples(self) -> None:
        """A valuer: its `sample` send failures are born at 0 too (see the other kinds)."""
        self._send_failures.labels("sample")

    def identify(self, instance: str, group: str) -> None:
        """This process's id in its consumer group (`streamval_instance_info`)."""
        self._instance.info({"instance_id": instance, "group": group})

    def clustering_owner(self, owner: bool) -> None:
        """This process started (True) or stopped owning the deployment's clustering."""
        self._clustering_owner.set(1 if owner else 0)

    def clustering_adopted(self, version: int) -> None:
        """The clustering in use is now `version` (adopted or published)."""
        self._clustering_version.set(version)

    def clustering_rejected(self, reason: str) -> None:
        """A message on the clusterings topic was ignored (`invalid` or `unusable`)."""
        self._clusterings_rejected.labels(reason).inc()

    def profile_rejected(self, reason: str) -> None:
        """A message on the profiles topic was ignored (`invalid`)."""
        self._profiles_rejected.labels(reason).inc()

    def consumer_rejoined(self) -> None:
        """The service re-created its consumer after a group join that never completed."""
        self._rejoins.inc()

    def took_over(self, records: int, seconds: float) -> None:
        """A takeover read rebuilt taken-over partitions' assets from `records` records."""
        self._takeovers.inc()
        self._takeover_records.inc(records)
        self._takeover_seconds.inc(seconds)

    def partitions_revoked(self, partitions: Iterable[int]) -> None:
        """Drop the series of partitions this process no longer owns (after a rebalance).

        Another consumer of the group reports them now; keeping ours would freeze a stale lag
        and double the group's lag in a `sum()`.
        """
        for partition in partitions:
            label = str(partition)
            _remove(self._consumed, label)
            _remove(self._consumer_lag, label)

    # -- the output side --------------------------------------------------------------------

    def published(self, cluster: int, n: int = 1) -> None:
        """`n` valuations of assets in `cluster` were published."""
        self._published.labels(str(cluster)).inc(n)

    def drift_alarm(self, alarm: DriftAlarm) -> None:
        """A drift detector fired on `alarm.cluster` (ignored without `cluster_series`)."""
        if not self.cluster_series:
            return
        with self._lock:
            self._series.drift_alarm(alarm)

    def update_clusters(self, snapshots: Sequence[ClusterSnapshot]) -> None:
        """Set the per-cluster gauges from the engine's latest snapshots.

        Error metrics a window does not have yet (no labelled event) are removed rather than
        exported as NaN, so panels show a gap and alerts see no value.
        """
        with self._lock:
            self._sweep_retired()
            for snap in snapshots:
                cluster = str(snap.cluster)
                self._published.labels(cluster)
                if not self.cluster_series:
                    self._series.retired.pop(cluster, None)
                    continue
                self._series.set(snap)
                _set_or_remove(self._silhouette, snap.silhouette, cluster)
                self._set_intervals(cluster, snap)
                self._fast.labels(cluster).set(_FAST_STATES.get(snap.fast_learner, 0))
                _mirror(self._fast_started, self._fast_totals, cluster, snap.fast_learners)
                for expert, weight in snap.expert_weights.items():
                    self._expert_weight.labels(cluster, expert).set(weight)
            if snapshots:
                self._update_clustering(snapshots[0].clustering)

    def _update_clustering(self, stats: ClusteringStats) -> None:
        """The clustering-wide series (lock held)."""
        _set_or_remove(self._fit_silhouette, stats.silhouette)
        _set_or_remove(self._churn, stats.churn)
        for name, counter, total in (
            ("fits", self._fits, stats.fits),
            ("switches", self._switches, stats.switches),
        ):
            previous = self._clustering_totals.get(name, 0.0)
            if total < previous:  # restored from an older checkpoint: a counter reset
                counter.reset()
                previous = 0.0
            counter.inc(total - previous)
            self._clustering_totals[name] = total

    def retire_clusters(self, clusters: Iterable[int]) -> None:
        """Clusters that no longer exist (retired by a re-fit): drop their gauges now, their
        counters after `retired_ttl_s`.

        A gauge of a cluster that is gone would freeze its last value. Its counters stay a while,
        so Prometheus scrapes their final values and `increase()` in alerts and dashboards still
        sees the drift alarm that led to the re-fit, which happens in the same batch.
        """
        now = time.monotonic()
        with self._lock:
            for cluster in (str(c) for c in clusters):
                self._series.retire(cluster, now)
                for single in (
                    self._silhouette,
                    self._interval_coverage,
                    self._interval_width,
                    self._fast,
                ):
                    _remove(single, cluster)
                for expert in EXPERTS:
                    _remove(self._expert_weight, cluster, expert)
            self._sweep_retired(now)

    def _sweep_retired(self, now: float | None = None) -> None:
        """Remove the counters of clusters retired more than `retired_ttl_s` ago (lock held)."""
        for cluster in self._series.sweep(time.monotonic() if now is None else now):
            self._dropped_totals.pop(cluster, None)
            self._fast_totals.pop(cluster, None)
            _remove(self._dropped_features, cluster)
            _remove(self._fast_started, cluster)
            _remove(self._published, cluster)

    def processing_latency(self, seconds: float) -> None:
        """One event took `seconds` from receipt to its valuation being acknowledged."""
        self._latency.observe(max(seconds, 0.0))

    def event_time_lag(self, seconds: float) -> None:
        """An event was valued `seconds` after its event time (negative clock skew counts as 0)."""
        self._event_lag.observe(max(seconds, 0.0))

    def checkpoint_written(
        self, unix_time: float | None = None, seconds: float | None = None, size: int | None = None
    ) -> None:
        """A checkpoint taken at `unix_time` (default: now) was written in `seconds`."""
        self._checkpoint.set(time.time() if unix_time is None else unix_time)
        if seconds is not None:
            self._ckpt_write.observe(max(seconds, 0.0))
        if size is not None:
            self._ckpt_bytes.set(size)

    def checkpoint_pause(self, seconds: float) -> None:
        """The poll loop was blocked `seconds` taking a checkpoint's state."""
        self._ckpt_pause.observe(max(seconds, 0.0))

    def checkpoint_failed(self, reason: str) -> None:
        """A checkpoint could not be written (`io` or `not_data`)."""
        self._ckpt_failures.labels(reason).inc()

    def outage_started(self) -> None:
        """The Kafka cluster became unreachable."""
        self._outages.inc()
        self._reachable.set(0)

    def outage_ended(self, seconds: float) -> None:
        """The Kafka cluster answers again after `seconds`."""
        self._outage_seconds.inc(max(seconds, 0.0))
        self._reachable.set(1)

    def assets_expired(self, n: int) -> None:
        """The engine expired `n` idle assets."""
        self._expired.inc(n)

    def pooled_model(self, queued: int, trained: int, skipped: int) -> None:
        """The pooled expert's sample counts (`Engine.pooled_samples`)."""
        for kind, n in (("queued", queued), ("trained", trained), ("skipped", skipped)):
            self._pooled.labels(kind).set(n)

    def held_back(self, partitions: int, buffered: int) -> None:
        """`partitions` are paused for event-time order; `buffered` events wait."""
        self._held_back.set(partitions)
        self._buffered.set(buffered)

    def delivery(self, stats: Any) -> None:
        """Mirror the delivery's running totals (send failures, truncations, commits, retries)."""
        with self._lock:
            totals = {f"send:{k}": float(v) for k, v in stats.send_failures.items()}
            totals["truncated"] = float(stats.truncated)
            totals["commit"] = float(stats.commit_failures)
            totals["retries"] = float(stats.retries)
            for key, total in totals.items():
                delta = total - self._delivery_seen.get(key, 0.0)
                if delta <= 0:
                    continue
                self._delivery_seen[key] = total
                if key.startswith("send:"):
                    self._send_failures.labels(key[5:]).inc(delta)
                elif key == "truncated":
                    self._truncated.inc(delta)
                elif key == "commit":
                    self._commit_failures.inc(delta)
                else:
                    self._retries.inc(delta)

    def batch(self, seconds: float, size: int) -> None:
        """One poll's batch of `size` events took `seconds` to process."""
        self._batch_duration.observe(max(seconds, 0.0))
        self._batch_size.observe(size)

    # -- helpers ----------------------------------------------------------------------------

    def _set_intervals(self, cluster: str, snap: ClusterSnapshot) -> None:
        """Interval gauges (removed while the cluster has none) and the dropped-features count."""
        for metric, value in (
            (self._interval_coverage, snap.interval_coverage),
            (self._interval_width, snap.interval_width),
        ):
            if value is None:
                _remove(metric, cluster)
            else:
                metric.labels(cluster).set(value)
        _mirror(self._dropped_features, self._dropped_totals, cluster, snap.dropped_feature_values)


class LearnerMetrics:
    """A learner's metrics (`--role learner`) on their own registry: the per-cluster series of
    the clusters it owns, under the engine's names and definitions (a dashboard reads the same
    whichever role computed them), and the learner process's own.

    Per cluster (as `EngineMetrics`): streamval_cluster_{mae,rmse,r2,error_samples}{cluster,
    window}, streamval_cluster_{learning_rate,assets,model_version,drift_alarms}{cluster},
    streamval_cluster_{model_updates,skipped_samples}_total{cluster},
    streamval_drift_alarms_total{cluster,detector}. Per process:

        streamval_learner_samples_received_total          counter  samples read, in blocks
        streamval_learner_samples_trained_total           counter  samples trained
        streamval_learner_training_steps_total            counter  optimizer steps
        streamval_learner_models_published_total          counter  model snapshots acked
        streamval_learner_records_rejected_total{reason}  counter  records that are no block
        streamval_learner_late_events_total               counter  scored events of a step
                                                                   already judged (metrics
                                                                   only, not detection)
        streamval_learner_lag_messages{partition}         gauge    training-samples backlog
        streamval_learner_clusters                        gauge    clusters owned now

    A cluster that moves to another learner is retired here (`retire_clusters`, as the engine
    does after a re-fit), so one cluster's gauges come from one process at a time.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = __version__,
        retired_ttl_s: float = RETIRED_TTL_S,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.retired_ttl_s = retired_ttl_s
        self._lock = threading.Lock()
        r = self.registry
        _register_info(r, version)
        self._instance = Info(
            "streamval_instance", "This process's id in its consumer group.", registry=r
        )
        self._series = _ClusterSeries(r, retired_ttl_s)
        self._received = Counter(
            "streamval_learner_samples_received",
            "Training samples read from the training-samples topic.",
            registry=r,
        )
        self._trained = Counter(
            "streamval_learner_samples_trained", "Training samples trained.", registry=r
        )
        self._steps = Counter(
            "streamval_learner_training_steps",
            "Optimizer steps taken by this learner, all clusters.",
            registry=r,
        )
        self._published = Counter(
            "streamval_learner_models_published",
            "Model snapshots published on the models topic and acknowledged.",
            registry=r,
        )
        self._rejected = Counter(
            "streamval_learner_records_rejected",
            "Training-samples records ignored, by reason (signature, version, shape, ...).",
            ["reason"],
            registry=r,
        )
        self._late = Counter(
            "streamval_learner_late_events",
            "Scored events of an event-time step the cluster's detector had judged already.",
            registry=r,
        )
        self._lag = Gauge(
            "streamval_learner_lag_messages",
            "Records behind the end of each training-samples partition this learner owns.",
            ["partition"],
            registry=r,
        )
        self._clusters_owned = Gauge(
            "streamval_learner_clusters", "Clusters this learner owns now.", registry=r
        )

    def identify(self, instance: str, group: str) -> None:
        """This process's id in its consumer group (`streamval_instance_info`)."""
        self._instance.info({"instance_id": instance, "group": group})

    def received(self, n: int) -> None:
        self._received.inc(n)

    def trained(self, samples: int, steps: int = 1) -> None:
        self._trained.inc(samples)
        self._steps.inc(steps)

    def published(self, n: int) -> None:
        self._published.inc(n)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()

    def late(self, n: int) -> None:
        self._late.inc(n)

    def lag(self, partition: int, lag: int) -> None:
        self._lag.labels(str(partition)).set(max(lag, 0))

    def partitions_revoked(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            _remove(self._lag, str(partition))

    def drift_alarm(self, alarm: DriftAlarm) -> None:
        """A drift detector fired on `alarm.cluster`."""
        with self._lock:
            self._series.drift_alarm(alarm)

    def update_clusters(self, snapshots: Sequence[ClusterSnapshot]) -> None:
        """Set the owned clusters' series from their snapshots (see `EngineMetrics`)."""
        with self._lock:
            self._series.sweep(time.monotonic())
            for snap in snapshots:
                self._series.set(snap)
            self._clusters_owned.set(len(self._series.clusters))

    def retire_clusters(self, clusters: Iterable[int]) -> None:
        """Clusters no longer owned here (moved, or retired by a re-fit): gauges now, counters
        after `retired_ttl_s` (as `EngineMetrics.retire_clusters`)."""
        now = time.monotonic()
        with self._lock:
            for cluster in clusters:
                self._series.retire(str(cluster), now)
            self._clusters_owned.set(len(self._series.clusters))
            self._series.sweep(now)


class ReplayMetrics:
    """The replay job's metrics: events produced and the markers of real events it crossed.

    A marker is a named real-world event inside the replayed history (a policy rate change, a
    crash). Grafana draws the markers as annotations at the wall-clock time the replay crossed
    them, from `streamval_replay_last_marker_timestamp_seconds`, whose `name` label carries the
    text. Only the last marker of each kind keeps a series, so the series count stays bounded by
    the number of kinds however many markers a history holds.

    >>> m = ReplayMetrics()
    >>> m.marker("Fed +25bp", kind="policy", event_ts_ms=1_647_388_800_000)
    >>> m.registry.get_sample_value("streamval_replay_markers_total", {"kind": "policy"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._lock = threading.Lock()
        _register_info(r, __version__)
        self._produced = Counter(
            "streamval_replay_events_produced",
            "Events produced into the input topic by the replay.",
            registry=r,
        )
        self._markers = Counter(
            "streamval_replay_markers",
            "Markers of real events crossed by the replay, by kind.",
            ["kind"],
            registry=r,
        )
        self._marker_event_time = Gauge(
            "streamval_replay_last_marker_event_timestamp_seconds",
            "Event time (in the replayed history) of the last marker of each kind, named by name.",
            ["kind", "name"],
            registry=r,
        )
        self._marker_wall_time = Gauge(
            "streamval_replay_last_marker_timestamp_seconds",
            "Wall-clock Unix time at which the replay produced the last marker of each kind.",
            ["kind", "name"],
            registry=r,
        )
        self._last_name: dict[str, str] = {}

    def produced(self, n: int = 1) -> None:
        """`n` events were produced."""
        self._produced.inc(n)

    def marker(self, name: str, kind: str, event_ts_ms: int) -> None:
        """The replay reached the marker `name` of `kind`, dated `event_ts_ms` in the history."""
        with self._lock:
            previous = self._last_name.get(kind)
            if previous is not None and previous != name:
                _remove(self._marker_event_time, kind, previous)
                _remove(self._marker_wall_time, kind, previous)
            self._last_name[kind] = name
            self._marker_event_time.labels(kind, name).set(event_ts_ms / 1000.0)
            self._marker_wall_time.labels(kind, name).set(time.time())
            self._markers.labels(kind).inc()


# The experts of a cluster's combination (models/experts.py), the `expert` label's values.
EXPERTS = ("persistence", "stable", "fast", "pooled")
# streamval_cluster_fast_learner's values.
_FAST_STATES = {"none": 0, "shadow": 1, "served": 2}


def _mirror(counter: Counter, totals: dict[str, float], cluster: str, total: int) -> None:
    """Make a per-cluster counter equal the owner's total (a counter cannot be set)."""
    previous = totals.get(cluster)
    if previous is not None and total < previous:
        # The count went back (restored from an older checkpoint): restart the series, which
        # Prometheus reads as an ordinary counter reset.
        _remove(counter, cluster)
        previous = None
    counter.labels(cluster).inc(total - (previous or 0))
    totals[cluster] = total


def _set_or_remove(gauge: Gauge, value: float | None, *labels: str) -> None:
    """Set a gauge, or drop it while there is no value (a panel shows a gap, not NaN)."""
    if value is not None:
        (gauge.labels(*labels) if labels else gauge).set(value)
    elif labels:
        _remove(gauge, *labels)


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    """Remove one labelled child if it exists."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
