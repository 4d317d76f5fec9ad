"""Event-time order across partitions: a k-way merge on the heads, bounded waiting, pausing."""

from __future__ import annotations

import random

from streamval.consumers.order import UNORDERED, EventTimeMerger


def merger(wait: float = 1.0) -> EventTimeMerger[int, str]:
    m: EventTimeMerger[int, str] = EventTimeMerger(max_wait_s=wait)
    m.assign([0, 1, 2], now=0.0)
    return m


def test_sorted_partitions_merge_into_one_sorted_stream_ties_by_partition() -> None:
    rng = random.Random(0)
    times = {p: sorted(rng.randrange(100) for _ in range(50)) for p in range(3)}
    m = merger()
    for p, ts in times.items():
        m.add(p, [f"{p}:{t}" for t in ts], [float(t) for t in ts])
    out = m.release(1000, now=0.0, has_lag=lambda p: False)
    keys = [(int(s.split(":")[1]), int(s.split(":")[0])) for s in out]
    assert keys == sorted(keys) and len(out) == 150


def test_a_partition_behind_with_data_waiting_holds_the_others_back_until_max_wait() -> None:
    m = merger(wait=1.0)
    m.add(0, ["a"], [10.0])
    m.add(1, ["b"], [11.0])
    # Partition 2 has nothing fetched yet but lag on the broker: wait for it.
    assert m.release(10, now=0.5, has_lag=lambda p: p == 2) == []
    m.add(2, ["c"], [5.0])
    assert m.release(10, now=0.6, has_lag=lambda p: False) == ["c", "a", "b"]
    # Nothing known to be waiting: no wait at all.
    m.add(0, ["d"], [20.0])
    assert m.release(10, now=0.7, has_lag=lambda p: False) == ["d"]
    # Lag, but the wait bound has passed: go on without it.
    m.add(0, ["e"], [30.0])
    assert m.release(10, now=5.0, has_lag=lambda p: True) == ["e"]


def test_rejected_records_leave_at_once_in_partition_order() -> None:
    m = merger()
    m.add(0, ["bad", "ok"], [UNORDERED, 50.0])
    assert m.release(10, now=0.0, has_lag=lambda p: p == 1) == ["bad"]


def test_partitions_ahead_are_reported_and_revoked_buffers_dropped() -> None:
    m = merger()
    m.add(0, [str(i) for i in range(5)], [float(i) for i in range(5)])
    m.add(1, ["x"], [0.0])
    assert m.ahead(5) == {0} and m.buffered() == 6
    assert m.revoke([0]) == 5 and m.buffered() == 1 and m.ahead(1) == {1}
    assert m.release(3, now=0.0, has_lag=lambda p: False) == ["x"]


def test_release_is_bounded() -> None:
    m = merger()
    m.add(0, [str(i) for i in range(10)], [float(i) for i in range(10)])
    assert len(m.release(4, now=0.0, has_lag=lambda p: False)) == 4 and m.buffered() == 6
