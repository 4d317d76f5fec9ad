"""streamval: a streaming valuation engine with per-cluster online LSTMs and drift adaptation.

The packages follow an event through the system:

    stream/       the event contract, serde, topics, local broker, replay, scenarios, datasets
    consumers/    Kafka services: poll -> engine -> publish -> commit, dead letters, checkpoints
    models/       clustering, per-cluster learners, drift-adaptive learning rate, baselines
    monitoring/   Prometheus metrics and health endpoints

`Engine` (engine.py) is the pure pipeline used by the consumer, the backtest and the benchmarks.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
