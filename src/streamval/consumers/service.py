"""The valuation service: poll `asset-events` -> Engine -> publish -> commit, in a loop.

One iteration ("a batch"):

1. poll at most `consumer.max_poll_records` messages; bad ones go to the DLQ;
2. `Engine.process` values every valid event and hands the labelled ones to the engine's
   trainer, which learns on its own thread (`engine.training`);
3. late events go to the DLQ, valuations to `valuations`, drift alarms (and periodic snapshots)
   to `valuation-metrics`;
4. the producer is flushed, then the offsets are committed (at-least-once), or, with
   `consumer.exactly_once`, all of it is one Kafka transaction with the offsets sent via
   `send_offsets_to_transaction`. The send futures are not inspected: `flush()` raises nothing
   for a failed send, so a valuation the broker refused is lost while its offset is committed;

5. every `consumer.checkpoint_interval_s` the engine state is checkpointed with those offsets.

Work per batch is bounded, so the loop returns to `poll()` long before `max.poll.interval.ms`:
learning runs off the loop, and 500 events of inference take well under a second.

Recovery: after a restart, each partition is sought to the checkpointed offset (if any) on its
first assignment. Events between that offset and the group's committed offset were already
published (or dead-lettered) before the crash: they are re-learned but not published again.
Later rebalances resume at the committed offset: the live engine is already past the checkpoint.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from streamval.config import Settings
from streamval.consumers.checkpoint import CheckpointStore
from streamval.consumers.dlq import DeadLetterQueue
from streamval.consumers.source import EventSource, Poll, SourcedEvent
from streamval.consumers.warmup import warm_up
from streamval.engine import Engine
from streamval.monitoring.metrics import EngineMetrics
from streamval.monitoring.server import MetricsServer
from streamval.stream.contract.outputs import BatchResult
from streamval.stream.contract.schema import Reason
from streamval.stream.datasets.readers import read_long_table
from streamval.stream.kafka.clients import make_consumer, make_producer
from streamval.stream.kafka.topics import ensure_topics

log = logging.getLogger(__name__)

# How long to wait for outputs to be acknowledged before giving up on a batch (and not committing).
FLUSH_TIMEOUT_S = 60.0


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: ValuationService) -> None:
        self.service = service

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.service._on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.service._on_assigned(list(assigned))


class ValuationService:
    """A consumer-group member running the Engine over `asset-events`."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        metrics: EngineMetrics | None = None,
        progress: bool = False,
    ) -> None:
        self.settings = settings
        self.progress = progress  # a progress bar on stderr while warming up from history
        self.engine = engine or Engine(settings.engine, accept_late=settings.consumer.accept_late)
        self.metrics = metrics or EngineMetrics()
        c = settings.consumer
        self.store = CheckpointStore(c.checkpoint_dir) if c.checkpoint_dir else None
        self._checkpoint_offsets: dict[tuple[str, int], int] = {}
        # Offsets of the restored checkpoint not yet sought to: a partition resumes there on its
        # first assignment only; later assignments resume at the group's committed offset, as the
        # engine has moved past the checkpoint by then.
        self._restore_offsets: dict[tuple[str, int], int] = {}
        self._suppress_until: dict[tuple[str, int], int] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._last_poll = time.monotonic()
        self._assigned: set[TopicPartition] = set()
        self._last_snapshot = 0.0
        self._last_checkpoint = time.monotonic()
        self.batches = 0
        self.published = 0
        self._producer: KafkaProducer | None = None
        self._consumer: KafkaConsumer | None = None
        self._pending: list[SourcedEvent] = []
        self._restoring: dict[TopicPartition, int] = {}  # sought to a checkpoint, paused
        self._clusters_seen: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, commit, checkpoint and return (thread-safe)."""
        self._stop.set()

    def ready(self) -> tuple[bool, str]:
        """Readiness for /readyz: partitions assigned and the loop polled recently."""
        if self._consumer is None:
            return False, "not started"
        stalled = time.monotonic() - self._last_poll
        limit = self.settings.consumer.max_poll_interval_ms / 2000
        if stalled > limit:
            return False, f"no poll for {stalled:.0f} s"
        if not self._assigned:
            return False, "no partitions assigned"
        return True, f"consuming {len(self._assigned)} partitions"

    def run(self, *, max_idle_polls: int | None = None) -> None:
        """Consume until `stop()`, or `max_idle_polls` empty polls in a row (scripts, tests)."""
        s = self.settings
        t = s.topics
        if not self._restore() and s.consumer.history is not None:
            self._warm_up(s.consumer.history)
        ensure_topics(s, [t.input, t.dlq, t.valuations, t.metrics])
        transactional = s.consumer.exactly_once
        producer_config: dict[str, Any] = {}
        if transactional:
            producer_config["transactional_id"] = f"{s.consumer.group_id}-{uuid.uuid4().hex[:12]}"
        producer = self._producer = make_producer(s, **producer_config)
        if transactional:
            producer.init_transactions()
        static: dict[str, Any] = {}
        if s.consumer.group_instance_id:
            static["group_instance_id"] = s.consumer.group_instance_id
        consumer = self._consumer = make_consumer(s, **static)
        consumer.subscribe([t.input], listener=_Rebalance(self))
        dlq = DeadLetterQueue(producer, t.dlq, on_dead_letter=self.metrics.dead_lettered)
        source = EventSource(
            consumer,
            dlq,
            max_message_bytes=s.consumer.max_message_bytes,
            poll_timeout_ms=s.consumer.poll_timeout_ms,
            max_records=s.consumer.max_poll_records,
            already_dead_lettered=lambda m: self._suppressed(m.topic, m.partition, m.offset),
        )
        idle = 0
        log.info(
            "valuation service started", extra={"topic": t.input, "group": s.consumer.group_id}
        )
        try:
            while not self._stop.is_set():
                if transactional:
                    producer.begin_transaction()
                poll = source.poll()
                self._last_poll = time.monotonic()
                if self._restoring:
                    self._resume_restored()
                if not poll.consumed:
                    if transactional:
                        producer.abort_transaction()
                    # Count idleness only once partitions are assigned: joining a group on a
                    # fresh cluster (creating __consumer_offsets) takes seconds of empty polls.
                    idle += 1 if self._assigned else 0
                    self._periodic(force=False)
                    if max_idle_polls is not None and idle >= max_idle_polls:
                        break
                    continue
                idle = 0
                self._handle(poll, dlq)
                self._finish(poll, transactional)
                self._periodic(force=False)
        finally:
            self._shutdown()

    # -- one batch -------------------------------------------------------------------------

    def _handle(self, poll: Poll, dlq: DeadLetterQueue) -> None:
        assert self._producer is not None
        t0 = time.monotonic()
        t = self.settings.topics
        for partition, n in poll.consumed.items():
            self.metrics.consumed(partition, n)
        result: BatchResult = self.engine.process([s.event for s in poll.events])
        for index in result.late:
            sourced = poll.events[index]
            message = sourced.message
            if self._suppressed(message.topic, message.partition, message.offset):
                continue  # re-read after a restore: dead-lettered before the crash
            dlq.send(
                sourced.message,
                Reason.LATE.value,
                f"event time {sourced.event.ts_ms} is older than the last event seen for asset "
                f"{sourced.event.asset_id!r}",
            )
        if result.duplicates:
            self.metrics.duplicates(len(result.duplicates))
        refused = set(result.late) | set(result.duplicates)
        accepted = [sourced for i, sourced in enumerate(poll.events) if i not in refused]
        send = self._producer.send
        now = time.time()
        published_per_cluster: dict[int, int] = {}
        for sourced, valuation in zip(accepted, result.valuations, strict=True):
            message = sourced.message
            if self._suppressed(message.topic, message.partition, message.offset):
                continue
            send(t.valuations, key=valuation.asset_id.encode(), value=_dumps(valuation.to_json()))
            published_per_cluster[valuation.cluster] = (
                published_per_cluster.get(valuation.cluster, 0) + 1
            )
            self.metrics.event_time_lag(max(0.0, now - valuation.ts_ms / 1000))
        for alarm in result.drift:
            send(t.metrics, key=str(alarm.cluster).encode(), value=_dumps(alarm.to_json()))
            self.metrics.drift_alarm(alarm)
            log.warning(
                "drift alarm",
                extra={"cluster": alarm.cluster, "detector": alarm.detector, "lr": alarm.lr},
            )
        for cluster, n in published_per_cluster.items():
            self.metrics.published(cluster, n)
        self.published += sum(published_per_cluster.values())
        self.metrics.batch(time.monotonic() - t0, len(poll.events))
        self._pending = accepted

    def _finish(self, poll: Poll, transactional: bool) -> None:
        """Make the batch's outputs durable, then move the group's offsets past it."""
        assert self._producer is not None and self._consumer is not None
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in poll.offsets.items()}
        if transactional:
            self._producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            self._producer.commit_transaction()
        else:
            # flush() raises nothing for failed sends: each failure is on its future, but the
            # producer also records it and the next flush/send raises; acks=all + idempotence.
            self._producer.flush(timeout=FLUSH_TIMEOUT_S)
            self._consumer.commit(offsets)
        done = time.monotonic()
        for sourced in self._pending:
            self.metrics.processing_latency(done - sourced.received)
        self._pending = []
        for tp, offset in poll.offsets.items():
            self._positions[(tp.topic, tp.partition)] = offset
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self.metrics.consumer_lag(tp.partition, max(0, highwater - offset))
        self.batches += 1

    def _suppressed(self, topic: str, partition: int, offset: int) -> bool:
        until = self._suppress_until.get((topic, partition))
        return until is not None and offset < until

    # -- periodic work ---------------------------------------------------------------------

    def _periodic(self, *, force: bool) -> None:
        now = time.monotonic()
        c = self.settings.consumer
        if force or now - self._last_snapshot >= c.metrics_interval_s:
            self._publish_snapshots()
            self._last_snapshot = now
        if self.store is not None and (
            force or now - self._last_checkpoint >= c.checkpoint_interval_s
        ):
            self._checkpoint()
            self._last_checkpoint = now

    def _publish_snapshots(self) -> None:
        snapshots = self.engine.snapshot()
        current = {snap.cluster for snap in snapshots}
        gone = self._clusters_seen - current  # retired by a re-fit
        if gone:
            self.metrics.retire_clusters(gone)
        self._clusters_seen = current
        self.metrics.update_clusters(snapshots)
        if self._producer is None or not snapshots:
            return
        topic = self.settings.topics.metrics
        transactional = self.settings.consumer.exactly_once
        if transactional:
            self._producer.begin_transaction()
        for snap in snapshots:
            self._producer.send(topic, key=str(snap.cluster).encode(), value=_dumps(snap.to_json()))
        if transactional:
            self._producer.commit_transaction()
        else:
            self._producer.flush(timeout=FLUSH_TIMEOUT_S)

    def _checkpoint(self) -> None:
        assert self.store is not None
        offsets = {**self._checkpoint_offsets, **self._positions}
        created = self.store.save(
            self.engine.state_dict(), offsets, self.settings.consumer.group_id
        )
        self._checkpoint_offsets = offsets
        self.metrics.checkpoint_written(created)
        log.info(
            "checkpoint written", extra={"path": str(self.store.path), "partitions": len(offsets)}
        )

    def _restore(self) -> bool:
        """Load the checkpoint, if any; whether one was restored."""
        if self.store is None:
            return False
        checkpoint = self.store.load()
        if checkpoint is None:
            return False
        self.engine.load_state_dict(checkpoint.engine)
        self._checkpoint_offsets = dict(checkpoint.offsets)
        self._restore_offsets = dict(checkpoint.offsets)
        log.info(
            "restored checkpoint",
            extra={
                "path": str(self.store.path),
                "age_s": round(time.time() - checkpoint.created_at, 1),
            },
        )
        return True

    def _warm_up(self, path: Path) -> None:
        from tqdm import tqdm

        table = read_long_table(path)
        bar = tqdm(
            total=len(table), unit="ev", desc="history", file=sys.stderr, disable=not self.progress
        )
        try:
            warm_up(
                self.engine,
                table.events(),
                batch_size=self.settings.consumer.max_poll_records,
                on_progress=lambda n: bar.update(n - bar.n),
            )
        finally:
            bar.close()

    # -- rebalances ------------------------------------------------------------------------

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        # Runs on the consumer's IO thread, where blocking calls such as committed() are not
        # allowed: seek and pause here (local state), finish in `_resume_restored`.
        assert self._consumer is not None
        self._assigned |= set(assigned)
        for tp in assigned:
            offset = self._restore_offsets.pop((tp.topic, tp.partition), None)
            if offset is None:
                continue
            self._consumer.seek(tp, offset)
            self._consumer.pause(tp)
            self._restoring[tp] = offset
            log.info(
                "resuming from checkpoint", extra={"partition": tp.partition, "offset": offset}
            )
        log.info(
            "partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)}
        )

    def _resume_restored(self) -> None:
        """Bound the re-read of restored partitions, then let them be fetched again."""
        assert self._consumer is not None
        restoring, self._restoring = self._restoring, {}
        for tp, offset in restoring.items():
            if tp not in self._assigned:
                continue
            committed = self._consumer.committed(tp)
            if committed is not None and committed > offset:
                # Published before the crash: re-learn these events, do not publish them again.
                self._suppress_until[(tp.topic, tp.partition)] = committed
        self._consumer.resume(*restoring)

    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        self._assigned -= set(revoked)
        self.metrics.partitions_revoked(tp.partition for tp in revoked)
        for tp in revoked:
            self._suppress_until.pop((tp.topic, tp.partition), None)

    def _shutdown(self) -> None:
        try:
            if self._producer is not None:
                self._periodic(force=True)
        except Exception:  # a broker gone at shutdown must not hide the original error
            log.exception("final snapshot/checkpoint failed")
        finally:
            self.engine.close()
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
            if self._producer is not None:
                self._producer.close(timeout=FLUSH_TIMEOUT_S)
            log.info(
                "valuation service stopped",
                extra={"batches": self.batches, "published": self.published},
            )


def serve_metrics(service: ValuationService) -> MetricsServer | None:
    """Start /metrics, /healthz and /readyz for `service` if `monitoring.enabled`."""
    m = service.settings.monitoring
    if not m.enabled:
        return None
    return MetricsServer(service.metrics.registry, m.host, m.port, ready=service.ready).start()
