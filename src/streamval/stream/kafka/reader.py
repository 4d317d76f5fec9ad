"""Read a topic back from the beginning, outside any consumer group (reports, tests, benchmarks).

`read_topic(settings, topic)` returns the records up to the end offsets of the moment it is
called; `read_topic(..., expected=n)` waits for at least n records instead (they may still be
in flight) and then polls once more for `settle_s`, so a caller can assert that nothing beyond n
arrived. Records come in offset order within each partition.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from kafka import KafkaConsumer, TopicPartition

from streamval.config import Settings
from streamval.errors import BrokerError
from streamval.stream.kafka.clients import make_consumer

Isolation = Literal["read_committed", "read_uncommitted"]


def _assigned(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = [
        TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    return partitions


def read_topic(
    settings: Settings,
    topic: str,
    *,
    expected: int | None = None,
    timeout_s: float = 30.0,
    settle_s: float = 0.5,
    isolation_level: Isolation = "read_committed",
) -> list[Any]:
    """kafka-python `ConsumerRecord`s of `topic` from its beginning; see the module docstring.

    Without `expected`, not reaching the end offsets within `timeout_s` raises `BrokerError`;
    with it, the records read by then are returned (the caller's assertion says what is missing).
    """
    consumer = make_consumer(
        settings, group_id=None, enable_auto_commit=False, isolation_level=isolation_level
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        partitions = _assigned(consumer, topic)
        if expected is None:
            end = consumer.end_offsets(partitions)
            while any(consumer.position(tp) < end[tp] for tp in partitions):
                if time.monotonic() > deadline:
                    raise BrokerError(f"reading {topic!r} back did not reach its end in time")
                for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                    out.extend(records)
            return out
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                out.extend(records)
        for records in consumer.poll(timeout_ms=int(settle_s * 1000)).values():
            out.extend(records)
        return out
    finally:
        consumer.close(autocommit=False)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """partition -> end offset of `topic` (its record count, if nothing was transactional)."""
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: int(o) for tp, o in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close(autocommit=False)
