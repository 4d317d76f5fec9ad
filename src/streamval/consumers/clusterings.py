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
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamval.config import Settings
from streamval.logs import LogOnce
from streamval.models.shared import SharedClustering
from streamval.stream.kafka.clients import close_producer, make_consumer, make_producer

log = logging.getLogger(__name__)

KEY = b"clustering"
POLL_TIMEOUT_MS = 500
SEND_TIMEOUT_S = 30.0
BACKOFF_S = 1.0
CATCH_UP_S = 10.0


class ClusteringSync:
    """Reads the latest clustering of the deployment in the background; publishes this one's."""

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.topic = settings.clusterings_topic()
        self.on_rejected = on_rejected
        self.rejected = 0
        self.received = 0
        self._latest: SharedClustering | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._log_once = LogOnce(log)
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading the topic from its beginning (the caller created the topic)."""
        consumer = self._consumer = make_consumer(
            self.settings,
            group_id=None,
            client_id=f"{self.settings.consumer.client_id}-clusterings",
            auto_offset_reset="earliest",
        )
        tp = TopicPartition(self.topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        self._catch_up(consumer, tp)
        self._thread = threading.Thread(target=self._loop, name="clusterings", daemon=True)
        self._thread.start()

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
        if self._producer is None:
            # Its own producer: the service's may be transactional, and a clustering is not
            # part of any batch's transaction.
            self._producer = make_producer(self.settings, client_id=f"{self.instance}-clusterings")
        self._producer.send(self.topic, key=KEY, value=shared.to_json()).get(SEND_TIMEOUT_S)
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
            self.rejected += 1
            kind = str(exc).split(":", 1)[0]
            self._log_once(
                f"clustering:{kind}",
                f"ignored a message on {self.topic} that is not a usable clustering: {exc}",
            )
            if self.on_rejected is not None:
                self.on_rejected("invalid")
            return None
        self.received += 1
        self._offer(shared)
        return shared

    def _offer(self, shared: SharedClustering) -> None:
        with self._lock:
            if self._latest is None or shared.version > self._latest.version:
                self._latest = shared

    def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            try:
                records = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except Exception as exc:  # the broker away: keep the latest, retry
                self._log_once(f"poll:{type(exc).__name__}", f"reading {self.topic} failed: {exc}")
                self._stop.wait(BACKOFF_S)
                continue
            for messages in records.values():
                for message in messages:
                    self.receive(message.value)

    def close(self) -> None:
        """Stop the reader and close the clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the clusterings consumer failed: %s", exc)
        if self._producer is not None:
            close_producer(self._producer, 10.0)
