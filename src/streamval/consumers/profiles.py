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
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streamval.config import Settings
from streamval.consumers.topic_sync import TopicSync
from streamval.models.shared import AssetProfile

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0
GROWTH = 8  # republish once an asset's values grew by 1/GROWTH since its last profile
# At most this many profiles per interval (about 60 us each on the poll loop): a start with a
# million ready assets spreads their first profiles over intervals instead of stalling the loop.
MAX_PER_INTERVAL = 5000


class ProfileSync(TopicSync):
    """Reads every asset's latest profile in the background; publishes this process's."""

    what = "profiles"

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(settings, instance, settings.profiles_topic(), on_rejected=on_rejected)
        self.published = 0
        self._profiles: dict[str, AssetProfile] = {}
        self._sent: dict[str, int] = {}  # asset -> its values count when last published

    def start(self) -> None:
        """Start reading every partition of the topic from its beginning."""
        self._ready(self._new_consumer())
        self._start_reader()

    def _ready(self, consumer: KafkaConsumer) -> bool:
        """Read every partition from the beginning; False while the topic's metadata is not
        known yet (the reader tries again)."""
        if consumer.assignment():
            return True
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
        producer = self._producer_of_own()
        for p in profiles:
            producer.send(self.topic, key=p.asset.encode(), value=p.to_json())
        producer.flush(timeout=FLUSH_TIMEOUT_S)
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
            self._reject(exc, "profile")
            return None
        with self._lock:
            self._profiles[profile.asset] = profile
        return profile

    def _take(self, message: Any) -> None:
        self.receive(message.key, message.value)
