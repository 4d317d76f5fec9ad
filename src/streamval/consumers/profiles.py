"""Every process's asset profiles on a compacted topic, so the clustering owner fits on all.

Each process publishes the profile material of its ready assets (`models.shared.AssetProfile`,
key = asset id) when it changes materially: when an asset first has `engine.min_history`
values, then each time its count of values has grown by an eighth. Every process reads the
whole topic in the background (compaction keeps one record per asset); the clustering owner's
fits take the assets it does not hold itself from there (`Engine.profile_source`).

A record that is not a profile is logged once per kind, counted and ignored; a tombstone (null
value) removes its asset.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamval.config import Settings
from streamval.logs import LogOnce
from streamval.models.shared import AssetProfile
from streamval.stream.kafka.clients import close_producer, make_consumer, make_producer

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
FLUSH_TIMEOUT_S = 30.0
BACKOFF_S = 1.0
GROWTH = 8  # republish once an asset's values grew by 1/GROWTH since its last profile
# At most this many profiles per interval (about 60 us each on the poll loop): a start with a
# million ready assets spreads their first profiles over intervals instead of stalling the loop.
MAX_PER_INTERVAL = 5000


class ProfileSync:
    """Reads every asset's latest profile in the background; publishes this process's."""

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.topic = settings.profiles_topic()
        self.on_rejected = on_rejected
        self.rejected = 0
        self.published = 0
        self._profiles: dict[str, AssetProfile] = {}
        self._sent: dict[str, int] = {}  # asset -> its values count when last published
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._log_once = LogOnce(log)
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading every partition of the topic from its beginning."""
        consumer = self._consumer = make_consumer(
            self.settings,
            group_id=None,
            client_id=f"{self.settings.consumer.client_id}-profiles",
            auto_offset_reset="earliest",
        )
        self._assign(consumer)
        self._thread = threading.Thread(target=self._loop, name="profiles", daemon=True)
        self._thread.start()

    def _assign(self, consumer: KafkaConsumer) -> bool:
        """Read every partition from the beginning; False while the topic's metadata is not
        known yet (the reader tries again)."""
        partitions = [
            TopicPartition(self.topic, p)
            for p in sorted(consumer.partitions_for_topic(self.topic) or ())
        ]
        if not partitions:
            return False
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return True

    def profiles(self) -> list[AssetProfile]:
        """The latest profile of every asset read so far (any process's)."""
        with self._lock:
            return list(self._profiles.values())

    def due(self, counts: dict[str, int]) -> list[str]:
        """The assets (of `counts`: asset -> values seen) whose profile should go out now, at
        most `MAX_PER_INTERVAL` (never published first, then the most grown)."""
        sent = self._sent
        due = [
            a
            for a, n in counts.items()
            if a not in sent or n >= sent[a] + max(1, sent[a] // GROWTH)
        ]
        if len(due) > MAX_PER_INTERVAL:
            due.sort(key=lambda a: (a in sent, sent.get(a, 0) - counts[a]))
            due = due[:MAX_PER_INTERVAL]
        return due

    def publish(self, profiles: Sequence[AssetProfile]) -> None:
        """Send the profiles and wait until the broker has them all."""
        if not profiles:
            return
        if self._producer is None:
            self._producer = make_producer(self.settings, client_id=f"{self.instance}-profiles")
        for p in profiles:
            self._producer.send(self.topic, key=p.asset.encode(), value=p.to_json())
        self._producer.flush(timeout=FLUSH_TIMEOUT_S)
        for p in profiles:
            self._sent[p.asset] = p.n_values
        self.published += len(profiles)

    def receive(self, key: bytes | None, value: bytes | None) -> AssetProfile | None:
        """Take one record of the topic: the profile, or None (a tombstone or refused)."""
        if value is None:
            if key is not None:
                with self._lock:
                    self._profiles.pop(key.decode(errors="replace"), None)
            return None
        try:
            profile = AssetProfile.from_json(value)
        except ValueError as exc:
            self.rejected += 1
            kind = str(exc).split(":", 1)[0]
            self._log_once(
                f"profile:{kind}",
                f"ignored a message on {self.topic} that is not a usable profile: {exc}",
            )
            if self.on_rejected is not None:
                self.on_rejected("invalid")
            return None
        with self._lock:
            self._profiles[profile.asset] = profile
        return profile

    def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stop.is_set():
            try:
                if not consumer.assignment() and not self._assign(consumer):
                    self._stop.wait(BACKOFF_S)
                    continue
                records = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            except Exception as exc:  # the broker away: keep what was read, retry
                self._log_once(f"poll:{type(exc).__name__}", f"reading {self.topic} failed: {exc}")
                self._stop.wait(BACKOFF_S)
                continue
            for messages in records.values():
                for message in messages:
                    self.receive(message.key, message.value)

    def close(self) -> None:
        """Stop the reader and close the clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the profiles consumer failed: %s", exc)
        if self._producer is not None:
            close_producer(self._producer, 10.0)
