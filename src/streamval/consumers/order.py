"""Event-time order across partitions: merge what each partition fetched, hold back the ones ahead.

Each partition's records arrive in offset order; within a partition, event time is (roughly)
increasing. `EventTimeMerger` keeps a buffer per assigned partition and releases records by a
k-way merge on the heads: always the head with the smallest event time (ties: the lower
partition), so a batch handed to the engine is in event-time order across partitions. A rejected
record (no event time) is released as soon as it is at the head of its partition.

A partition with nothing buffered but data known to be waiting on the broker (lag > 0, or not
known yet) blocks the release: its next event may be older than every buffered one. It blocks
for at most `max_wait_s` (as Kafka Streams' `max.task.idle.ms`); after that the others go on
without it. Partitions whose buffer holds `pause_at` records or more are `ahead` and should be
paused, so the consumer fetches the ones that are behind and memory stays bounded.

    >>> m = EventTimeMerger(max_wait_s=0.0)
    >>> m.assign([0, 1], now=0.0)
    >>> m.add(0, [("a", 3), ("b", 5)], [3, 5]); m.add(1, [("c", 4)], [4])
    >>> m.release(10, now=0.0, has_lag=lambda p: False)
    [('a', 3), ('c', 4), ('b', 5)]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)
T = TypeVar("T")

UNORDERED = -math.inf  # the order key of a record without an event time (dead letters)


class EventTimeMerger(Generic[P, T]):
    """Per-partition buffers released in event-time order; see the module docstring."""

    def __init__(self, *, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self._buffers: dict[P, deque[tuple[float, T]]] = {}
        self._rank: dict[P, int] = {}
        self._empty_since: dict[P, float] = {}

    def assign(self, partitions: Iterable[P], *, now: float) -> None:
        """Partitions newly owned; they start empty."""
        for p in partitions:
            if p not in self._buffers:
                self._buffers[p] = deque()
                self._empty_since[p] = now
        order = sorted(self._buffers, key=repr)
        self._rank = {p: i for i, p in enumerate(order)}

    def revoke(self, partitions: Iterable[P]) -> int:
        """Forget partitions handed away; returns the buffered records dropped (re-read by the
        next owner from the committed offset)."""
        dropped = 0
        for p in partitions:
            dropped += len(self._buffers.pop(p, ()))
            self._empty_since.pop(p, None)
            self._rank.pop(p, None)
        return dropped

    def add(self, partition: P, items: Sequence[T], keys: Sequence[float]) -> None:
        """Append a partition's fetched records (offset order) with their order keys."""
        if partition not in self._buffers:
            self.assign([partition], now=0.0)
        buffer = self._buffers[partition]
        buffer.extend(zip(keys, items, strict=True))
        if buffer:
            self._empty_since.pop(partition, None)

    def release(self, limit: int, *, now: float, has_lag: Callable[[P], bool]) -> list[T]:
        """Up to `limit` records in event-time order; fewer (or none) while a partition that is
        behind has nothing fetched yet and has not waited `max_wait_s`."""
        out: list[T] = []
        while len(out) < limit:
            best: P | None = None
            best_key = (math.inf, 0)
            for p, buffer in self._buffers.items():
                if not buffer:
                    continue
                key = (buffer[0][0], self._rank.get(p, 0))
                if best is None or key < best_key:
                    best, best_key = p, key
            if best is None:
                break
            if best_key[0] != UNORDERED and self._blocked(now, has_lag):
                break
            buffer = self._buffers[best]
            out.append(buffer.popleft()[1])
            if not buffer:
                self._empty_since[best] = now
        return out

    def _blocked(self, now: float, has_lag: Callable[[P], bool]) -> bool:
        for p, buffer in self._buffers.items():
            if buffer:
                continue
            since = self._empty_since.setdefault(p, now)
            if now - since < self.max_wait_s and has_lag(p):
                return True
        return False

    def ahead(self, pause_at: int) -> set[P]:
        """Partitions holding at least `pause_at` buffered records."""
        return {p for p, buffer in self._buffers.items() if len(buffer) >= pause_at}

    def buffered(self, partition: P | None = None) -> int:
        """Records buffered (in one partition, or in all)."""
        if partition is not None:
            return len(self._buffers.get(partition, ()))
        return sum(len(b) for b in self._buffers.values())

    @property
    def partitions(self) -> list[P]:
        return list(self._buffers)
