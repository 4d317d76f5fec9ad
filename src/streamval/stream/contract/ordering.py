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
        if last is not None:
            if ts_ms == last:
                return Order.DUPLICATE
            if ts_ms < last:
                return Order.IN_ORDER if self.accept_late else Order.LATE
        self._last_ts[asset_id] = ts_ms
        return Order.IN_ORDER

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
