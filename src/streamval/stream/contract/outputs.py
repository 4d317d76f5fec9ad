"""What the engine emits: valuations, drift alarms, per-cluster metric snapshots.

These records are the `valuations` and `valuation-metrics` topic contracts of DESIGN.md; their
`to_json()` is exactly what is published. The engine creates them, the consumer publishes them,
the backtest scores them and the monitoring exports them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Valuation:
    """The engine's valuation of one event, made before the event's own value was used.

    `lower` and `upper` bound the value at the engine's `interval_coverage` (online conformal
    prediction per cluster); None where no interval is available (a warming asset, a cluster
    with too few scored events yet).
    """

    asset_id: str
    ts_ms: int
    valuation: float
    cluster: int
    model_version: int
    warming: bool
    adapting: bool
    lr: float
    value: float | None = None
    lower: float | None = None
    upper: float | None = None

    @property
    def error(self) -> float | None:
        """value - valuation, when the event carried a value (saturated at the float range:
        1e308 - (-1e308) is not a number JSON can carry)."""
        if self.value is None:
            return None
        error = self.value - self.valuation
        return error if math.isfinite(error) else math.copysign(sys.float_info.max, error)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "asset_id": self.asset_id,
            "ts": self.ts_ms,
            "valuation": self.valuation,
            "cluster": self.cluster,
            "model_version": self.model_version,
            "warming": self.warming,
            "adapting": self.adapting,
            "lr": self.lr,
            "lower": self.lower,
            "upper": self.upper,
        }
        if self.value is not None:
            out["value"] = self.value
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    """A drift detector fired on a cluster's prequential error.

    `ts_ms` is the event time of the shock (for the cross-sectional detector: the step whose
    errors alarmed; it is detected with the cluster's next event, at `detected_ts_ms`). Errors
    are scale-free (in units of each asset's typical change): for the cross-sectional detector
    the cluster's mean |error| over the steps before and in the shock step; for the per-event
    detectors short rolling means. `assets`: assets in the step (1 for per-event detectors),
    `affected`: of them with an error beyond 2 units. `response`: what the engine did
    (fast_learner, boost, none).
    """

    cluster: int
    detector: str
    ts_ms: int
    error_before: float
    error_after: float
    lr: float
    assets: int = 1
    affected: int = 1
    detected_ts_ms: int | None = None
    response: str = "boost"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "drift",
            "cluster": self.cluster,
            "detector": self.detector,
            "ts": self.ts_ms,
            "detected_ts": self.ts_ms if self.detected_ts_ms is None else self.detected_ts_ms,
            "assets": self.assets,
            "affected": self.affected,
            "error_before": self.error_before,
            "error_after": self.error_after,
            "lr": self.lr,
            "response": self.response,
        }


@dataclass(frozen=True, slots=True)
class ErrorStats:
    """Streaming error metrics over one horizon (rolling window or since start)."""

    n: int
    mae: float | None
    rmse: float | None
    r2: float | None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mae": self.mae, "rmse": self.rmse, "r2": self.r2}


@dataclass(frozen=True, slots=True)
class ClusteringStats:
    """The clustering as a whole, as of its last fit (repeated in every cluster's snapshot)."""

    clusters: int = 1
    fits: int = 0  # fits so far, the bootstrap included
    silhouette: float | None = None  # of the last fit's sample, in its profile space
    churn: float | None = None  # share of the live assets that changed cluster at the last re-fit
    switches: int = 0  # assets moved online (hysteresis satisfied) since the start

    def to_json(self) -> dict[str, Any]:
        return {
            "clusters": self.clusters,
            "fits": self.fits,
            "silhouette": self.silhouette,
            "churn": self.churn,
            "switches": self.switches,
        }


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Periodic health of one cluster's model."""

    cluster: int
    ts_ms: int
    assets: int
    rolling: ErrorStats
    total: ErrorStats
    drift_alarms: int
    lr: float
    updates: int
    model_version: int
    queued_samples: int = 0  # labelled samples waiting for a training step
    trained_samples: int = 0  # fresh samples trained since the cluster was created
    skipped_samples: int = 0  # samples dropped because training fell behind (overload)
    expired_assets: int = 0  # assets of the cluster forgotten after `engine.asset_ttl`
    silhouette: float | None = None  # mean silhouette of its members at the last fit
    clustering: ClusteringStats = field(default_factory=ClusteringStats)
    interval_coverage: float | None = None  # share of the last metrics_window values inside
    interval_width: float | None = None  # their intervals' mean width, in each asset's unit
    dropped_feature_values: int = 0  # feature values beyond `engine.max_features`, dropped
    fast_learner: str = "none"  # the drift response's fast learner: none, shadow or served
    fast_learners: int = 0  # fast learners started (drift_response = fast_learner)
    expert_weights: dict[str, float] = field(default_factory=dict)  # served weights by expert

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "snapshot",
            "cluster": self.cluster,
            "ts": self.ts_ms,
            "assets": self.assets,
            "rolling": self.rolling.to_json(),
            "total": self.total.to_json(),
            "drift_alarms": self.drift_alarms,
            "lr": self.lr,
            "updates": self.updates,
            "model_version": self.model_version,
            "queued_samples": self.queued_samples,
            "trained_samples": self.trained_samples,
            "skipped_samples": self.skipped_samples,
            "expired_assets": self.expired_assets,
            "silhouette": self.silhouette,
            "clustering": self.clustering.to_json(),
            "interval_coverage": self.interval_coverage,
            "interval_width": self.interval_width,
            "dropped_feature_values": self.dropped_feature_values,
            "fast_learner": self.fast_learner,
            "fast_learners": self.fast_learners,
            "expert_weights": dict(self.expert_weights),
        }


@dataclass(slots=True)
class BatchResult:
    """The outcome of `Engine.process` for one batch of events.

    `valuations` holds one entry per accepted event, in input order. `late` and `duplicates` hold
    the input indices of events the engine refused (late ones go to the DLQ, duplicates are
    dropped). `failed` holds (input index, detail) of events the engine could not process (an
    internal error about that event alone; the others were processed). `updates` counts
    optimizer steps taken per cluster during this batch.
    """

    valuations: list[Valuation] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    drift: list[DriftAlarm] = field(default_factory=list)
    updates: dict[int, int] = field(default_factory=dict)
    failed: list[tuple[int, str]] = field(default_factory=list)
