"""Group assignment on a real broker: a member leaving moves only its own partitions.

Every partition that changes owner costs its new owner a takeover read (`consumer.takeover_
lookback` records), so the consumers `make_consumer` builds prefer the sticky assignor: the
survivors keep what they had and share the leaver's partitions.
"""

from __future__ import annotations

import threading
import time

from streamval.config import Settings
from streamval.stream.kafka.clients import make_consumer
from streamval.stream.kafka.topics import ensure_topics

PARTITIONS = 6


class Member:
    """A group member polling in its own thread (a consumer is not thread-safe), publishing
    what it owns; `leave()` closes it from that thread (a clean leave: the group rebalances)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings, self.name = settings, name
        self.owned: set[int] = set()
        self._leave = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _run(self) -> None:
        consumer = make_consumer(self.settings, self.settings.topics.input, client_id=self.name)
        try:
            while not self._leave.is_set():
                consumer.poll(timeout_ms=100)
                self.owned = {tp.partition for tp in consumer.assignment()}
        finally:
            self.owned = set()
            consumer.close(autocommit=False)

    def leave(self) -> None:
        self._leave.set()
        self._thread.join(timeout=60)


def _settle(members: list[Member], timeout_s: float = 90) -> list[set[int]]:
    """Until each member owns partitions and together they cover the topic once, unchanged
    for a second (a rebalance passes through partial states)."""
    deadline = time.monotonic() + timeout_s
    owned: list[set[int]] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = [set(m.owned) for m in members]
        whole = all(now) and sum(len(o) for o in now) == PARTITIONS
        whole = whole and set().union(*now) == set(range(PARTITIONS))
        if not whole or now != owned:
            since = time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return now
        owned = now
        time.sleep(0.05)
    raise AssertionError(f"no settled assignment in {timeout_s} s: {owned}")


def test_a_leaving_member_moves_only_its_own_partitions(kafka_settings: Settings) -> None:
    settings = kafka_settings.model_copy(
        update={"topics": kafka_settings.topics.model_copy(update={"partitions": PARTITIONS})}
    )
    ensure_topics(settings, [settings.topics.input])
    members = [Member(settings, f"m{i}") for i in range(3)]
    try:
        before = _settle(members)
        assert all(len(o) == 2 for o in before), before
        members[0].leave()
        after = _settle(members[1:])
        for kept, now in zip(before[1:], after, strict=True):
            assert kept <= now, f"a survivor lost partitions: had {kept}, now {now}"
        assert sorted(len(o) for o in after) == [3, 3]
    finally:
        for m in members:
            m.leave()
