"""Models: asset state, clustering, per-cluster online learners, drift-adaptive learning rate.

    base.py           `Estimator`: settings vs learned state, generic `clone`, `from_settings`
    assets.py         per-asset state as struct-of-arrays (slots, windows, series statistics)
    profiles.py       asset profile vectors (static attributes + series statistics), standardised
    clustering.py     Agglomerative Ward / KMeans fits, stable ids across re-fits, nearest centroid
    learner.py        per-cluster torch LSTM / GRU / linear model: training copy, snapshots,
                      serving copy
    trainer.py        learning off the valuing path: sample queues, steps, published snapshots
    detectors.py      drift detectors with exportable state (ADWIN, Page-Hinkley, KSWIN)
    drift.py          drift monitor on a cluster's error -> boosted, decaying learning rate
    error_metrics.py  a cluster's MAE / RMSE / R2 as numpy sums and a ring
    state.py          helpers for state trees (arrays or tensors, RNG states as numbers)
    baselines/        persistence, DCF, comparables, KNN analogues (the backtest's other methods)

`streamval.engine.Engine` wires them into the prequential pipeline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use, so that a process which only fits clusterings (the engine's fitting
# subprocess) does not import torch.
_EXPORTS = {
    "AssetTable": "streamval.models.assets",
    "AssetClustering": "streamval.models.clustering",
    "FitResult": "streamval.models.clustering",
    "Linkage": "streamval.models.clustering",
    "Metric": "streamval.models.clustering",
    "make_detector": "streamval.models.detectors",
    "AdaptiveLearningRate": "streamval.models.drift",
    "DriftMonitor": "streamval.models.drift",
    "ErrorMetrics": "streamval.models.error_metrics",
    "ModelSnapshot": "streamval.models.learner",
    "Predictor": "streamval.models.learner",
    "SequenceLearner": "streamval.models.learner",
    "ProfileInputs": "streamval.models.profiles",
    "ProfileSpace": "streamval.models.profiles",
    "Trainer": "streamval.models.trainer",
}

if TYPE_CHECKING:
    from streamval.models.assets import AssetTable
    from streamval.models.clustering import AssetClustering, FitResult, Linkage, Metric
    from streamval.models.detectors import make_detector
    from streamval.models.drift import AdaptiveLearningRate, DriftMonitor
    from streamval.models.error_metrics import ErrorMetrics
    from streamval.models.learner import ModelSnapshot, Predictor, SequenceLearner
    from streamval.models.profiles import ProfileInputs, ProfileSpace
    from streamval.models.trainer import Trainer

__all__ = [
    "AdaptiveLearningRate",
    "AssetClustering",
    "AssetTable",
    "DriftMonitor",
    "ErrorMetrics",
    "FitResult",
    "Linkage",
    "Metric",
    "ModelSnapshot",
    "Predictor",
    "ProfileInputs",
    "ProfileSpace",
    "SequenceLearner",
    "Trainer",
    "make_detector",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamval.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
