"""Dead-letter queue: bad messages go to `asset-events.dlq` with their original bytes and a reason.

Headers added to the original ones (DESIGN.md): `error` (a `Reason` value), `error.detail`,
`source.topic`, `source.partition`, `source.offset`. Each reason is counted and logged once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from kafka import KafkaProducer

from streamval.logs import LogOnce

log = logging.getLogger(__name__)


class SourceMessage(Protocol):
    """The parts of a consumed Kafka record the DLQ needs (kafka-python's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


def dlq_headers(message: SourceMessage, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """The original headers plus the five that say why and where from."""
    original = [
        (k, v) for k, v in (message.headers or []) if not k.startswith(("error", "source."))
    ]
    return [
        *original,
        ("error", reason.encode()),
        ("error.detail", detail.encode("utf-8", errors="replace")[:4096]),
        ("source.topic", message.topic.encode()),
        ("source.partition", str(message.partition).encode()),
        ("source.offset", str(message.offset).encode()),
    ]


class DeadLetterQueue:
    """Sends rejected messages to the DLQ; the caller flushes the producer before committing."""

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        *,
        on_dead_letter: Callable[[str], None] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.counts: Counter[str] = Counter()
        self._on_dead_letter = on_dead_letter
        self._log_once = LogOnce(log)

    def send(self, message: SourceMessage, reason: str, detail: str) -> Any:
        """Dead-letter one message; returns the producer's future."""
        self.counts[reason] += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter(reason)
        self._log_once(
            reason,
            f"dead-lettered a message: {reason}: {detail}",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )
        # A record with neither key nor value cannot be produced as is; keep it as an empty value.
        value = b"" if message.key is None and message.value is None else message.value
        return self.producer.send(
            self.topic,
            key=message.key,
            value=value,
            headers=dlq_headers(message, reason, detail),
            partition=None,
        )
