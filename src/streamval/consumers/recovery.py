"""Recovery after a restart: restore the checkpoint, re-read from its offsets, publish once.

1. `restore()` loads the checkpoint, checks it belongs to this group, topic and partition count
   (`CheckpointError` naming the problem otherwise: the service stops, unless started with
   `--discard-checkpoint`, which moves the file aside and starts fresh) and loads the engine.
2. When a partition is first assigned, it is sought to its checkpointed offset and paused
   (`on_assigned`; kafka-python forbids blocking calls in the rebalance callback).
3. On the loop thread, `resume()` reads the group's committed offset of those partitions: the
   events between the checkpoint and the committed offset were published (or dead-lettered)
   before the crash, so they are re-learned but produce nothing (`already_done`).

Later assignments of a running service resume at the committed offset: the live engine is
already past its checkpoint. The service buffers fetched records for event-time order and drops
a revoked partition's buffer, while kafka-python keeps the fetch position of a partition that is
assigned again; so every later assignment is paused in the callback and sought to the committed
offset on the loop thread (`resume()`), as the Java client does.

Takeover (a partition this engine does not reflect up to its committed offset: another process
valued it, and this one's checkpoint does not cover it): the input partition itself is the
changelog of its assets' windows, as Kafka Streams reuses a source topic
(`reuse.ktable.source.topics`). `resume()` returns, per such partition, the range of up to
`consumer.takeover_lookback` records before the committed offset; the service reads it with
`read_back` and gives the events to `Engine.absorb` (state only: nothing valued, published,
learned or counted) before the partition's first batch. A partition this engine already
reflects (assigned back after an eager rebalance) is not read again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streamval.config import Settings
from streamval.consumers.batch import ValuationEngine
from streamval.consumers.checkpoint import CheckpointMeta, CheckpointStore
from streamval.consumers.records import InRecord
from streamval.errors import CheckpointError
from streamval.stream.kafka.clients import make_consumer

log = logging.getLogger(__name__)


class Recovery:
    """Restores the engine and bounds what is re-published; see the module docstring."""

    def __init__(self, store: CheckpointStore | None, *, lookback: int = 0) -> None:
        self.store = store
        self.lookback = lookback  # consumer.takeover_lookback; 0: no takeover read
        # Per partition, the next offset of the events the engine reflects (checkpoint, then
        # every batch, then takeover reads): a partition assigned below it needs no read back.
        self.reflected: dict[tuple[str, int], int] = {}
        # Offsets of the restored checkpoint, kept so later checkpoints still cover partitions
        # this process no longer owns (the engine state reflects their events too).
        self.checkpoint_offsets: dict[tuple[str, int], int] = {}
        self._to_seek: dict[tuple[str, int], int] = {}
        self._restoring: dict[TopicPartition, int | None] = {}  # None: seek to the committed
        self._done_until: dict[tuple[str, int], int] = {}
        self._assigned_before = False

    def restore(
        self, engine: ValuationEngine, expect: CheckpointMeta, *, discard: bool = False
    ) -> bool:
        """Load the checkpoint into `engine`; whether one was restored."""
        if self.store is None:
            return False
        try:
            checkpoint = self.store.load(expect)
            if checkpoint is not None:
                try:
                    engine.load_state_dict(checkpoint.state)
                except CheckpointError:
                    raise
                except Exception as exc:
                    raise CheckpointError(
                        f"checkpoint {self.store.path} does not fit the engine: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
        except CheckpointError as exc:
            if not discard:
                raise CheckpointError(
                    f"{exc}. Refusing to start: remove or fix the checkpoint, or pass "
                    "--discard-checkpoint to start from the committed offsets with a fresh engine"
                ) from None
            moved = self.store.discard()
            log.warning(
                "discarded an unusable checkpoint (--discard-checkpoint)",
                extra={"problem": str(exc), "moved_to": [str(p) for p in moved]},
            )
            return False
        if checkpoint is None:
            return False
        self.checkpoint_offsets = dict(checkpoint.meta.offsets)
        self._to_seek = dict(checkpoint.meta.offsets)
        self.reflected.update(checkpoint.meta.offsets)
        log.info(
            "restored checkpoint",
            extra={
                "path": str(self.store.path),
                "age_s": round(time.time() - checkpoint.meta.created_at, 1),
                "partitions": len(checkpoint.meta.offsets),
            },
        )
        return True

    def on_assigned(self, consumer: KafkaConsumer, assigned: list[TopicPartition]) -> None:
        """Seek first assignments to the checkpoint and pause them; pause later assignments
        until they are sought to the committed offset (rebalance callback)."""
        for tp in assigned:
            offset = self._to_seek.pop((tp.topic, tp.partition), None)
            if offset is None:
                if self._assigned_before or self.lookback:
                    consumer.pause(tp)
                    self._restoring[tp] = None
                continue
            consumer.seek(tp, offset)
            consumer.pause(tp)
            self._restoring[tp] = offset
            log.info(
                "resuming from checkpoint", extra={"partition": tp.partition, "offset": offset}
            )
        self._assigned_before = True

    @property
    def restoring(self) -> bool:
        return bool(self._restoring)

    @property
    def paused(self) -> set[TopicPartition]:
        """Partitions held paused until their committed offsets are read."""
        return set(self._restoring)

    def resume(
        self, consumer: KafkaConsumer, assigned: set[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, int]]:
        """Read the committed offsets of restored partitions, then let them be fetched. Returns
        the takeover reads due: per partition, the offsets [start, committed) to absorb."""
        takeover: dict[TopicPartition, tuple[int, int]] = {}
        restoring = dict(self._restoring)
        for tp, offset in restoring.items():
            if tp not in assigned:
                self._restoring.pop(tp, None)
                continue
            committed = consumer.committed(tp)  # may raise during an outage: retried
            self._restoring.pop(tp, None)
            if offset is None:
                if committed is not None:
                    consumer.seek(tp, committed)
                    start = self._takeover_start(tp, committed)
                    if start is not None:
                        takeover[tp] = (start, committed)
            elif committed is not None and committed > offset:
                self._done_until[(tp.topic, tp.partition)] = committed
        consumer.resume(*[tp for tp in restoring if tp in assigned])
        return takeover

    def _takeover_start(self, tp: TopicPartition, committed: int) -> int | None:
        """Where a takeover read of `tp` starts, or None when none is due (disabled, nothing
        committed yet, or the engine already reflects the partition up to `committed`)."""
        reflected = self.reflected.get((tp.topic, tp.partition), 0)
        if not self.lookback or committed <= reflected:
            return None
        return max(reflected, committed - self.lookback, 0)

    def reflect(self, offsets: dict[tuple[str, int], int]) -> None:
        """The engine now reflects these partitions' events up to these next offsets."""
        for key, offset in offsets.items():
            if offset > self.reflected.get(key, -1):
                self.reflected[key] = offset

    def already_done(self, record: InRecord) -> bool:
        """Whether the record's outputs were produced before the crash."""
        until = self._done_until.get((record.topic, record.partition))
        return until is not None and record.offset < until

    def on_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self._done_until.pop((tp.topic, tp.partition), None)
            self._restoring.pop(tp, None)

    def offsets_with(self, positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], Any]:
        """The offsets a checkpoint records: the restored ones updated with today's."""
        merged = {**self.checkpoint_offsets, **positions}
        self.checkpoint_offsets = merged
        return merged


# A takeover read gives up on a partition that yields nothing for this long (records deleted
# by retention are skipped by the seek; this guards against a broker that stops answering).
READ_BACK_STALL_S = 10.0


def read_back(settings: Settings, ranges: dict[TopicPartition, tuple[int, int]]) -> list[InRecord]:
    """The records of each partition in [start, end), read by a consumer outside the group
    (read_committed, as the service reads): the input partition as its assets' changelog.
    Records deleted by retention are skipped; a partition that stalls is given up on with a
    warning (its assets then warm up from their next events, as without a read)."""
    if not ranges:
        return []
    consumer = make_consumer(
        settings,
        group_id=None,
        client_id=f"{settings.consumer.client_id}-takeover",
        enable_auto_commit=False,
    )
    out: list[InRecord] = []
    try:
        consumer.assign(list(ranges))
        beginning = consumer.beginning_offsets(list(ranges))
        left: dict[TopicPartition, int] = {}
        for tp, (start, end) in ranges.items():
            first = max(start, beginning.get(tp, 0) or 0)
            if first < end:
                consumer.seek(tp, first)
                left[tp] = end
            else:
                consumer.pause(tp)
        last_progress = time.monotonic()
        while left:
            got = consumer.poll(timeout_ms=500, max_records=10_000)
            for tp, messages in got.items():
                until = left.get(tp)
                if until is not None:
                    out.extend(m for m in messages if m.offset < until)
            for tp, end in list(left.items()):
                if consumer.position(tp) >= end:
                    del left[tp]
                    consumer.pause(tp)
            if got:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > READ_BACK_STALL_S:
                log.warning(
                    "takeover read stalled; its assets warm up from their next events",
                    extra={"partitions": sorted(tp.partition for tp in left)},
                )
                break
    finally:
        consumer.close(autocommit=False)
    return out
