"""The event source: poll `asset-events`, parse every message, dead-letter the bad ones.

`EventSource.poll()` returns the valid events of one poll together with the offsets to commit once
their outputs are acknowledged. Nothing is lost: every consumed message is either returned as a
`SourcedEvent` or sent to the DLQ (and counted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streamval.consumers.dlq import DeadLetterQueue
from streamval.stream.contract.schema import AssetEvent, Rejection, parse_event


@dataclass(frozen=True, slots=True)
class SourcedEvent:
    """A valid event and where it came from."""

    event: AssetEvent
    message: Any  # kafka-python ConsumerRecord, kept for dead-lettering late events
    received: float  # time.monotonic() at receipt, for processing latency


@dataclass(slots=True)
class Poll:
    """What one poll produced: valid events in partition order, and the offsets it covers."""

    events: list[SourcedEvent] = field(default_factory=list)
    rejected: int = 0
    consumed: dict[int, int] = field(default_factory=dict)  # partition -> messages
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read


class EventSource:
    """Parses what a consumer polls; invalid messages go to the DLQ with their reason."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        dlq: DeadLetterQueue,
        *,
        max_message_bytes: int,
        poll_timeout_ms: int = 500,
        max_records: int | None = None,
        already_dead_lettered: Callable[[Any], bool] | None = None,
    ) -> None:
        self.consumer = consumer
        self.dlq = dlq
        self.max_message_bytes = max_message_bytes
        self.poll_timeout_ms = poll_timeout_ms
        self.max_records = max_records
        self._already_dead_lettered = already_dead_lettered

    def poll(self) -> Poll:
        """One bounded poll (at most `max_records` messages)."""
        records = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
        now = time.monotonic()
        out = Poll()
        for tp, messages in records.items():
            for message in messages:
                parsed = parse_event(message.value, max_bytes=self.max_message_bytes)
                if isinstance(parsed, Rejection):
                    out.rejected += 1
                    # Re-read after a restore: it went to the DLQ before the crash.
                    if not (self._already_dead_lettered and self._already_dead_lettered(message)):
                        self.dlq.send(message, parsed.reason.value, parsed.detail)
                else:
                    out.events.append(SourcedEvent(parsed, message, now))
            if messages:
                out.consumed[tp.partition] = out.consumed.get(tp.partition, 0) + len(messages)
                out.offsets[tp] = messages[-1].offset + 1
        return out
