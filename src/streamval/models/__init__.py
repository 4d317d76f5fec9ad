"""Models: asset clustering, per-cluster online learners, drift-adaptive learning rate, baselines.

    base.py         `Estimator`: settings vs learned state, generic `clone`, `from_settings`
    profiles.py     asset profile vectors (static attributes + series statistics), standardised
    clustering.py   Agglomerative Ward / KMeans fits, stable ids across re-fits, nearest centroid
    learner.py      per-cluster torch LSTM / GRU / linear model on scale-free windows
    drift.py        river drift detector on a cluster's error -> boosted, decaying learning rate
    baselines/      persistence, DCF, comparables, KNN analogues (the backtest's other methods)

`streamval.engine.Engine` wires them into the prequential pipeline.
"""

from __future__ import annotations

from streamval.models.clustering import AssetClustering, FitResult, Linkage, Metric
from streamval.models.drift import AdaptiveLearningRate, make_detector
from streamval.models.learner import ConstantSchedule, LearningSchedule, SequenceLearner
from streamval.models.profiles import ProfileSpace, SeriesStats

__all__ = [
    "AdaptiveLearningRate",
    "AssetClustering",
    "ConstantSchedule",
    "FitResult",
    "LearningSchedule",
    "Linkage",
    "Metric",
    "ProfileSpace",
    "SequenceLearner",
    "SeriesStats",
    "make_detector",
]
