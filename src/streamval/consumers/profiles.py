"""Every process's asset profiles on a compacted topic, so the clustering owner fits on all.

Each process publishes the profile material of its ready assets (`models.shared.AssetProfile`,
key = asset id) when it changes materially: when an asset first has `engine.min_history`
values, then each time its count of values has grown by an eighth (and by at least
`MIN_GROWTH` values). Every process reads the
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

GROWTH = 8  # republish once an asset's values grew by 1/GROWTH since its last profile
# ... and by at least this many values: otherwise a young asset's profile went out with nearly
# every new value (a backlog of 30 steps sent one profile per six events).
MIN_GROWTH = 8
# At most this many profiles per interval: a start with a million ready assets spreads their
# first profiles over intervals.
MAX_PER_INTERVAL = 5000
# Profiles built and sent per loop iteration: about 100 us each (profile, JSON, send), so a
# chunk costs the loop about 13 ms instead of a stall of half a second for 2,000 at once.
CHUNK = 128


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
        self._queue: list[str] = []  # due, not yet sent (see `plan` and `next_chunk`)

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
        with self._lock:
            sent = dict(self._sent)
        due = [
            a
            for a, n in counts.items()
            if a not in sent or n >= sent[a] + max(MIN_GROWTH, sent[a] // GROWTH)
        ]
        if len(due) > MAX_PER_INTERVAL:
            due.sort(key=lambda a: (a in sent, sent.get(a, 0) - counts[a]))
            due = due[:MAX_PER_INTERVAL]
        return due

    def plan(self, counts: dict[str, int]) -> int:
        """Queue the profiles due now (see `due`) for `next_chunk`; how many are queued."""
        self._queue = self.due(counts)
        return len(self._queue)

    def next_chunk(self) -> list[str]:
        """The next `CHUNK` queued assets (empty once the queue is sent)."""
        chunk, self._queue = self._queue[:CHUNK], self._queue[CHUNK:]
        return chunk

    def publish(self, profiles: Sequence[AssetProfile]) -> None:
        """Send the profiles without waiting: the producer delivers them in the background; a
        profile the broker refuses is due again at the next interval."""
        if not profiles:
            return
        producer = self._producer_of_own()
        for p in profiles:
            with self._lock:  # before the send: a failed send calls back at once
                self._sent[p.asset] = p.n_values
            future = producer.send(self.topic, key=p.asset.encode(), value=p.to_json())
            future.add_errback(self._not_delivered, p.asset, p.n_values)
        self.published += len(profiles)

    def _not_delivered(self, asset: str, n_values: int, exc: BaseException) -> None:
        """The producer's I/O thread: a profile was not delivered; send it again later."""
        with self._lock:
            if self._sent.get(asset) == n_values:
                del self._sent[asset]
        self._log_once(
            f"publish:{type(exc).__name__}", f"a profile was not delivered to {self.topic}: {exc}"
        )

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
