"""Baseline valuation methods behind the engine's interface: the backtest treats all alike.

Every method is a `Valuer`: `process(events, learn=True) -> BatchResult`, prequential like
`Engine.process` (each event is valued before its own value is used), with the same order guard
(late events refused, duplicates dropped):

    persistence.py   Persistence: the last known value (the baseline to beat on prices)
    income.py        IncomeMethod: DCF, projected monthly cash flows discounted at a stated rate
    market.py        MarketMethod: comparables, the median value multiple of the peer group
    knn.py           KNNAnalogues: the change that followed the k most similar past windows
    base.py          the `Valuer` protocol and the per-event loop the simple baselines share

The engine itself is wrapped, never copied, by `streamval.backtest.methods.EngineValuer`.
Valuations of baselines carry `cluster` = their peer group index (0 when they have none),
`model_version` 0, `adapting` False and `lr` 0.0.

>>> from streamval.stream.contract.schema import AssetEvent
>>> p = Persistence()
>>> out = p.process([AssetEvent("a", 1, 10.0), AssetEvent("a", 2, 12.0)])
>>> [v.valuation for v in out.valuations]
[0.0, 10.0]
"""

from __future__ import annotations

from streamval.models.baselines.base import EventByEvent, Valuer
from streamval.models.baselines.income import IncomeMethod
from streamval.models.baselines.knn import KNNAnalogues
from streamval.models.baselines.market import MarketMethod
from streamval.models.baselines.persistence import Persistence

__all__ = [
    "EventByEvent",
    "IncomeMethod",
    "KNNAnalogues",
    "MarketMethod",
    "Persistence",
    "Valuer",
]
