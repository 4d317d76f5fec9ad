"""Late and duplicate events per asset."""

from __future__ import annotations

from streamval.stream.ordering import Order, OrderGuard


def test_assets_are_independent() -> None:
    guard = OrderGuard()
    assert guard.observe("a", 10) is Order.IN_ORDER
    assert guard.observe("b", 5) is Order.IN_ORDER
    assert guard.observe("a", 5) is Order.LATE
    assert guard.observe("a", 10) is Order.DUPLICATE
    assert guard.last_ts("a") == 10


def test_accept_late_lets_old_events_through_without_moving_the_clock() -> None:
    guard = OrderGuard(accept_late=True)
    guard.observe("a", 10)
    assert guard.observe("a", 5) is Order.IN_ORDER
    assert guard.last_ts("a") == 10
    assert guard.observe("a", 10) is Order.DUPLICATE


def test_state_round_trip() -> None:
    guard = OrderGuard()
    guard.observe("a", 10)
    restored = OrderGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.observe("a", 10) is Order.DUPLICATE
