"""Replay pacing: events leave on schedule; a stall shifts the schedule instead of a burst."""

from __future__ import annotations

import pytest

from streamval.stream.replay.pacing import Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def pacer(offsets: list[float], clock: FakeClock) -> Pacer:
    return Pacer(offsets, clock=clock, sleep=clock.sleep)


def test_events_leave_at_their_offsets_from_the_first() -> None:
    clock = FakeClock()
    p = pacer([0.0, 0.25, 0.5, 2.0], clock)
    leaves = []
    for i in range(4):
        p.wait(i)
        leaves.append(clock.now - 100.0)
    assert leaves == pytest.approx([0.0, 0.25, 0.5, 2.0])


def test_small_lateness_is_caught_up() -> None:
    clock = FakeClock()
    p = pacer([0.0, 1.0, 1.01, 2.0], clock)
    p.wait(0)
    p.wait(1)
    clock.now += 0.03  # a slow send: 20 ms late for event 2, within the catch-up margin
    p.wait(2)
    p.wait(3)
    assert clock.now == pytest.approx(102.0)  # the schedule holds


def test_a_stall_shifts_the_schedule_instead_of_a_burst() -> None:
    clock = FakeClock()
    p = pacer([0.0, 1.0, 2.0, 3.0], clock)
    p.wait(0)
    p.wait(1)
    clock.now += 5.0  # stalled: event 2 was due at 102, it is 106
    p.wait(2)
    assert clock.now == pytest.approx(106.0)  # leaves at once ...
    p.wait(3)
    assert clock.now == pytest.approx(107.0)  # ... and event 3 keeps its 1 s gap to it
