"""Delivery: the one object that owns "flush outputs, then commit offsets, then checkpoint".

`Delivery.deliver(outcome)` makes a batch's outputs durable before its offsets move:

1. send every record and flush; then look at every send's future (`flush()` itself raises
   nothing for a failed send);
2. a send that failed for good (too large, refused) is replaced: a valuation by the DLQ copy of
   its input record (reason `send_failed`), a dead letter by a truncated and then a minimal copy,
   a metrics record is dropped and counted; a send that failed because the broker is unreachable
   is retried with backoff (`Outage`), until the outage bound stops the service;
3. at-least-once: the offsets are committed asynchronously every `commit_every_polls` batches
   (the next commit carries a failed one's offsets); exactly-once: all of it is one transaction,
   re-done from the start if any part failed, the offsets sent with `send_offsets_to_transaction`;
4. then, if one is due, a checkpoint: the engine state, taken here between batches, paired with
   the offsets of exactly the events it reflects, handed to the background writer.

A batch that did not complete (the engine raised, or the outage bound was hit) never reaches
step 4, so a checkpoint never pairs state with offsets from another point of the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from streamval.consumers.batch import SEND_FAILED, Outcome
from streamval.consumers.checkpoint import CheckpointMeta, CheckpointWriter
from streamval.consumers.outage import Outage
from streamval.consumers.records import OutRecord, dead_letter, minimal_dead_letter
from streamval.errors import BrokerError
from streamval.logs import LogOnce
from streamval.stream.kafka.clients import close_producer

log = logging.getLogger(__name__)

# One flush waits this long for acknowledgements before the batch is retried (an outage).
FLUSH_TIMEOUT_S = 30.0
# It waits in slices of this length; after a slice without all acks the bootstrap servers are
# probed, so a broker that went down marks an outage (readiness) within about 5 s, not 30 s.
FLUSH_SLICE_S = 5.0


class DeliveryError(BrokerError):
    """Outputs cannot be produced at all (not an outage): a configuration problem."""


def retriable(exc: BaseException) -> bool:
    """Whether a failed send may succeed if tried again (the broker was unreachable)."""
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


@dataclass
class DeliveryStats:
    """What delivery did, for the metrics."""

    send_failures: dict[str, int] = field(default_factory=dict)  # kind -> records replaced
    truncated: int = 0
    commit_failures: int = 0
    retries: int = 0


class Delivery:
    """Sends a batch's outputs, commits its offsets, checkpoints; see the module docstring."""

    def __init__(
        self,
        producer: KafkaProducer,
        consumer: KafkaConsumer,
        *,
        outage: Outage,
        dlq_topic: str,
        dlq_max_bytes: int,
        transactional: bool,
        commit_every: int = 1,
        writer: CheckpointWriter | None = None,
        checkpoint_interval_s: float = 30.0,
        checkpoint_meta: Callable[[dict[tuple[str, int], int]], CheckpointMeta] | None = None,
        state: Callable[[], dict[str, Any]] | None = None,
        state_if_idle: Callable[[], dict[str, Any] | None] | None = None,
        on_checkpoint_pause: Callable[[float], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        new_producer: Callable[[], KafkaProducer] | None = None,
        reachable: Callable[[], bool] | None = None,
    ) -> None:
        self.producer = producer
        self._reachable = reachable
        self._new_producer = new_producer
        self.consumer = consumer
        self.outage = outage
        self.dlq_topic = dlq_topic
        self.dlq_max_bytes = dlq_max_bytes
        self.transactional = transactional
        self.commit_every = commit_every
        self.writer = writer
        self.checkpoint_interval_s = checkpoint_interval_s
        self._checkpoint_meta = checkpoint_meta
        self._state = state
        self._state_if_idle = state_if_idle
        self._on_checkpoint_pause = on_checkpoint_pause
        self._sleep = sleep
        self.stats = DeliveryStats()
        # Next offset per partition of the events the engine has processed and whose outputs
        # are durable: what a checkpoint pairs with the engine state.
        self.positions: dict[tuple[str, int], int] = {}
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._batches_since_commit = 0
        self._last_checkpoint = time.monotonic()
        self._log_once = LogOnce(log)
        self.clean = True  # False between an engine call and the end of its delivery

    # -- one batch --------------------------------------------------------------------------

    def deliver(self, outcome: Outcome) -> None:
        """Make the outputs durable, then commit the offsets (see the module docstring)."""
        if self.transactional:
            self._deliver_transaction(outcome.records, outcome.offsets)
        else:
            self._deliver_at_least_once(outcome.records)
            self._uncommitted.update(outcome.offsets)
            self._batches_since_commit += 1
            if self._batches_since_commit >= self.commit_every:
                self.commit_async()
        self.positions.update(outcome.offsets)
        self.clean = True

    def send_records(self, records: list[OutRecord]) -> None:
        """Outputs outside a batch (snapshots): delivered the same way, no offsets."""
        if not records:
            return
        if self.transactional:
            self._deliver_transaction(records, {})
        else:
            self._deliver_at_least_once(records)

    def _deliver_at_least_once(self, records: list[OutRecord]) -> None:
        pending = records
        while pending:
            failures = self._send_and_flush(pending)
            pending = []
            transient: BaseException | None = None
            for record, exc in failures:
                if retriable(exc):
                    pending.append(record)
                    transient = exc
                else:
                    replacement = self._replace(record, exc)
                    if replacement is not None:
                        pending.append(replacement)
            if any(not retriable(exc) for _, exc in failures):
                self._reset_producer()
            if transient is not None:
                self.stats.retries += 1
                self._sleep(self.outage.failed(transient, "producing outputs"))
            else:
                self.outage.ok()

    def _deliver_transaction(
        self, records: list[OutRecord], offsets: dict[tuple[str, int], int]
    ) -> None:
        current = list(records)
        while True:
            try:
                self.producer.begin_transaction()
            except KafkaError as exc:
                self._transaction_trouble(exc, "beginning a transaction")
                continue
            failures = self._send_and_flush(current)
            if not failures:
                try:
                    if offsets:
                        meta = {
                            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                            for (t, p), o in offsets.items()
                        }
                        self.producer.send_offsets_to_transaction(
                            meta, self.consumer.group_metadata()
                        )
                    self.producer.commit_transaction()
                except KafkaError as exc:
                    self._abort()
                    self._transaction_trouble(exc, "committing the transaction")
                    continue
                self.outage.ok()
                return
            self._abort()
            if any(not retriable(exc) for _, exc in failures):
                self._reset_producer()
            replaced: dict[int, OutRecord | None] = {}
            transient: BaseException | None = None
            for record, error in failures:
                if retriable(error):
                    transient = error
                else:
                    replaced[id(record)] = self._replace(record, error)
            redo: list[OutRecord] = []
            for r in current:
                substitute = replaced.get(id(r), r) if id(r) in replaced else r
                if substitute is not None:
                    redo.append(substitute)
            current = redo
            if transient is not None:
                self.stats.retries += 1
                self._sleep(self.outage.failed(transient, "producing outputs"))

    def _transaction_trouble(self, exc: KafkaError, what: str) -> None:
        if isinstance(exc, ProducerFencedError):
            raise DeliveryError(
                f"{what}: this producer was fenced: another process uses the same transactional "
                "id (give each process its own --instance-id)"
            ) from exc
        if not retriable(exc) and not _abortable(exc):
            raise DeliveryError(f"{what}: {type(exc).__name__}: {exc}") from exc
        self.stats.retries += 1
        self._sleep(self.outage.failed(exc, what))

    def _reset_producer(self) -> None:
        """A fresh producer after a send failed for good: kafka-python's idempotent producer
        treats some per-record errors (a record too large for the topic) as fatal and refuses
        every later send. A transactional one re-registers its id, fencing the old one."""
        if self._new_producer is None:
            return
        close_producer(self.producer, 1.0)
        self.producer = self._new_producer()
        if self.transactional:
            self.producer.init_transactions()
        log.info("producer re-created after a failed send")

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction()
        except KafkaError as exc:
            self._log_once("abort", f"aborting a transaction failed: {exc}")

    def _send_and_flush(self, records: list[OutRecord]) -> list[tuple[OutRecord, BaseException]]:
        """Send all, flush, and return the records whose send failed, with the error."""
        failures: list[tuple[OutRecord, BaseException]] = []
        futures = []
        for record in records:
            try:
                at = {} if record.partition is None else {"partition": record.partition}
                future = self.producer.send(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    **at,
                )
            except Exception as exc:  # too large, not serialisable, no metadata in time
                failures.append((record, exc))
                continue
            futures.append((record, future))
        self._flush()
        for record, future in futures:
            if not future.is_done:
                failures.append((record, _NotAcknowledgedError(f"no ack in {FLUSH_TIMEOUT_S:g} s")))
            elif future.failed():
                failures.append((record, future.exception))
        return failures

    def _flush(self) -> None:
        """Flush for up to FLUSH_TIMEOUT_S; unacknowledged sends then count as failed."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            try:
                self.producer.flush(timeout=max(0.0, min(FLUSH_SLICE_S, remaining)))
                return
            except KafkaError as exc:
                log.debug("flush: %s", exc)
                if not isinstance(exc, KafkaTimeoutError) or remaining <= FLUSH_SLICE_S:
                    return
                if self._reachable is not None and not self._reachable():
                    # Readiness goes down now; the bound runs from here. Keep waiting: a broker
                    # back within the flush window still acknowledges the buffered sends.
                    self.outage.failed(exc, "flushing outputs (no bootstrap server answers)")

    def _replace(self, record: OutRecord, exc: BaseException) -> OutRecord | None:
        """What to send instead of a record that can never be produced (None: nothing)."""
        detail = f"{type(exc).__name__}: {exc}"
        self.stats.send_failures[record.kind] = self.stats.send_failures.get(record.kind, 0) + 1
        self._log_once(
            f"send-{record.kind}",
            f"a {record.kind} record could not be produced: {detail}",
            topic=record.topic,
        )
        if record.kind in ("metrics", "sample"):
            return None  # a lost training sample is counted here, its event was valued
        source = record.source
        if source is None:
            return None
        if record.kind == "valuation":
            return dead_letter(
                source,
                self.dlq_topic,
                SEND_FAILED,
                f"valuation could not be produced: {detail}",
                max_bytes=self.dlq_max_bytes,
            )
        if any(k == "error.detail.send" for k, _ in record.headers):
            raise DeliveryError(
                f"even a minimal dead-letter copy cannot be produced to {self.dlq_topic!r}: "
                f"{detail} (check the topic exists and this client may write to it)"
            ) from exc
        self.stats.truncated += 1
        minimal = minimal_dead_letter(source, self.dlq_topic, record.reason or SEND_FAILED, detail)
        return OutRecord(
            minimal.topic,
            minimal.key,
            minimal.value,
            "dead_letter",
            [*minimal.headers, ("error.detail.send", detail.encode()[:1024])],
            source,
            minimal.reason,
        )

    # -- offsets ----------------------------------------------------------------------------

    def commit_async(self) -> None:
        """Commit the delivered batches' offsets without waiting (at-least-once)."""
        if self.transactional or not self._uncommitted:
            return
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in self._uncommitted.items()
        }
        self._uncommitted = {}
        self._batches_since_commit = 0
        try:
            self.consumer.commit_async(offsets, callback=self._committed)
        except KafkaError as exc:
            self._commit_failed(exc)

    def _committed(self, offsets: Any, response: Any) -> None:
        if isinstance(response, BaseException):
            self._commit_failed(response)

    def _commit_failed(self, exc: BaseException) -> None:
        # The next commit carries later offsets for the same partitions; until then a restart
        # re-reads (and re-publishes) at most these batches.
        self.stats.commit_failures += 1
        self._log_once(
            f"commit-{type(exc).__name__}",
            f"an offset commit failed (the next one covers it): {type(exc).__name__}: {exc}",
        )

    def commit_sync(self, timeout_s: float = 10.0) -> bool:
        """Commit what is pending and wait (shutdown, revocation); False if it failed."""
        if self.transactional:
            return True
        pending = dict(self._uncommitted)
        if not pending:
            return True
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in pending.items()
        }
        try:
            self.consumer.commit(offsets, timeout_ms=int(timeout_s * 1000))
        except Exception as exc:  # a broker gone at shutdown: the offsets are re-read later
            self._commit_failed(exc)
            return False
        self._uncommitted = {}
        return True

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions handed to another member: their uncommitted offsets are not ours."""
        for key in partitions:
            self._uncommitted.pop(key, None)

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_due(self) -> bool:
        return (
            self.writer is not None
            and time.monotonic() - self._last_checkpoint >= self.checkpoint_interval_s
        )

    def checkpoint(self, *, force: bool = False) -> bool:
        """Take the engine state now (between batches) and hand it to the writer."""
        if self.writer is None or self._state is None or self._checkpoint_meta is None:
            return False
        if not self.clean:
            log.warning("no checkpoint: the last batch did not complete")
            return False
        if not force and not self.checkpoint_due():
            return False
        if self.writer.fatal is not None:
            raise self.writer.fatal
        t0 = time.monotonic()
        state = None if force or self._state_if_idle is None else self._state_if_idle()
        if state is None and not force and self._state_if_idle is not None:
            return False  # the trainer is mid-step: due again after the next batch
        if state is None:
            state = self._state()
        meta = self._checkpoint_meta(dict(self.positions))
        self.writer.submit(state, meta)
        pause = time.monotonic() - t0
        self._last_checkpoint = time.monotonic()
        if self._on_checkpoint_pause is not None:
            self._on_checkpoint_pause(pause)
        return True


class _NotAcknowledgedError(KafkaError):  # type: ignore[misc]
    retriable = True


def _abortable(exc: BaseException) -> bool:
    # kafka-python raises KafkaError subclasses for a transaction in an abortable error state;
    # any non-fatal error of the transaction manager can be aborted and the batch re-done.
    name = type(exc).__name__
    return name not in {"ProducerFencedError", "TransactionalIdAuthorizationFailedError"}
