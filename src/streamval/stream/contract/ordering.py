"""Per-asset event-time order: classify each valid event as in order, late or a duplicate.

DESIGN: an event older than the last one seen for its asset is *late* (dead-lettered with reason
`late`, or accepted when `accept_late` is set); one with the same asset_id and ts as the last one
seen is a *duplicate* (an upstream retry) and is dropped so it is never learned from twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Any

from streamval.stream.contract.outputs import BatchResult
from streamval.stream.contract.schema import AssetEvent


class Order(StrEnum):
    """Where an event stands relative to the last one seen for its asset."""

    IN_ORDER = "in_order"
    LATE = "late"
    DUPLICATE = "duplicate"


def order_of(last_ts: int | None, ts_ms: int, accept_late: bool = False) -> Order:
    """Where an event at `ts_ms` stands against its asset's last accepted event time.

    >>> [order_of(5, t).value for t in (6, 5, 4)]
    ['in_order', 'duplicate', 'late']
    """
    if last_ts is not None:
        if ts_ms == last_ts:
            return Order.DUPLICATE
        if ts_ms < last_ts and not accept_late:
            return Order.LATE
    return Order.IN_ORDER


class OrderGuard:
    """Remembers the last event time per asset; its state is part of the engine's checkpoint.

    >>> guard = OrderGuard()
    >>> [guard.observe("a", t).value for t in (1, 2, 2, 1, 3)]
    ['in_order', 'in_order', 'duplicate', 'late', 'in_order']
    """

    def __init__(self, accept_late: bool = False) -> None:
        self.accept_late = accept_late
        self._last_ts: dict[str, int] = {}

    def observe(self, asset_id: str, ts_ms: int) -> Order:
        """Classify the event and, when it is accepted, remember its time."""
        last = self._last_ts.get(asset_id)
        order = order_of(last, ts_ms, self.accept_late)
        if order is Order.IN_ORDER and (last is None or ts_ms > last):
            self._last_ts[asset_id] = ts_ms  # an accepted late event does not move it back
        return order

    def admit(self, events: Sequence[AssetEvent], result: BatchResult) -> Iterator[AssetEvent]:
        """Yield the events to process, in order; late and duplicate ones are recorded in
        `result` by input index instead (each event is classified just before it is yielded)."""
        for index, event in enumerate(events):
            order = self.observe(event.asset_id, event.ts_ms)
            if order is Order.LATE:
                result.late.append(index)
            elif order is Order.DUPLICATE:
                result.duplicates.append(index)
            else:
                yield event

    def last_ts(self, asset_id: str) -> int | None:
        """Event time of the last accepted event of the asset, if any."""
        return self._last_ts.get(asset_id)

    def state_dict(self) -> dict[str, Any]:
        return {"last_ts": dict(self._last_ts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_ts = {str(k): int(v) for k, v in state["last_ts"].items()}
