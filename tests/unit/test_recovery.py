"""`Recovery`'s takeover decision, with a stand-in consumer: a partition this engine does not
reflect up to the committed offset is read back (at most `lookback` records); one it reflects,
or with nothing committed, or with the read disabled, is not."""

from __future__ import annotations

from kafka import TopicPartition

from streamval.consumers.recovery import Recovery


class FakeConsumer:
    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self._committed = committed
        self.sought: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)


def tp(p: int) -> TopicPartition:
    return TopicPartition("in", p)


def test_only_partitions_not_reflected_up_to_the_committed_offset_are_read_back() -> None:
    recovery = Recovery(None, lookback=100)
    consumer = FakeConsumer({tp(0): 500, tp(1): 40, tp(2): None, tp(3): 900})
    recovery.reflect({("in", 3): 880})  # this engine valued partition 3 up to 880 before
    recovery.on_assigned(consumer, [tp(0), tp(1), tp(2), tp(3)])  # type: ignore[arg-type]
    assert consumer.paused == {tp(0), tp(1), tp(2), tp(3)}  # until the committed are read
    ranges = recovery.resume(consumer, {tp(0), tp(1), tp(2), tp(3)})  # type: ignore[arg-type]
    assert ranges == {tp(0): (400, 500), tp(1): (0, 40), tp(3): (880, 900)}
    assert consumer.sought == {tp(0): 500, tp(1): 40, tp(3): 900} and not consumer.paused
    # Assigned back after an eager rebalance, once reflected: nothing to read again.
    recovery.reflect({("in", 0): 500, ("in", 1): 40, ("in", 3): 900})
    recovery.on_revoked([tp(0), tp(1)])
    recovery.on_assigned(consumer, [tp(0), tp(1)])  # type: ignore[arg-type]
    assert recovery.resume(consumer, {tp(0), tp(1)}) == {}  # type: ignore[arg-type]


def test_lookback_zero_disables_the_read() -> None:
    recovery = Recovery(None, lookback=0)
    consumer = FakeConsumer({tp(0): 500})
    recovery.on_assigned(consumer, [tp(0)])  # type: ignore[arg-type]
    assert not consumer.paused  # a first assignment goes on from the committed offset itself
    recovery.on_assigned(consumer, [tp(0)])  # type: ignore[arg-type]
    assert recovery.resume(consumer, {tp(0)}) == {}  # type: ignore[arg-type]
    assert consumer.sought == {tp(0): 500}
