"""The market approach: the median value multiple of comparable assets, learned online."""

from __future__ import annotations

from collections import deque

import numpy as np

from streamval.models.baselines.base import EventByEvent
from streamval.stream.contract.schema import AssetEvent


class MarketMethod(EventByEvent):
    """The market approach: the median value multiple of comparable assets, learned online.

    Peers are the assets with the same `group_attribute` (credit: the risk tier; stocks: the
    sector). A multiple is value / basis, where basis is the asset's `basis_attribute` (e.g.
    income) or, when that is None, its previous value (then the multiple is a gross return and
    the method values an asset at its last value times its peers' median recent move). The
    median is over the last `window` multiples of the group observed strictly *before* the
    event's time (multiples of the current timestamp are held back until time moves on), so no
    method sees a peer's same-time value. Without peers yet: the median of all multiples; with
    none at all: the last value, or the median value (warming). `learn=False` freezes the medians.

    >>> m = MarketMethod(group_attribute="tier", basis_attribute="income", window=3)
    >>> out = m.process([AssetEvent("a", 1, 100.0, {}, {"tier": "x", "income": 10.0}),
    ...                  AssetEvent("b", 1, 300.0, {}, {"tier": "x", "income": 10.0}),
    ...                  AssetEvent("c", 2, None, {}, {"tier": "x", "income": 20.0})])
    >>> out.valuations[2].valuation  # median multiple (10, 30) = 20, times income 20
    400.0
    """

    name = "market (comparables)"

    def __init__(
        self,
        *,
        group_attribute: str = "tier",
        basis_attribute: str | None = "income",
        window: int = 500,
    ) -> None:
        super().__init__()
        self.group_attribute = group_attribute
        self.basis_attribute = basis_attribute
        self.window = window
        self._groups: dict[str, int] = {}
        self._multiples: dict[str, deque[float]] = {}
        self._all: deque[float] = deque(maxlen=window)
        self._held: list[tuple[str, float]] = []
        self._held_ts: int | None = None
        self._last: dict[str, float] = {}
        self._group_of: dict[str, str] = {}

    def _group(self, event: AssetEvent) -> str:
        raw = event.attributes.get(self.group_attribute)
        if raw is not None:
            self._group_of[event.asset_id] = str(raw)
        return self._group_of.get(event.asset_id, "")

    def _basis(self, event: AssetEvent) -> float | None:
        if self.basis_attribute is None:
            return self._last.get(event.asset_id)
        raw = event.attributes.get(self.basis_attribute)
        return float(raw) if isinstance(raw, int | float) and raw != 0 else None

    def median_multiple(self, group: str) -> float | None:
        """The current median multiple of a group (None before it has one)."""
        values = self._multiples.get(group)
        if values:
            return float(np.median(np.fromiter(values, dtype=float)))
        return None

    def _release(self, ts_ms: int) -> None:
        if self._held_ts is not None and ts_ms > self._held_ts:
            for group, multiple in self._held:
                self._multiples.setdefault(group, deque(maxlen=self.window)).append(multiple)
                self._all.append(multiple)
            self._held = []
        self._held_ts = ts_ms if self._held_ts is None else max(self._held_ts, ts_ms)

    def _value(self, event: AssetEvent) -> tuple[float, int, bool]:
        self._release(event.ts_ms)
        group = self._group(event)
        index = self._groups.setdefault(group, len(self._groups))
        basis = self._basis(event)
        multiple = self.median_multiple(group)
        if multiple is None and self._all:
            multiple = float(np.median(np.fromiter(self._all, dtype=float)))
        if basis is not None and multiple is not None:
            return basis * multiple, index, False
        last = self._last.get(event.asset_id)
        return (last if last is not None else self._fallback()), index, True

    def _observe(self, event: AssetEvent, learn: bool) -> None:
        if event.value is None:
            return
        basis = self._basis(event)
        if learn and basis is not None and basis != 0:
            self._held.append((self._group(event), event.value / basis))
        self._last[event.asset_id] = event.value
