"""Late and duplicate events per asset."""

from __future__ import annotations

from streamval.stream.contract.ordering import Order, OrderGuard


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


def test_admit_yields_in_order_and_records_the_rest() -> None:
    from streamval.stream.contract.outputs import BatchResult
    from streamval.stream.contract.schema import AssetEvent

    events = [AssetEvent("a", t) for t in (1, 2, 2, 1, 3)]
    result = BatchResult()
    admitted = [e.ts_ms for e in OrderGuard().admit(events, result)]
    assert admitted == [1, 2, 3]
    assert (result.late, result.duplicates) == ([3], [2])
