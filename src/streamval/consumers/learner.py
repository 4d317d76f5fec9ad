"""The learner role (`streamval run --role learner`): trains the cluster models off the valuers.

A member of consumer group `<consumer.group_id>.learners` on the training-samples topic. The
clusters whose samples arrive on its partitions are its own (valuers map clusters to partitions
explicitly, `learning.partition_of`): it is their owner. For each it keeps the engine's training
copy in a `Trainer` (sync mode): every sample trained once, in steps of `engine.batch_size`, with
the cluster's lr policy. Every `consumer.model_every_steps` steps of a cluster it publishes the
cluster's model on the compacted models topic, the version being the model's optimizer steps.

As the owner it also watches the cluster (`watch.ClusterWatch`) on the scored events every
valuer sends with its samples: the cluster's error metrics over all its assets, and its drift
detection, whose alarms boost the cluster's lr here, where it trains (the fast-learner response
is not run in the split: an alarm counts and boosts only with `engine.drift_response="boost"`).
Every `consumer.metrics_interval_s` the owned clusters' snapshots go to the metrics topic keyed
by cluster and to this process's Prometheus series (`LearnerMetrics`), alarms as they come.

The pooled model (`engine.pooled_expert`) arrives as one more id, `POOL`, with every cluster's
samples and no scored events: its owner trains it like a cluster, with the pooled seed and lr
policy, starting as a fork of the cluster the valuers' first clustering split; it is no cluster
(no metrics, no alarms, never retired by a clustering).

A cluster's model starts from, in order: its latest snapshot on the models topic (a restart, or
a cluster that moved here from another learner: training goes on from the version reached); a
fork of its parent's model (a cluster split off by a re-fit; parents come from the clusterings
topic, as valuers publish it); a fresh model seeded as the engine seeds it.

Offsets: a partition's committed offset never passes a sample that no published snapshot covers
yet (queued, or trained since the last snapshot), so a learner that dies loses no sample: its
successor restores the last snapshot and re-reads what came after it, skipping the samples the
snapshot says it holds (`ModelRecord.covered`), so each sample is trained once. A clustering that
drops a cluster drops its model here too, with its queued samples.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from streamval.config import Settings
from streamval.consumers.batch import snapshot_records
from streamval.consumers.clusterings import ClusteringSync
from streamval.consumers.learning import (
    ModelRecord,
    ModelSync,
    SampleBlock,
    decode_samples,
    slim_learner_state,
    wait_until,
)
from streamval.consumers.records import OutRecord
from streamval.consumers.service import _idle_member, instance_id
from streamval.consumers.watch import ClusterWatch
from streamval.engine import cluster_policy, cluster_seed, pool_policy, pool_seed
from streamval.logs import LogOnce
from streamval.models.learner import SequenceLearner
from streamval.models.trainer import POOL, Trainer
from streamval.monitoring.metrics import LearnerMetrics
from streamval.stream.contract.outputs import ClusterSnapshot
from streamval.stream.kafka.clients import check_reachable, make_consumer, make_producer
from streamval.stream.kafka.topics import ensure_topics

log = logging.getLogger(__name__)

BACKOFF_S = 1.0
# How long a sample of a clustering newer than the one read waits for it (its parents).
CLUSTERING_WAIT_S = 10.0


@dataclass
class _Owned:
    """A cluster this learner trains: where its samples come from and what is not covered yet."""

    partition: int
    watch: ClusterWatch
    clustering_version: int = 0
    steps_since_publish: int = 0
    trained_at_publish: int = 0
    # Per record whose samples are not all in a published snapshot yet, in order:
    # [partition, offset, samples of it not covered, index after its last sample submitted].
    marks: deque[list[int]] = field(default_factory=deque)
    # Samples at or before this (partition, offset, index) are in the model already (restored
    # from a snapshot that says so): skipped when read again.
    skip: tuple[int, int, int] | None = None
    # The last record watched (partition, offset); the scored events of records at or before
    # `watch_skip` are in the watch restored from a snapshot already: not watched again.
    watched: tuple[int, int] | None = None
    watch_skip: tuple[int, int] | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: LearnerService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.service._revoked.update(tp.partition for tp in revoked)
        self.service._assigned -= {tp.partition for tp in revoked}

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.service._assigned |= {tp.partition for tp in assigned}
        self.service._fresh = True


class LearnerService:
    """Trains the clusters of its training-samples partitions; publishes their snapshots."""

    def __init__(
        self,
        settings: Settings,
        *,
        instance: str | None = None,
        metrics: LearnerMetrics | None = None,
    ) -> None:
        if settings.engine.pooling != "cluster":
            raise ValueError("the learner role needs engine.pooling='cluster'")
        self.settings = settings
        self.instance = instance or instance_id(settings)
        self.topic = settings.training_samples_topic()
        self.group_id = f"{settings.consumer.group_id}.learners"
        s = settings.engine
        self.trainer = Trainer(
            batch_size=s.batch_size, max_backlog=s.max_backlog, background=False, pooled=False
        )
        self.models = ModelSync(settings, self.instance)
        self.clusterings = ClusteringSync(settings, self.instance) if s.n_clusters != 1 else None
        self._owned: dict[int, _Owned] = {}
        self._assigned: set[int] = set()
        self._revoked: set[int] = set()
        self._fresh = False  # partitions were assigned since the last iteration
        self._unassigned_since: float | None = None
        self.rejoins = 0  # consumers re-created after too long without partitions
        self._position: dict[int, int] = {}  # partition -> next offset to read
        self._unsent: list[ModelRecord] = []  # snapshots taken, not acknowledged yet
        self._stop = threading.Event()
        self._log_once = LogOnce(log)
        self._consumer: KafkaConsumer | None = None
        self.rejected = 0  # records that were not sample blocks
        self.trained = 0  # samples trained
        self.published = 0  # snapshots published
        self.send_failures = 0  # metrics-topic records that could not be sent
        self.restored = 0  # clusters started from the models topic
        self.behind = 0  # assignments before which the models topic could not be read to its end
        self.metrics = metrics or LearnerMetrics()
        self.metrics.identify(self.instance, self.group_id)
        self._producer: KafkaProducer | None = None  # the metrics topic's
        self._outgoing: list[OutRecord] = []  # snapshots and alarms for the metrics topic
        self._last_snapshot = 0.0
        self._last_loop = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the iteration, publish what is unpublished, commit and return (thread-safe)."""
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Readiness for /readyz: consuming, partitions assigned, the loop alive."""
        if self._consumer is None:
            return False, "not started"
        stalled = time.monotonic() - self._last_loop
        if stalled > self.settings.monitoring.stall_after_s:
            return False, f"poll loop stalled for {stalled:.0f} s"
        if not self._assigned:
            return False, "no partitions assigned"
        return True, f"learning {len(self._owned)} clusters of {len(self._assigned)} partitions"

    def run(self, *, max_idle_polls: int | None = None) -> None:
        """Consume until `stop()`, or `max_idle_polls` empty polls in a row (scripts, tests)."""
        s = self.settings
        check_reachable(s)
        ensure_topics(s, [self.topic, s.models_topic(), s.clusterings_topic()])
        self.models.start()
        if self.clusterings is not None:
            self.clusterings.start()
        self._consumer = self._subscribe()
        log.info("learner started", extra={"topic": self.topic, "group": self.group_id})
        idle = 0
        try:
            while not self._stop.is_set():
                self._last_loop = time.monotonic()
                got = self._iterate(self._consumer)
                self._periodic()
                idle = 0 if got else idle + (1 if self._assigned else 0)
                if max_idle_polls is not None and idle >= max_idle_polls:
                    break
            for cluster, owned in self._owned.items():
                if owned.steps_since_publish:
                    self._unsent.append(self._snapshot(cluster, owned))
            if self._send():
                self._commit()
            self._publish_snapshots()
        finally:
            self._close()

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the learner's consumer failed: %s", exc)
        self.models.close()
        if self.clusterings is not None:
            self.clusterings.close()
        if self._producer is not None:
            try:
                self._producer.close(timeout=10)
            except Exception as exc:
                log.warning("closing the metrics producer failed: %s", exc)
        log.info(
            "learner stopped",
            extra={"trained": self.trained, "published": self.published},
        )

    # -- one iteration -------------------------------------------------------------------------

    def _iterate(self, consumer: KafkaConsumer) -> bool:
        """Poll, train what is due, publish, commit; whether any record came."""
        try:
            records = consumer.poll(timeout_ms=self.settings.consumer.poll_timeout_ms)
        except KafkaError as exc:
            self._log_once(f"poll:{type(exc).__name__}", f"polling {self.topic} failed: {exc}")
            self._stop.wait(BACKOFF_S)
            return False
        self._check_membership(consumer)
        self._drop_revoked()
        self._drop_retired()
        if self._fresh:  # new partitions: their clusters start from their latest snapshots
            self._fresh = False
            if not self.models.read_to_end():
                self.behind += 1
                self._log_once(
                    "models_behind",
                    f"reading {self.models.topic} to its end took too long: a cluster may "
                    "start from an older snapshot",
                )
        for tp, messages in records.items():
            for message in messages:
                self._take(tp.partition, message.offset, message.value)
                self._position[tp.partition] = message.offset + 1
        self._train()
        if self._send():
            self._commit()
        return bool(records)

    def _train(self) -> None:
        """Every full step of every cluster, a snapshot taken every `model_every_steps`."""
        every = self.settings.consumer.model_every_steps
        for cluster, owned in self._owned.items():
            while self.trainer.step_cluster(cluster):
                self.trained += self.trainer.batch_size
                self.metrics.trained(self.trainer.batch_size)
                owned.steps_since_publish += 1
                if owned.steps_since_publish >= every:
                    self._unsent.append(self._snapshot(cluster, owned))

    def _check_membership(self, consumer: KafkaConsumer) -> None:
        """Join afresh after `consumer.rejoin_after_s` without partitions (kafka-python can stay
        outside its group after a rebalance; see `ValuationService._check_membership`)."""
        if consumer.assignment() or _idle_member(consumer):
            self._unassigned_since = None
            return
        now = time.monotonic()
        if self._unassigned_since is None:
            self._unassigned_since = now
            return
        if now - self._unassigned_since < self.settings.consumer.rejoin_after_s:
            return
        log.warning(
            "no partition assigned for %.0f s: re-creating the consumer to join the group afresh",
            now - self._unassigned_since,
            extra={"group": self.group_id},
        )
        try:
            consumer.close(autocommit=False)
        except Exception as exc:
            log.warning("closing the stuck consumer failed: %s", exc)
        self._revoked |= self._assigned | set(self._position)
        self._assigned = set()
        self._consumer = self._subscribe()
        self.rejoins += 1
        self._unassigned_since = now

    def _subscribe(self) -> KafkaConsumer:
        s = self.settings
        consumer = make_consumer(
            s,
            group_id=self.group_id,
            client_id=f"{s.consumer.client_id}-learner",
            auto_offset_reset="earliest",
        )
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        return consumer

    def _take(self, partition: int, offset: int, value: bytes | None) -> None:
        try:
            block = decode_samples(value)
        except ValueError as exc:
            self._reject(str(exc).split(":", 1)[0], str(exc))
            return
        owned = self._own(block, partition)
        if owned is None:
            return
        start = 0
        if owned.skip is not None and owned.skip[0] == partition:
            if offset < owned.skip[1]:
                return  # in the snapshot this cluster was restored from
            if offset == owned.skip[1]:
                start = owned.skip[2]
            else:
                owned.skip = None
        if owned.watch_skip is not None and (
            owned.watch_skip[0] != partition or offset > owned.watch_skip[1]
        ):
            owned.watch_skip = None
        if owned.watch_skip is None:
            self._watch(block, owned)
            owned.watched = (partition, offset)
        self.metrics.received(len(block))
        owned.partition = partition
        owned.clustering_version = max(owned.clustering_version, block.clustering_version)
        if start >= len(block):
            return
        self.trainer.submit(
            block.cluster, block.windows[start:], block.targets[start:], block.ts[start:]
        )
        owned.marks.append([partition, offset, len(block) - start, len(block)])

    def _reject(self, kind: str, detail: str) -> None:
        self.rejected += 1
        self.metrics.rejected(kind)
        self._log_once(
            f"samples:{kind}", f"ignored a record on {self.topic} that is no sample block: {detail}"
        )

    def _watch(self, block: SampleBlock, owned: _Owned) -> None:
        """The cluster's metrics and detectors on the block's scored events; an alarm boosts
        the cluster's lr (with the boost response) and goes to the metrics topic."""
        c = block.cluster
        late = owned.watch.late
        alarms = owned.watch.observe(
            block.valuer, block.assets, block.scored, self.trainer.policy(c).monitor
        )
        if owned.watch.late > late:
            self.metrics.late(owned.watch.late - late)
        response = "boost" if self.settings.engine.drift_response == "boost" else "none"
        for alarm in alarms:
            self.trainer.boost(c)  # counts the alarm; raises the lr only with the boost response
            done = replace(alarm, lr=self.trainer.policy(c).lr, response=response)
            self.metrics.drift_alarm(done)
            self._outgoing.append(
                OutRecord(
                    self.settings.topics.metrics,
                    str(c).encode(),
                    orjson.dumps(done.to_json()),
                    "metrics",
                )
            )
            log.warning(
                "drift alarm",
                extra={"cluster": c, "detector": done.detector, "lr": done.lr},
            )

    def _own(self, block: SampleBlock, partition: int) -> _Owned | None:
        """The cluster's entry, its model started first if it is new here (module docstring)."""
        c = block.cluster
        if c in self._owned:
            return self._owned[c]
        s = self.settings.engine
        seed = cluster_seed(s, c) if c != POOL else pool_seed(s)
        learner = SequenceLearner.from_settings(s, seed=seed)
        window_shape = (learner.seq_len, learner.n_inputs)
        if block.windows.shape[1:] != window_shape:
            self._reject(
                "shape",
                f"samples of shape {block.windows.shape[1:]}: this learner's windows are "
                f"{window_shape} (engine settings differ from the valuers')",
            )
            return None
        policy = cluster_policy(s, c) if c != POOL else pool_policy(s)
        record = self.models.get(c)
        source = "fresh"
        parent_watch: ClusterWatch | dict[str, Any] | None = None
        if record is None and c == POOL:
            # As the engine starts it: a fork of the cluster the first clustering split.
            parent = self._pool_parent(block.clustering_version)
            held = self.models.get(parent) if parent is not None else None
            if parent is not None and parent in self._owned:
                learner = self.trainer.spawn(parent, seed)
                source = f"fork of {parent}"
            elif parent is not None and held is not None:
                try:
                    learner.load_state_dict(held.learner)
                    learner = learner.fork(seed)
                    source = f"fork of {parent} (models topic)"
                except (KeyError, ValueError, TypeError, RuntimeError):
                    learner = SequenceLearner.from_settings(s, seed=seed)
        elif record is None:
            parent = self._parent(c, block.clustering_version)
            if parent is not None and parent in self._owned:
                learner = self.trainer.spawn(parent, cluster_seed(s, c))
                source = f"fork of {parent}"
                parent_watch = self._owned[parent].watch
            elif parent is not None and (record := self.models.get(parent)) is not None:
                source = f"fork of {parent} (models topic)"
                parent_watch = record.watch
        else:
            source = "models topic"
        if record is not None:
            try:
                learner.load_state_dict(record.learner)
                if record.cluster == c:
                    policy.load_state_dict(record.policy)
                    self.restored += 1
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                self._log_once(
                    f"restore:{c}", f"cluster {c}: its snapshot is unusable, starting fresh: {exc}"
                )
                learner = SequenceLearner.from_settings(s, seed=seed)
                policy, source = cluster_policy(s, c) if c != POOL else pool_policy(s), "fresh"
        self.trainer.add(c, learner, policy)
        owned = self._owned[c] = _Owned(partition, ClusterWatch(s, c))
        if record is not None and record.cluster == c and record.covered is not None:
            owned.skip = record.covered
        if record is not None and record.cluster == c and record.watch is not None:
            try:
                owned.watch.load_state_dict(record.watch)
                owned.watch_skip = owned.watched = record.watched
            except (KeyError, ValueError, TypeError) as exc:
                owned.watch = ClusterWatch(s, c)
                self._log_once(
                    f"restore_watch:{c}",
                    f"cluster {c}: its metrics and detector state are unusable, starting them "
                    f"afresh: {exc}",
                )
        if parent_watch is not None:  # a split-off cluster: its parent's detector calibration
            owned.watch.fork_detector(parent_watch)
        log.info(
            "learning a cluster",
            extra={"cluster": c, "from": source, "version": learner.updates},
        )
        return owned

    def _pool_parent(self, clustering_version: int) -> int | None:
        """The cluster the pooled model starts from: the one the valuers' first clustering
        split (the lowest parent of the clustering the sample was valued with)."""
        parents = set(self._parents(clustering_version).values())
        return min(parents) if parents else None

    def _parent(self, cluster: int, clustering_version: int) -> int | None:
        """The cluster `cluster` was split from, per the clustering the sample was valued with."""
        return self._parents(clustering_version).get(cluster)

    def _parents(self, clustering_version: int) -> dict[int, int]:
        """The parents of the clustering a sample was valued with (waiting a while for it to
        arrive on the clusterings topic)."""
        sync = self.clusterings
        if sync is None or clustering_version == 0:
            return {}

        def arrived() -> bool:
            latest = sync.latest()
            return latest is not None and latest.version >= clustering_version

        wait_until(arrived, CLUSTERING_WAIT_S, self._stop)
        latest = sync.latest()
        return {} if latest is None else dict(latest.parents)

    # -- publishing and offsets ----------------------------------------------------------------

    def _snapshot(self, cluster: int, owned: _Owned) -> ModelRecord:
        """The cluster's model now, and the last sample it covers (its marks move on)."""
        owned.steps_since_publish = 0
        trained = self.trainer.counts(cluster)[1]
        covered, owned.trained_at_publish = trained - owned.trained_at_publish, trained
        last: tuple[int, int, int] | None = None
        while covered and owned.marks:
            mark = owned.marks[0]
            take = min(covered, mark[2])
            mark[2] -= take
            covered -= take
            last = (mark[0], mark[1], mark[3] - mark[2])
            if mark[2] == 0:
                owned.marks.popleft()
        learner = self.trainer.learner(cluster)
        return ModelRecord(
            cluster=cluster,
            version=learner.updates,
            clustering_version=owned.clustering_version,
            learner=slim_learner_state(learner.state_dict()),
            policy=self.trainer.policy(cluster).state_dict(),
            covered=last,
            watch=owned.watch.state_dict(),
            watched=owned.watched,
        )

    def _send(self) -> bool:
        """Publish the snapshots taken and wait for the acks; whether none is left unsent (the
        offsets they cover may be committed only then)."""
        if not self._unsent:
            return True
        try:
            self.models.publish(self._unsent)
        except Exception as exc:  # sent again at the next iteration; offsets wait for it
            self._log_once("publish", f"publishing model snapshots failed: {exc}")
            return False
        self.published += len(self._unsent)
        self.metrics.published(len(self._unsent))
        self._unsent = []
        return True

    def _commit(self) -> None:
        """Commit, per assigned partition, up to the first sample no snapshot covers yet."""
        consumer = self._consumer
        assert consumer is not None
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition in self._assigned:
            position = self._position.get(partition)
            if position is None:
                continue
            pending = [
                mark[1]
                for o in self._owned.values()
                for mark in o.marks
                if mark[0] == partition and mark[2]
            ]
            offset = min(pending, default=position)  # a record partly covered is read again
            offsets[TopicPartition(self.topic, partition)] = OffsetAndMetadata(offset, "", -1)
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except KafkaError as exc:  # committed at the next iteration
            self._log_once(f"commit:{type(exc).__name__}", f"committing offsets failed: {exc}")

    # -- ownership changes ---------------------------------------------------------------------

    def _drop_revoked(self) -> None:
        """Forget the clusters of partitions taken away (their next owner restores them from
        the models topic and re-reads the samples no snapshot covers)."""
        if not self._revoked:
            return
        # All of them, even those assigned again: the consumer goes back to the committed offset
        # and re-reads what no snapshot covers, so the clusters restart from their snapshots.
        revoked, self._revoked = self._revoked, set()
        for c in [c for c, o in self._owned.items() if o.partition in revoked]:
            self._forget(c, "partition revoked")
        for partition in revoked:
            self._position.pop(partition, None)
        self.metrics.partitions_revoked(revoked)

    def _drop_retired(self) -> None:
        """Forget the clusters a newer clustering no longer has."""
        latest = self.clusterings.latest() if self.clusterings is not None else None
        if latest is None:
            return
        for c, o in list(self._owned.items()):
            if c != POOL and c not in latest.ids and latest.version > o.clustering_version:
                self._forget(c, f"retired by clustering {latest.version}")

    def _forget(self, cluster: int, why: str) -> None:
        self.trainer.remove(cluster, None)
        del self._owned[cluster]
        self.metrics.retire_clusters([cluster])
        log.info("stopped learning a cluster", extra={"cluster": cluster, "why": why})

    # -- the owner's metrics -------------------------------------------------------------------

    def _periodic(self) -> None:
        """Every `consumer.metrics_interval_s`: the owned clusters' snapshots and the lag."""
        now = time.monotonic()
        if now - self._last_snapshot >= self.settings.consumer.metrics_interval_s:
            self._last_snapshot = now
            self._publish_snapshots()
            self._update_lag()
        elif self._outgoing:
            self._flush_outgoing()

    def snapshots(self) -> list[ClusterSnapshot]:
        """The owned clusters' health, as the engine's `snapshot` reports it."""
        out = []
        for c, owned in self._owned.items():
            if c == POOL:  # not a cluster: no assets, errors or alarms of its own
                continue
            watch, policy = owned.watch, self.trainer.policy(c)
            queued, trained, skipped = self.trainer.counts(c)
            out.append(
                ClusterSnapshot(
                    cluster=c,
                    ts_ms=max(watch.watermark, 0),
                    assets=watch.assets(),
                    rolling=watch.errors.stats(rolling=True),
                    total=watch.errors.stats(rolling=False),
                    drift_alarms=policy.alarms,
                    lr=policy.lr,
                    updates=self.trainer.updates(c),
                    model_version=self.trainer.learner(c).updates,
                    queued_samples=queued,
                    trained_samples=trained,
                    skipped_samples=skipped,
                )
            )
        return out

    def _publish_snapshots(self) -> None:
        snapshots = self.snapshots()
        self.metrics.update_clusters(snapshots)
        self._outgoing.extend(
            snapshot_records(
                snapshots, self.settings.topics.metrics, self.instance, by_cluster=True
            )
        )
        self._flush_outgoing()

    def _flush_outgoing(self) -> None:
        """Send the metrics-topic records without waiting (a failure is logged and counted;
        the next interval sends newer snapshots)."""
        records, self._outgoing = self._outgoing, []
        if not records:
            return
        try:
            if self._producer is None:
                self._producer = make_producer(
                    self.settings, client_id=f"{self.settings.consumer.client_id}-learner-metrics"
                )
            for r in records:
                self._producer.send(r.topic, key=r.key, value=r.value).add_errback(
                    self._send_failed
                )
        except Exception as exc:
            self._send_failed(exc)

    def _send_failed(self, exc: BaseException) -> None:
        self.send_failures += 1
        self._log_once("metrics_send", f"sending to {self.settings.topics.metrics} failed: {exc}")

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None or not self._assigned:
            return
        tps = [TopicPartition(self.topic, p) for p in sorted(self._assigned)]
        try:
            ends = consumer.end_offsets(tps)
        except KafkaError as exc:
            self._log_once("lag", f"reading the end offsets of {self.topic} failed: {exc}")
            return
        for tp in tps:
            position = self._position.get(tp.partition)
            if position is not None:
                self.metrics.lag(tp.partition, ends[tp] - position)
