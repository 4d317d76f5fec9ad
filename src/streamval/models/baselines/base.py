"""The interface every valuation method implements, and the loop the simple baselines share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from river import stats

from streamval.stream.contract.ordering import OrderGuard
from streamval.stream.contract.outputs import BatchResult, Valuation
from streamval.stream.contract.schema import AssetEvent


@runtime_checkable
class Valuer(Protocol):
    """What the backtest needs from a valuation method: a name and prequential `process`."""

    name: str

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        """Value `events` in order (each before its own value is used); learn unless told not to."""
        ...


class EventByEvent:
    """Shared loop of the simple baselines: order guard, then value-then-observe per event."""

    name = "baseline"

    def __init__(self) -> None:
        self._guard = OrderGuard()
        self._median = stats.Quantile(0.5)

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        result = BatchResult()
        for event in self._guard.admit(events, result):
            valuation, group, warming = self._value(event)
            if not math.isfinite(valuation):
                valuation, warming = self._fallback(), True
            result.valuations.append(
                Valuation(
                    asset_id=event.asset_id,
                    ts_ms=event.ts_ms,
                    valuation=valuation,
                    cluster=group,
                    model_version=0,
                    warming=warming,
                    adapting=False,
                    lr=0.0,
                    value=event.value,
                )
            )
            if event.value is not None:
                self._median.update(event.value)
            self._observe(event, learn)
        return result

    def _fallback(self) -> float:
        median = self._median.get()
        return float(median) if median is not None and math.isfinite(median) else 0.0

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        raise NotImplementedError

    def _observe(self, event: AssetEvent, learn: bool) -> None:
        """Take in the event's value (after its valuation)."""
