"""The event contract: events in, valuations out (DESIGN.md's topic formats), no I/O.

schema.py     `AssetEvent`, `parse_event` (bytes -> event or `Rejection` with a `Reason`)
ordering.py   `OrderGuard`: per-asset event time, late and duplicate events
outputs.py    `Valuation`, `DriftAlarm`, `ClusterSnapshot`, `ErrorStats`, `BatchResult`
"""

from __future__ import annotations

from streamval.stream.contract.ordering import Order, OrderGuard
from streamval.stream.contract.outputs import (
    BatchResult,
    ClusterSnapshot,
    DriftAlarm,
    ErrorStats,
    Valuation,
)
from streamval.stream.contract.schema import (
    AssetEvent,
    Attribute,
    Reason,
    Rejection,
    parse_event,
    parse_timestamp,
)

__all__ = [
    "AssetEvent",
    "Attribute",
    "BatchResult",
    "ClusterSnapshot",
    "DriftAlarm",
    "ErrorStats",
    "Order",
    "OrderGuard",
    "Reason",
    "Rejection",
    "Valuation",
    "parse_event",
    "parse_timestamp",
]
