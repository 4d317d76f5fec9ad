"""The valuation service: the thin Kafka loop around the pure batch logic.

One iteration:

1. poll (`consumer.max_poll_records`); every record is parsed at once (`batch.parse_record`);
2. the records go into per-partition buffers and come out merged in event-time order
   (`order.EventTimeMerger`); partitions that run ahead are paused until the others catch up,
   within `consumer.max_partition_wait_ms`;
3. `batch.BatchProcessor` runs the engine over the released records: valuations, dead letters
   (with reasons), drift alarms, the next offsets; the engine's trainer learns from the
   labelled events on its own thread (`engine.training`), so a batch is inference only;
4. `delivery.Delivery` produces the outputs and checks every send, commits the offsets, and
   checkpoints when one is due (the state taken here, written by a background thread);
5. every `consumer.metrics_interval_s`, per-cluster snapshots go to the metrics topic, keyed
   by this process's instance id and the cluster (several processes do not overwrite each other);
   a valuer (`--role valuer`) sends none: each cluster's learner reports it (`learner`);
6. between batches, the deployment's clustering is synchronised (`clusterings.ClusteringSync`):
   the member assigned input partition 0 fits and publishes it, the others adopt its latest
   version; every `consumer.profile_interval_s` this process's changed asset profiles are due
   for the profiles topic (`profiles.ProfileSync`), sent a chunk per iteration without
   waiting for the broker; from there the owner fits on all assets.

Failures: a bad record is dead-lettered, never raised; a broker outage is retried with backoff
(`outage.Outage`) for up to `consumer.outage_timeout_s`, then the service exits with a clear
message; an exception of the engine itself stops the service without committing or
checkpointing the batch (a restart re-reads it). Recovery after a restart: `recovery.Recovery`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streamval.config import EngineSettings, Settings
from streamval.consumers.batch import (
    BatchProcessor,
    EngineFailureError,
    Parsed,
    parse_record,
    snapshot_records,
)
from streamval.consumers.checkpoint import CheckpointMeta, CheckpointStore, CheckpointWriter
from streamval.consumers.clusterings import ClusteringSync
from streamval.consumers.delivery import Delivery
from streamval.consumers.learning import ModelSync, SampleOutbox
from streamval.consumers.order import UNORDERED, EventTimeMerger
from streamval.consumers.outage import Outage
from streamval.consumers.profiles import ProfileSync
from streamval.consumers.recovery import Recovery, read_back
from streamval.consumers.warmup import warm_up
from streamval.engine import Engine
from streamval.logs import LogOnce
from streamval.models.trainer import RemoteTrainer, Trainer
from streamval.monitoring.metrics import EngineMetrics
from streamval.monitoring.server import MetricsServer
from streamval.stream.contract.schema import Limits
from streamval.stream.datasets.readers import read_long_table
from streamval.stream.kafka.clients import (
    check_reachable,
    close_producer,
    is_reachable,
    make_consumer,
    make_producer,
)
from streamval.stream.kafka.topics import ensure_topics

log = logging.getLogger(__name__)

# Without records, the broker is asked for the end offsets this often: it proves the broker is
# reachable (poll() answers nothing either way) and keeps the lag gauges current.
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_MS = 3000
# Unexpected exceptions from poll() (not Kafka errors) in a row before giving up: a record
# kafka-python itself cannot decode would otherwise stop the loop forever, silently.
MAX_POLL_ERRORS = 20
# poll() takes everything fetched (bounded by max_partition_fetch_bytes per partition); batches
# are cut by the merger at max_poll_records. kafka-python 3.0 parks the rest of a partition's
# records cut by max_records when that partition is paused, and restores them on resume only in
# a state it may never reach again: the partition is then never fetched again. Draining whole
# fetches means nothing is ever parked that way.
FETCH_RECORDS = 100_000
# Events per `Engine.absorb` call in a takeover read (bounds the plan's window arrays).
TAKEOVER_CHUNK = 5_000
# Shutdown on a failure path must not hang on a dead broker.
CLOSE_TIMEOUT_S = 10.0


def _idle_member(consumer: Any) -> bool:
    """Whether the consumer is a settled member that was given no partition (a group with more
    members than partitions), not one stuck joining: re-creating it would only rebalance the
    whole group again. Reads kafka-python's coordinator; unknown internals count as not idle."""
    coordinator = getattr(consumer, "_coordinator", None)
    try:
        return bool(
            coordinator is not None
            and coordinator.stable()
            and not coordinator.rejoining
            and not coordinator.need_rejoin()
        )
    except Exception:
        return False


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: ValuationService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.service._on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.service._on_assigned(list(assigned))


def transactional_id(settings: Settings) -> str:
    """Stable across restarts, so a restarted process fences the dead one's transaction at once:
    derived from the instance id (`--instance-id`), else from the host name."""
    c = settings.consumer
    member = c.group_instance_id or socket.gethostname()
    return f"streamval-{c.group_id}-{member}"


def instance_id(settings: Settings) -> str:
    """This process among the group's members: `--instance-id`, else host name and pid."""
    return settings.consumer.group_instance_id or f"{socket.gethostname()}-{os.getpid()}"


def limits(settings: Settings) -> Limits:
    """The contract's range checks from `[consumer]` settings."""
    c = settings.consumer
    return Limits(
        min_ts_ms=c.min_event_time_ms,
        max_ahead_ms=round(c.max_event_time_ahead_s * 1000),
        max_abs_value=c.max_abs_value,
        max_abs_feature=c.max_abs_feature,
    )


class ValuationService:
    """A consumer-group member running the Engine over `asset-events`."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Any = None,
        metrics: EngineMetrics | None = None,
        progress: bool = False,
        discard_checkpoint: bool = False,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance or instance_id(settings)
        self.progress = progress  # a progress bar on stderr while warming up from history
        self.discard_checkpoint = discard_checkpoint
        # The valuer role: samples leave for the learners, models come from the models topic.
        self._outbox: SampleOutbox | None = None
        self._models: ModelSync | None = None
        if settings.consumer.role == "learner":
            raise ValueError("the learner role runs a LearnerService, not a ValuationService")
        if engine is None and settings.consumer.role == "valuer":
            self._outbox = SampleOutbox(
                settings.training_samples_topic(),
                lambda: self.engine.clustering_version,
                instance=self.instance,
                assets=lambda: self.engine.cluster_sizes(),  # noqa: PLW0108 (engine: below)
            )
            self._models = ModelSync(settings, self.instance)
            engine = Engine(
                settings.engine,
                accept_late=settings.consumer.accept_late,
                trainer=self._remote_trainer,
            )
        self.engine = engine or Engine(settings.engine, accept_late=settings.consumer.accept_late)
        # A valuer leaves the cluster-labelled series and snapshots to the clusters' owners.
        self.metrics = metrics or EngineMetrics(cluster_series=self._outbox is None)
        if self._outbox is not None:
            self.metrics.sends_samples()
        c = settings.consumer
        self.store = CheckpointStore(c.checkpoint_dir) if c.checkpoint_dir else None
        self.recovery = Recovery(self.store, lookback=c.takeover_lookback)
        self.takeover_records = 0  # records read back for partitions taken over
        self.takeover_seconds = 0.0
        self.limits = limits(settings)
        self.outage = Outage(
            c.outage_timeout_s,
            settings.kafka.bootstrap_servers or "",
            on_start=self.metrics.outage_started,
            on_end=self.metrics.outage_ended,
        )
        self.merger: EventTimeMerger[TopicPartition, Parsed] = EventTimeMerger(
            max_wait_s=c.max_partition_wait_ms / 1000
        )
        self._stop = threading.Event()
        self._last_loop = time.monotonic()
        self._assigned: set[TopicPartition] = set()
        self._fetched: dict[TopicPartition, int] = {}
        self._paused_ahead: set[TopicPartition] = set()
        self._static: dict[str, Any] = {}
        self._unassigned_since: float | None = None
        self.rejoins = 0
        self._last_snapshot = 0.0
        self._last_probe = time.monotonic()
        self._clusters_seen: set[int] = set()
        self._expired_seen = 0
        self._partitions = 0
        self._poll_errors = 0
        self._log_once = LogOnce(log)
        self.batches = 0
        self.published = 0
        self._producer: KafkaProducer | None = None
        self._consumer: KafkaConsumer | None = None
        self._delivery: Delivery | None = None
        self._writer: CheckpointWriter | None = None
        # One clustering per deployment (module docstring of `clusterings`); only for the real
        # engine with more than one cluster. Nobody fits until the group says who owns it.
        self._clusterings: ClusteringSync | None = None
        self._profiles: ProfileSync | None = None
        self._fits_published = 0
        self._last_profiles = 0.0
        if isinstance(self.engine, Engine) and settings.engine.n_clusters != 1:
            self.engine.fits_clustering = False
            self._clusterings = ClusteringSync(
                settings, self.instance, on_rejected=self.metrics.clustering_rejected
            )
            self._profiles = ProfileSync(
                settings, self.instance, on_rejected=self.metrics.profile_rejected
            )
            self.engine.profile_source = self._profiles.profiles
        self.metrics.identify(self.instance, settings.consumer.group_id)

    def _remote_trainer(self, engine: EngineSettings) -> Trainer:
        assert self._outbox is not None
        return RemoteTrainer(
            sink=self._outbox.add, batch_size=engine.batch_size, max_backlog=engine.max_backlog
        )

    def _serve_models(self) -> None:
        """Valuer: serve the newest snapshot of each cluster from now on (between batches)."""
        if self._models is None:
            return
        trainer = self.engine.trainer
        assert isinstance(trainer, RemoteTrainer)
        for record in self._models.latest().values():
            trainer.offer(record.cluster, record.version, record.learner)
        refused = trainer.refused
        trainer.apply_offered()
        if trainer.refused > refused:
            self._log_once(
                "model_unusable",
                f"cannot serve a model from {self._models.topic} (learners with other engine "
                f"settings?): {trainer.refusal}",
            )

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit, checkpoint and return (thread-safe)."""
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Readiness for /readyz: the broker reachable, partitions assigned, the loop alive."""
        if self._consumer is None:
            return False, "not started"
        if self.outage.active:
            return False, f"Kafka unreachable for {self.outage.elapsed():.0f} s"
        stalled = time.monotonic() - self._last_loop
        limit = self.settings.monitoring.stall_after_s
        if stalled > limit:
            return False, f"poll loop stalled for {stalled:.0f} s"
        if not self._assigned:
            return False, "no partitions assigned"
        return True, f"consuming {len(self._assigned)} partitions"

    def run(self, *, max_idle_polls: int | None = None) -> None:
        """Consume until `stop()`, or `max_idle_polls` empty polls in a row (scripts, tests)."""
        s = self.settings
        t = s.topics
        check_reachable(s)
        topics = [t.input, t.dlq, t.valuations, t.metrics]
        topics += [s.clusterings_topic(), s.profiles_topic()]
        if self._models is not None:
            topics += [s.training_samples_topic(), s.models_topic()]
        ensure_topics(s, topics)
        producer_config: dict[str, Any] = {}
        if s.consumer.exactly_once:
            producer_config["transactional_id"] = transactional_id(s)
            if not s.consumer.group_instance_id:
                log.warning(
                    "exactly-once without --instance-id: the transactional id comes from the host "
                    "name, so two processes on one host fence each other; give each its own "
                    "--instance-id",
                    extra={"transactional_id": producer_config["transactional_id"]},
                )
        static: dict[str, Any] = {}
        if s.consumer.group_instance_id:
            static["group_instance_id"] = s.consumer.group_instance_id
        try:
            self._static = static
            processor = self._start(producer_config, static)
            idle = 0
            while not self._stop.is_set():
                self._last_loop = time.monotonic()
                got = self._poll()
                self._check_membership(self._last_loop)
                self._sync_clustering()
                self._serve_models()
                batch = self.merger.release(
                    s.consumer.max_poll_records, now=time.monotonic(), has_lag=self._has_lag
                )
                self._hold_back_ahead()
                if batch:
                    idle = 0
                    self._handle(processor, batch)
                else:
                    busy = got or self.merger.buffered() > 0 or self._lag_pending()
                    idle = 0 if busy else idle + (1 if self._assigned else 0)
                    if not got:
                        self._probe()
                    if max_idle_polls is not None and idle >= max_idle_polls:
                        break
                self._periodic()
        except EngineFailureError:
            log.exception("the engine failed on a batch; stopping without committing it")
            raise
        finally:
            self._shutdown()

    def _start(self, producer_config: dict[str, Any], static: dict[str, Any]) -> BatchProcessor:
        """Clients, checkpoint or history, delivery; then join the group. Whatever was created
        is closed by `_shutdown` even if a later step fails (a missing history file)."""
        s = self.settings
        t = s.topics
        consumer = self._consumer = make_consumer(s, **static)
        self._partitions = len(consumer.partitions_for_topic(t.input) or ())
        restored = self.recovery.restore(
            self.engine, self._meta({}), discard=self.discard_checkpoint
        )
        if not restored and s.consumer.history is not None:
            self._warm_up(s.consumer.history)
            if self._outbox is not None:
                # Every valuer may warm up on the same history: its samples would be trained
                # once per valuer. The learners learn from the live stream only.
                self._outbox.take()
        producer = self._producer = make_producer(s, **producer_config)
        if s.consumer.exactly_once:
            producer.init_transactions()
        if self.store is not None:
            self._writer = CheckpointWriter(
                self.store,
                on_written=self.metrics.checkpoint_written,
                on_failed=self.metrics.checkpoint_failed,
            )
        self._delivery = Delivery(
            producer,
            consumer,
            outage=self.outage,
            dlq_topic=t.dlq,
            dlq_max_bytes=s.consumer.dlq_max_bytes,
            transactional=s.consumer.exactly_once,
            commit_every=s.consumer.commit_every_polls,
            writer=self._writer,
            checkpoint_interval_s=s.consumer.checkpoint_interval_s,
            checkpoint_meta=lambda positions: self._meta(self.recovery.offsets_with(positions)),
            state=self.engine.state_dict,
            state_if_idle=getattr(self.engine, "state_dict_if_idle", None),
            on_checkpoint_pause=self.metrics.checkpoint_pause,
            sleep=self._sleep,
            new_producer=lambda: make_producer(s, **producer_config),
            reachable=lambda: is_reachable(s),
        )
        processor = BatchProcessor(
            self.engine,
            valuations_topic=t.valuations,
            dlq_topic=t.dlq,
            metrics_topic=t.metrics,
            dlq_max_bytes=s.consumer.dlq_max_bytes,
            already_done=self.recovery.already_done,
        )
        if self._profiles is not None:
            self._profiles.start()
        if self._clusterings is not None:
            self._clusterings.start()
            self._sync_clustering()
        if self._models is not None and self._outbox is not None:
            self._models.start()  # the latest models are served from the first batch on
            samples = consumer.partitions_for_topic(s.training_samples_topic())
            self._outbox.partitions = max(1, len(samples or ()))
            self._serve_models()
        consumer.subscribe([t.input], listener=_Rebalance(self))
        log.info(
            "valuation service started", extra={"topic": t.input, "group": s.consumer.group_id}
        )
        return processor

    # -- one iteration ---------------------------------------------------------------------

    def _poll(self) -> bool:
        """Poll once; parsed records go into the merger. Whether any record came."""
        consumer = self._consumer
        assert consumer is not None
        c = self.settings.consumer
        try:
            if self.recovery.restoring:
                takeover = self.recovery.resume(consumer, self._assigned)
                if takeover:
                    self._take_over(takeover)
            # With a full batch buffered there is work now: a blocking poll would only wait
            # (kafka-python sleeps up to retry_backoff_ms when every partition is held back).
            ready = self.merger.buffered() >= c.max_poll_records
            timeout_ms = 0 if ready else c.poll_timeout_ms
            records = consumer.poll(timeout_ms=timeout_ms, max_records=FETCH_RECORDS)
        except KafkaError as exc:
            self._sleep(self.outage.failed(exc, "polling"))
            return False
        except Exception as exc:
            self._poll_errors += 1
            log.error("poll failed: %s: %s", type(exc).__name__, exc)
            if self._poll_errors >= MAX_POLL_ERRORS:
                raise
            self._sleep(min(5.0, 0.2 * self._poll_errors))
            return False
        self._poll_errors = 0
        if not records:
            return False
        self.outage.ok()
        self._last_probe = time.monotonic()
        now_ms = int(time.time() * 1000)
        for tp, messages in records.items():
            parsed = [
                parse_record(m, max_bytes=c.max_message_bytes, limits=self.limits, now_ms=now_ms)
                for m in messages
            ]
            keys = [UNORDERED if p.event is None else float(p.event.ts_ms) for p in parsed]
            self.merger.add(tp, parsed, keys)
            if messages:
                self._fetched[tp] = messages[-1].offset + 1
        return True

    def _handle(self, processor: BatchProcessor, batch: list[Parsed]) -> None:
        delivery = self._delivery
        assert delivery is not None
        t0 = time.monotonic()
        delivery.clean = False
        outcome = processor.process(batch)
        if self._outbox is not None:  # drift alarms come from the clusters' owners
            outcome.records = [r for r in outcome.records if r.kind != "metrics"]
            outcome.records.extend(self._outbox.take())
        delivery.deliver(outcome)
        self.recovery.reflect(outcome.offsets)
        m = self.metrics
        for partition, n in outcome.consumed.items():
            m.consumed(partition, n)
        for reason, n in outcome.dead_letters.items():
            m.dead_lettered(reason, n)
            self._log_once(reason, f"dead-lettered a message: {reason}")
        if outcome.duplicates:
            m.duplicates(outcome.duplicates)
        for cluster, n in outcome.published.items():
            m.published(cluster, n)
        self.published += sum(outcome.published.values())
        for alarm in outcome.drift:
            m.drift_alarm(alarm)
            log.warning(
                "drift alarm",
                extra={
                    "cluster": alarm.cluster,
                    "detector": alarm.detector,
                    "event_time": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(alarm.ts_ms / 1000)
                    ),
                    "lr": alarm.lr,
                },
            )
        done = time.monotonic()
        wall = time.time()
        for received in outcome.received:
            m.processing_latency(done - received)
        for ts_ms in outcome.event_times_ms:
            m.event_time_lag(max(0.0, wall - ts_ms / 1000))
        m.batch(done - t0, len(batch))
        m.delivery(delivery.stats)
        self.batches += 1
        delivery.checkpoint()

    def _take_over(self, ranges: dict[TopicPartition, tuple[int, int]]) -> None:
        """Rebuild the assets of partitions taken over from their recent history before the
        committed offset (`recovery`): read back, parsed, in event-time order, absorbed by the
        engine (state only). A failed read only costs the warm-up it would have saved."""
        absorb = getattr(self.engine, "absorb", None)
        if absorb is None:
            return
        c = self.settings.consumer
        t0 = time.monotonic()
        try:
            records = read_back(self.settings, ranges)
        except Exception as exc:
            log.warning("takeover read failed; its assets warm up from their next events: %s", exc)
            return
        t_read = time.monotonic() - t0
        now_ms = int(time.time() * 1000)
        events = [
            p.event
            for p in (
                parse_record(r, max_bytes=c.max_message_bytes, limits=self.limits, now_ms=now_ms)
                for r in records
            )
            if p.event is not None
        ]
        events.sort(key=lambda e: e.ts_ms)  # stable: an asset's events keep their order
        absorbed = 0
        for i in range(0, len(events), TAKEOVER_CHUNK):
            absorbed += absorb(events[i : i + TAKEOVER_CHUNK])
        self.recovery.reflect({(tp.topic, tp.partition): end for tp, (_, end) in ranges.items()})
        seconds = time.monotonic() - t0
        self.takeover_records += len(records)
        self.takeover_seconds += seconds
        self.metrics.took_over(len(records), seconds)
        self._last_loop = time.monotonic()
        log.info(
            "took over partitions: their assets rebuilt from the records before the committed "
            "offset",
            extra={
                "partitions": {tp.partition: list(r) for tp, r in sorted(ranges.items())},
                "records": len(records),
                "absorbed": absorbed,
                "read_s": round(t_read, 3),
                "seconds": round(seconds, 3),
            },
        )

    def _sync_clustering(self) -> None:
        """Adopt a newer clustering of the deployment; as its owner, publish a new fit."""
        sync = self._clusterings
        if sync is None:
            return
        engine = self.engine
        engine.apply_finished_fit()  # a quiet owner's bootstrap fit lands here
        owner = TopicPartition(self.settings.topics.input, 0) in self._assigned
        if owner != engine.fits_clustering:
            engine.fits_clustering = owner
            self.metrics.clustering_owner(owner)
            log.info("clustering owner" if owner else "clustering follower")
        latest = sync.latest()
        if latest is not None and latest.version > engine.clustering_version:
            try:
                if not engine.adopt_clustering_if_idle(latest):
                    return  # a training step is in flight: adopted after the next batch
            except ValueError as exc:  # consistent JSON, yet not for this engine
                self._log_once("clustering_unusable", f"cannot use clustering: {exc}")
                self.metrics.clustering_rejected("unusable")
                sync.rejected += 1
                engine.clustering_version = latest.version  # do not retry the same one
            else:
                self._fits_published = engine.clustering_fits
                self.metrics.clustering_adopted(latest.version)
                log.info(
                    "adopted clustering",
                    extra={"version": latest.version, "owner": latest.owner, "ids": latest.ids},
                )
        if owner and engine.clustering_fits > self._fits_published and not self.outage.active:
            version = max(engine.clustering_version, latest.version if latest else 0) + 1
            shared = engine.export_clustering(version=version, owner=self.instance)
            if shared is None:
                return
            try:
                sync.publish(shared)
            except Exception as exc:  # retried at the next iteration
                self._log_once("clustering_publish", f"publishing the clustering failed: {exc}")
                return
            engine.clustering_version = version
            self._fits_published = engine.clustering_fits
            self.metrics.clustering_adopted(version)

    def _check_membership(self, now: float) -> None:
        """Re-create the consumer when it has had no partition for `consumer.rejoin_after_s`
        while the broker answers: kafka-python can stay outside its group for good after a
        rebalance (its coordinator lookup never completes; the broker drops the member when
        heartbeats stop), and without this the service would poll an empty assignment forever."""
        if self._assigned or self.outage.active or _idle_member(self._consumer):
            self._unassigned_since = None
            return
        if self._unassigned_since is None:
            self._unassigned_since = now
            return
        waited = now - self._unassigned_since
        if waited < self.settings.consumer.rejoin_after_s:
            return
        log.warning(
            "no partition assigned for %.0f s: re-creating the consumer to join the group afresh",
            waited,
            extra={"group": self.settings.consumer.group_id},
        )
        old = self._consumer
        assert old is not None
        try:
            old.close(autocommit=False, timeout_ms=int(CLOSE_TIMEOUT_S * 1000))
        except Exception as exc:
            log.warning("closing the stuck consumer failed: %s", exc)
        consumer = self._consumer = make_consumer(self.settings, **self._static)
        if self._delivery is not None:
            self._delivery.consumer = consumer
        self._fetched.clear()
        self._paused_ahead.clear()
        consumer.subscribe([self.settings.topics.input], listener=_Rebalance(self))
        self.rejoins += 1
        self.metrics.consumer_rejoined()
        self._unassigned_since = now

    def _has_lag(self, tp: TopicPartition) -> bool:
        consumer = self._consumer
        assert consumer is not None
        highwater: int | None = consumer.highwater(tp)
        if highwater is None:
            return True
        fetched = self._fetched.get(tp)
        return highwater > 0 if fetched is None else fetched < highwater

    def _lag_pending(self) -> bool:
        """Whether a partition is known to have records on the broker not fetched yet (a
        partition just resumed after being held back is not idle)."""
        consumer = self._consumer
        assert consumer is not None
        for tp in self._assigned:
            highwater = consumer.highwater(tp)
            fetched = self._fetched.get(tp)
            if highwater is not None and fetched is not None and fetched < highwater:
                return True
        return False

    def _hold_back_ahead(self) -> None:
        """Pause partitions with a full buffer so the ones behind get fetched; resume the rest.

        Reconciled against the consumer's own paused set, which survives a rebalance."""
        consumer = self._consumer
        assert consumer is not None
        ahead = self.merger.ahead(self.settings.consumer.max_poll_records) & self._assigned
        want = ahead | self.recovery.paused
        actual = set(consumer.paused())
        if want - actual:
            consumer.pause(*(want - actual))
        if actual - want:
            consumer.resume(*(actual - want))
        self._paused_ahead = ahead
        self.metrics.held_back(len(ahead), self.merger.buffered())

    def _probe(self) -> None:
        """Without records for a while, ask the broker for end offsets (reachability, lag)."""
        now = time.monotonic()
        interval = 0.0 if self.outage.active else PROBE_INTERVAL_S
        if now - self._last_probe < interval:
            return
        self._last_probe = now
        consumer = self._consumer
        assert consumer is not None
        partitions = sorted(self._assigned) or [TopicPartition(self.settings.topics.input, 0)]
        try:
            ends = consumer.end_offsets(partitions, timeout_ms=PROBE_TIMEOUT_MS)
        except Exception as exc:
            self._sleep(self.outage.failed(exc, "asking for end offsets"))
            return
        self.outage.ok()
        positions = self._delivery.positions if self._delivery else {}
        for tp, end in ends.items():
            if tp in self._assigned and (tp.topic, tp.partition) in positions:
                self.metrics.consumer_lag(tp.partition, end - positions[(tp.topic, tp.partition)])

    # -- periodic work ---------------------------------------------------------------------

    def _periodic(self) -> None:
        now = time.monotonic()
        if (
            self._profiles is not None
            and not self.outage.active
            and now - self._last_profiles >= self.settings.consumer.profile_interval_s
        ):
            self._last_profiles = now
            self._profiles.plan(self.engine.ready_counts())
            if self.engine.fits_clustering:  # bootstrap on the other processes' assets too
                self.engine.bootstrap_shared()
        if self._profiles is not None and not self.outage.active:
            self._publish_profiles(self._profiles)
        if now - self._last_snapshot >= self.settings.consumer.metrics_interval_s:
            self._last_snapshot = now
            self._publish_snapshots()
        if self._delivery is not None and not self.outage.active:
            self._delivery.checkpoint()

    def _publish_profiles(self, sync: ProfileSync) -> None:
        """Send the next chunk of the profiles due (this process's assets that changed
        materially): a chunk per iteration keeps the loop's pauses short."""
        due = sync.next_chunk()
        if not due:
            return
        try:
            sync.publish(self.engine.asset_profiles(due, self.instance))
        except Exception as exc:  # sent again at the next interval
            self._log_once("profiles_publish", f"publishing asset profiles failed: {exc}")

    def _publish_snapshots(self) -> None:
        snapshots = self.engine.snapshot()
        current = {snap.cluster for snap in snapshots}
        gone = self._clusters_seen - current  # retired by a re-fit
        if gone:
            self.metrics.retire_clusters(gone)
        self._clusters_seen = current
        self.metrics.update_clusters(snapshots)
        expired = int(getattr(self.engine, "expired_assets", 0) or 0)
        if expired > self._expired_seen:
            self.metrics.assets_expired(expired - self._expired_seen)
        self._expired_seen = expired
        pooled = getattr(self.engine, "pooled_samples", None)
        counts = pooled() if callable(pooled) else None
        if counts is not None:
            self.metrics.pooled_model(*counts)
        owner = self._outbox is None  # a valuer's clusters report from their learners
        if owner and self._delivery is not None and snapshots and not self.outage.active:
            self._delivery.send_records(
                snapshot_records(snapshots, self.settings.topics.metrics, self.instance)
            )

    def _meta(self, offsets: dict[tuple[str, int], int]) -> CheckpointMeta:
        return CheckpointMeta(
            group_id=self.settings.consumer.group_id,
            topic=self.settings.topics.input,
            partitions=self._partitions,
            offsets=dict(offsets),
            created_at=time.time(),
        )

    def _warm_up(self, path: Path) -> None:
        """Run the history through the engine. It fits its own clustering on it, whatever its
        role turns out to be: the deployment's clustering, once there is one, replaces it."""
        from tqdm import tqdm

        table = read_long_table(path)
        bar = tqdm(
            total=len(table), unit="ev", desc="history", file=sys.stderr, disable=not self.progress
        )
        follower = self._clusterings is not None and not self.engine.fits_clustering
        if follower:
            self.engine.fits_clustering = True
        try:
            warm_up(
                self.engine,
                table.events(),
                batch_size=self.settings.consumer.max_poll_records,
                on_progress=lambda n: bar.update(n - bar.n),
            )
        finally:
            bar.close()
            if follower:
                self.engine.fits_clustering = False

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake up at once when asked to stop."""
        self._stop.wait(seconds)
        self._last_loop = time.monotonic()

    # -- rebalances ------------------------------------------------------------------------

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        # Runs on the consumer's IO thread, where blocking calls such as committed() are not
        # allowed: seek and pause here (local state), finish in `Recovery.resume`.
        consumer = self._consumer
        assert consumer is not None
        self._assigned |= set(assigned)
        self.merger.assign(assigned, now=time.monotonic())
        self.recovery.on_assigned(consumer, assigned)
        log.info(
            "partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)}
        )

    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        self._assigned -= set(revoked)
        self._paused_ahead -= set(revoked)
        for tp in revoked:
            self._fetched.pop(tp, None)
        self.merger.revoke(revoked)
        self.recovery.on_revoked(revoked)
        self.metrics.partitions_revoked(tp.partition for tp in revoked)
        # Offsets are committed after every batch (consumer.commit_every_polls = 1), so nothing
        # is pending here; with a larger setting the next owner re-reads the uncommitted batches
        # (at-least-once). No commit from this callback: it runs on kafka-python's IO thread.

    def _shutdown(self) -> None:
        delivery = self._delivery
        try:
            if delivery is not None and delivery.clean and not self.outage.active:
                self._publish_snapshots()
                delivery.commit_sync()
            if delivery is not None and delivery.clean:
                delivery.checkpoint(force=True)
        except Exception:  # a broker gone at shutdown must not hide the original error
            log.exception("final snapshot/commit/checkpoint failed")
        finally:
            if self._writer is not None and not self._writer.close(timeout_s=60.0):
                log.error("the last checkpoint was still being written at exit")
            self.engine.close()
            timeout = CLOSE_TIMEOUT_S if self.outage.active else 60.0
            if self._consumer is not None:
                try:
                    self._consumer.close(autocommit=False)
                except Exception as exc:
                    log.warning("closing the consumer failed: %s", exc)
            producer = delivery.producer if delivery is not None else self._producer
            if producer is not None:
                close_producer(producer, timeout)
            log.info(
                "valuation service stopped",
                extra={"batches": self.batches, "published": self.published},
            )
            if self._clusterings is not None:
                self._clusterings.close()
            if self._profiles is not None:
                self._profiles.close()
            if self._models is not None:
                self._models.close()
            close = getattr(self.engine, "close", None)
            if callable(close):
                close()


def serve_metrics(service: ValuationService) -> MetricsServer | None:
    """Start /metrics, /healthz and /readyz for `service` if `monitoring.enabled`."""
    m = service.settings.monitoring
    if not m.enabled:
        return None
    return MetricsServer(service.metrics.registry, m.host, m.port, ready=service.ready).start()
