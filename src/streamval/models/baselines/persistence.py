"""Persistence: the last known value, the baseline to beat on prices."""

from __future__ import annotations

from streamval.models.baselines.base import EventByEvent
from streamval.stream.contract.schema import AssetEvent


class Persistence(EventByEvent):
    """Value = the asset's last known value; before it has one, the median of all values seen.

    Knowing the last value is state, not learning: it is updated with `learn=False` too (the
    engine's windows are as well).
    """

    name = "persistence"

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        last = self._last.get(event.asset_id)
        return (self._fallback(), 0, True) if last is None else (last, 0, False)

    def _observe(self, event: AssetEvent, learn: bool) -> None:
        if event.value is not None:
            self._last[event.asset_id] = event.value
