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
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streamval.consumers.batch import ValuationEngine
from streamval.consumers.checkpoint import CheckpointMeta, CheckpointStore
from streamval.consumers.records import InRecord
from streamval.errors import CheckpointError

log = logging.getLogger(__name__)


class Recovery:
    """Restores the engine and bounds what is re-published; see the module docstring."""

    def __init__(self, store: CheckpointStore | None) -> None:
        self.store = store
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
                if self._assigned_before:
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

    def resume(self, consumer: KafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Read the committed offsets of restored partitions, then let them be fetched."""
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
            elif committed is not None and committed > offset:
                self._done_until[(tp.topic, tp.partition)] = committed
        consumer.resume(*[tp for tp in restoring if tp in assigned])

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
