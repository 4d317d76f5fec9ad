"""streamval: a streaming valuation engine with per-cluster online LSTMs and drift adaptation.

The packages follow an event through the system, and each imports only from those before it:

    stream/       the event streams: contract (events in, valuations out), Kafka clients and the
                  local broker, replay of history and shocks, datasets
    models/       clustering, per-cluster learners, drift-adaptive learning rate, baselines
    engine.py     the pure pipeline (no Kafka) used online and offline
    monitoring/   Prometheus metrics and health endpoints
    consumers/    the Kafka service: poll -> engine -> publish -> commit, dead letters, checkpoints
    backtest/     offline accuracy reports: protocols, methods, metrics, plots
    demo/         the end-to-end demo
    commands/     one module per `streamval` subcommand; cli.py parses the command line

The public API is re-exported here. Heavy dependencies (torch, pandas, kafka-python) load only
when a name that needs them is first used, so `import streamval` and `streamval --help` stay fast.

>>> from streamval import AssetEvent, Engine, EngineSettings
>>> engine = Engine(EngineSettings(hidden=[8], n_clusters=1))
>>> [v.warming for v in engine.process([AssetEvent("a", 1, 10.0)]).valuations]
[True]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first access.
_EXPORTS = {
    "AssetEvent": "streamval.stream.contract.schema",
    "BatchResult": "streamval.stream.contract.outputs",
    "BrokerError": "streamval.errors",
    "CheckpointError": "streamval.errors",
    "ClusterSnapshot": "streamval.stream.contract.outputs",
    "ConfigError": "streamval.errors",
    "DataError": "streamval.errors",
    "DriftAlarm": "streamval.stream.contract.outputs",
    "Engine": "streamval.engine",
    "EngineSettings": "streamval.config",
    "ErrorStats": "streamval.stream.contract.outputs",
    "EventTable": "streamval.stream.datasets.event_table",
    "LocalBroker": "streamval.stream.kafka.broker",
    "Reason": "streamval.stream.contract.schema",
    "Rejection": "streamval.stream.contract.schema",
    "Settings": "streamval.config",
    "StreamvalError": "streamval.errors",
    "Valuation": "streamval.stream.contract.outputs",
    "ValuationService": "streamval.consumers.service",
    "load_settings": "streamval.config",
    "parse_event": "streamval.stream.contract.schema",
    "read_long_table": "streamval.stream.datasets.readers",
    "read_wide_prices": "streamval.stream.datasets.readers",
    "replay": "streamval.stream.replay.producer",
}

__all__ = [
    "AssetEvent",
    "BatchResult",
    "BrokerError",
    "CheckpointError",
    "ClusterSnapshot",
    "ConfigError",
    "DataError",
    "DriftAlarm",
    "Engine",
    "EngineSettings",
    "ErrorStats",
    "EventTable",
    "LocalBroker",
    "Reason",
    "Rejection",
    "Settings",
    "StreamvalError",
    "Valuation",
    "ValuationService",
    "__version__",
    "load_settings",
    "parse_event",
    "read_long_table",
    "read_wide_prices",
    "replay",
]

if TYPE_CHECKING:
    from streamval.config import EngineSettings, Settings, load_settings
    from streamval.consumers.service import ValuationService
    from streamval.engine import Engine
    from streamval.errors import (
        BrokerError,
        CheckpointError,
        ConfigError,
        DataError,
        StreamvalError,
    )
    from streamval.stream.contract.outputs import (
        BatchResult,
        ClusterSnapshot,
        DriftAlarm,
        ErrorStats,
        Valuation,
    )
    from streamval.stream.contract.schema import AssetEvent, Reason, Rejection, parse_event
    from streamval.stream.datasets.event_table import EventTable
    from streamval.stream.datasets.readers import read_long_table, read_wide_prices
    from streamval.stream.kafka.broker import LocalBroker
    from streamval.stream.replay.producer import replay


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
