"""One clustering per deployment, shared through a compacted Kafka topic.

Ownership: the group member that is assigned partition 0 of the input topic fits the
clustering (bootstrap, re-fits, as a single process does) and publishes every fit on the
clusterings topic (`Settings.clusterings_topic()`: 1 partition, compacted, key ``clustering``)
with a version one above the latest it has seen. The others never fit: a background thread
reads the topic from the beginning (compaction keeps the latest) and the poll loop adopts every
newer version between batches (`Engine.adopt_clustering`). A rebalance that moves partition 0
moves the ownership with it: the new owner has already adopted the latest version, so its next
fit is a re-fit of that clustering with stable ids, published with the next version.
During a rebalance two members may briefly both believe they own it; a follower adopts only a
version above the one it holds, so the first of two equal versions wins there.

A message that is not a clustering (foreign, damaged, of another format) is logged once per
kind, counted, and ignored; it never stops the service.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streamval.config import Settings
from streamval.consumers.topic_sync import POLL_TIMEOUT_MS, TopicSync
from streamval.models.shared import SharedClustering

log = logging.getLogger(__name__)

KEY = b"clustering"
SEND_TIMEOUT_S = 30.0
CATCH_UP_S = 10.0


class ClusteringSync(TopicSync):
    """Reads the latest clustering of the deployment in the background; publishes this one's."""

    what = "clusterings"

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(settings, instance, settings.clusterings_topic(), on_rejected=on_rejected)
        self.received = 0
        self._latest: SharedClustering | None = None

    def start(self) -> None:
        """Start reading the topic from its beginning (the caller created the topic)."""
        consumer = self._new_consumer()
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        self._catch_up(consumer, tp)
        self._start_reader()

    def _catch_up(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        """Read up to the end offset of now (at most `CATCH_UP_S`), so a starting process
        values its first batch with the latest clustering rather than the warming fallback."""
        deadline = time.monotonic() + CATCH_UP_S
        try:
            end = consumer.end_offsets([tp])[tp]
            while consumer.position(tp) < end and time.monotonic() < deadline:
                for messages in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
                    for message in messages:
                        self.receive(message.value)
        except Exception as exc:  # the reader thread keeps trying
            log.warning("reading the latest clustering at start failed: %s", exc)

    def latest(self) -> SharedClustering | None:
        """The clustering with the highest version read or published so far."""
        with self._lock:
            return self._latest

    def publish(self, shared: SharedClustering) -> None:
        """Send `shared` and wait for the broker's ack (a fit is rare; losing one is not ok)."""
        producer = self._producer_of_own()
        producer.send(self.topic, key=KEY, value=shared.to_json()).get(SEND_TIMEOUT_S)
        self._offer(shared)
        log.info(
            "published clustering",
            extra={"version": shared.version, "clusters": shared.ids, "topic": self.topic},
        )

    def receive(self, value: bytes | None) -> SharedClustering | None:
        """Take one message value from the topic: the clustering, or None if it was refused."""
        try:
            shared = SharedClustering.from_json(value)
        except ValueError as exc:
            self._reject(exc, "clustering")
            return None
        self.received += 1
        self._offer(shared)
        return shared

    def _offer(self, shared: SharedClustering) -> None:
        with self._lock:
            if self._latest is None or shared.version > self._latest.version:
                self._latest = shared

    def _take(self, message: Any) -> None:
        self.receive(message.value)
