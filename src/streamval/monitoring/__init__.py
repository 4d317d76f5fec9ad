"""Monitoring: Prometheus metrics and the /metrics, /healthz and /readyz endpoints.

    EngineMetrics    the engine service's metrics (events, errors per cluster, drift, lag, latency)
    LearnerMetrics   a learner's metrics (its clusters' errors and drift, samples trained, lag)
    ReplayMetrics    the replay job's metrics (events produced, markers of real events)
    MetricsServer    serves a registry on /metrics plus liveness and readiness endpoints

Each metrics object owns its `CollectorRegistry`; pass `metrics.registry` to `MetricsServer`.
The metric names, types and labels are listed in `streamval.monitoring.metrics` and in
docs/ARCHITECTURE.md (section Monitoring).
"""

from __future__ import annotations

from streamval.monitoring.metrics import EngineMetrics, LearnerMetrics, ReplayMetrics
from streamval.monitoring.server import MetricsServer, ReadyCheck

__all__ = ["EngineMetrics", "LearnerMetrics", "MetricsServer", "ReadyCheck", "ReplayMetrics"]
