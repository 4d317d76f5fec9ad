"""A compacted topic this process reads in the background and writes to (the deployment's
clustering, every process's asset profiles): one reader thread from the topic's beginning, a
producer of its own (the service's may be transactional, and these records belong to no
batch), and records that are not usable logged once per kind, counted and ignored."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from streamval.config import Settings
from streamval.logs import LogOnce
from streamval.stream.kafka.clients import close_producer, make_consumer, make_producer

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
BACKOFF_S = 1.0


class TopicSync:
    """The reader thread, the producer and the bookkeeping shared by the topic's users."""

    what = "records"  # of this topic, in client ids and log lines
    max_message_bytes: int | None = None  # records larger than the client's default fetch size

    def __init__(
        self,
        settings: Settings,
        instance: str,
        topic: str,
        *,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.topic = topic
        self.on_rejected = on_rejected
        self.rejected = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._log_once = LogOnce(log)
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None

    def _new_consumer(self) -> KafkaConsumer:
        """A consumer outside any group that reads from the beginning."""
        fetch = (
            {}
            if self.max_message_bytes is None
            else {"max_partition_fetch_bytes": self.max_message_bytes}
        )
        self._consumer = make_consumer(
            self.settings,
            group_id=None,
            client_id=f"{self.settings.consumer.client_id}-{self.what}",
            auto_offset_reset="earliest",
            **fetch,
        )
        return self._consumer

    def _start_reader(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.what, daemon=True)
        self._thread.start()

    def _producer_of_own(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(self.settings, client_id=f"{self.instance}-{self.what}")
        return self._producer

    def _reject(self, exc: ValueError, kind_of_record: str) -> None:
        """A record that is not usable: counted, logged once per kind, reported."""
        self.rejected += 1
        kind = str(exc).split(":", 1)[0]
        self._log_once(
            f"{kind_of_record}:{kind}",
            f"ignored a message on {self.topic} that is not a usable {kind_of_record}: {exc}",
        )
        if self.on_rejected is not None:
            self.on_rejected("invalid")

    def _ready(self, consumer: KafkaConsumer) -> bool:
        """Whether the reader can poll (a subclass may assign partitions here first)."""
        return True

    def _take(self, message: Any) -> None:
        """One record read from the topic."""
        raise NotImplementedError

    def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            try:
                if not self._ready(consumer):
                    self._stop.wait(BACKOFF_S)
                    continue
                records = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except Exception as exc:  # the broker away: keep what was read, retry
                self._log_once(f"poll:{type(exc).__name__}", f"reading {self.topic} failed: {exc}")
                self._stop.wait(BACKOFF_S)
                continue
            for messages in records.values():
                for message in messages:
                    self._take(message)

    def close(self) -> None:
        """Stop the reader and close the clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the %s consumer failed: %s", self.what, exc)
        if self._producer is not None:
            close_producer(self._producer, 10.0)
