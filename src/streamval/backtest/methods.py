"""The methods of the accuracy tables: the engine under a name, its ablations, the baselines.

`EngineValuer` adapts the `Engine` to the `Valuer` interface of the baselines, so the protocols
treat every method alike and the offline numbers measure the online code.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamval.backtest.fusion import LSTMKNNFusion
from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.models.baselines import (
    IncomeMethod,
    KNNAnalogues,
    MarketMethod,
    Persistence,
    Valuer,
)
from streamval.stream.contract.outputs import BatchResult
from streamval.stream.contract.schema import AssetEvent


class EngineValuer:
    """The `Engine` under a name: the adapter that makes it a `Valuer`.

    Backtests train synchronously (`training="sync"`): learning happens at points fixed by event
    time, so a run is reproducible and does not depend on the backtest's batch size.
    `process(events, learn=False)` values without learning (a frozen model).
    """

    def __init__(self, name: str, settings: EngineSettings) -> None:
        self.name = name
        self.settings = settings.model_copy(update={"training": "sync"})
        self.engine = Engine(self.settings)

    def process(self, events: Sequence[AssetEvent], *, learn: bool = True) -> BatchResult:
        return self.engine.process(events, learn=learn)


def engine_variants(base: EngineSettings) -> dict[str, EngineSettings]:
    """The engine and its ablations, by report name, all derived from `base`.

    >>> sorted(engine_variants(EngineSettings()))
    ['HC+LSTM', 'HC+LSTM fixed lr', 'HC+linear', 'KMeans+LSTM', 'single LSTM']
    """
    return {
        "HC+LSTM": base,
        "single LSTM": base.model_copy(update={"n_clusters": 1}),
        "HC+linear": base.model_copy(update={"cell": "linear"}),
        "KMeans+LSTM": base.model_copy(update={"clustering": "kmeans"}),
        "HC+LSTM fixed lr": base.model_copy(update={"lr_boost": 1.0, "drift_response": "none"}),
    }


def method_suite(base: EngineSettings, market: MarketMethod, *, income: bool) -> list[Valuer]:
    """Every method of the accuracy tables, persistence first; HC+LSTM runs inside the LSTM-KNN
    fusion (one run, four outputs). `income` adds the DCF method (assets with cash flows)."""
    variants = engine_variants(base)
    fusion = LSTMKNNFusion(EngineValuer("HC+LSTM", variants.pop("HC+LSTM")), KNNAnalogues())
    return [
        Persistence(),
        *([IncomeMethod()] if income else []),
        market,
        fusion,
        *(EngineValuer(name, settings) for name, settings in variants.items()),
    ]
