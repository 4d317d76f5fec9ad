"""Clustering of assets in the profile space, with cluster ids that survive re-fits.

Fits: Agglomerative clustering (Ward linkage, Euclidean; the paper's choice) or KMeans, on the
standardised profiles (`streamval.models.profiles`); other linkages and metrics are available
for studies (`linkage`, `metric`), while centroids and online assignment stay Euclidean. K is
fixed (`n_clusters`, 3 by default), or ``"auto"``: the K in 2..max_clusters with the best
silhouette. ``n_clusters=1`` is one global
cluster (no fit). Online assignment is by nearest centroid.

Stable ids: a re-fit computes the old clusters' centroids *in the new space* (the members of each
old cluster, re-profiled) and matches them to the new centroids with the Hungarian algorithm
(`scipy.optimize.linear_sum_assignment`). Matched new clusters take the old ids; unmatched ones get
fresh ids (never reused), each with a `parent`: the nearest old cluster, whose model it copies.
Old clusters left unmatched disappear.

Before the first fit every asset is in the provisional cluster 0 (see `Engine`): the bootstrap fit
is a re-fit against that single cluster: one new cluster keeps id 0, the others copy its model.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.concatenate([rng.normal(c, 0.1, size=(10, 2)) for c in (0.0, 5.0)])
>>> clustering = AssetClustering(n_clusters=2)
>>> fit = clustering.fit(x, old_labels=np.zeros(20, dtype=int))
>>> sorted(set(fit.labels.tolist())), fit.parents
([0, 1], {1: 0})
>>> clustering.assign(np.array([5.0, 5.0])) == int(fit.labels[15])
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import silhouette_score

from streamval.models.base import Estimator

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Method = Literal["hierarchical", "kmeans"]
Linkage = Literal["ward", "average", "complete", "single"]
Metric = Literal["euclidean", "manhattan", "cosine"]


@dataclass
class FitResult:
    """Outcome of one (re-)fit: stable labels per row, and the new clusters with their parents."""

    labels: IntArray
    parents: dict[int, int] = field(default_factory=dict)  # new cluster id -> nearest old cluster
    removed: list[int] = field(default_factory=list)  # old ids that no longer exist
    # removed old id -> the new cluster nearest to its centroid (where its pending work goes)
    successors: dict[int, int] = field(default_factory=dict)


class AssetClustering(Estimator):
    """Fit, re-fit with stable ids, and nearest-centroid assignment."""

    settings_names = {"method": "clustering"}

    def __init__(
        self,
        n_clusters: int | Literal["auto"] = 3,
        *,
        method: Method = "hierarchical",
        max_clusters: int = 6,
        seed: int = 0,
        linkage: Linkage = "ward",
        metric: Metric = "euclidean",
    ) -> None:
        if n_clusters != "auto" and n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1 or 'auto', got {n_clusters}")
        if linkage == "ward" and metric != "euclidean":
            raise ValueError("Ward linkage needs the euclidean metric")
        self.n_clusters = n_clusters
        self.method = method
        self.max_clusters = max_clusters
        self.seed = seed
        self.linkage: Linkage = linkage  # hierarchical only (the backtest's clustering grid)
        self.metric: Metric = metric
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = [0]
        self._centroids = np.zeros((1, 0))
        self._next_id = 1
        self._fitted = False

    @property
    def fitted(self) -> bool:
        return self._fitted

    @property
    def ids(self) -> list[int]:
        """The current cluster ids."""
        return list(self._ids)

    def _labels(self, x: FloatArray) -> IntArray:
        """Unstable labels 0..k-1 of a fresh fit."""
        n = len(x)
        if self.n_clusters == "auto":
            candidates = list(range(2, min(self.max_clusters, n - 1) + 1))
            if not candidates:
                return np.zeros(n, dtype=np.int64)
            best: tuple[float, IntArray] | None = None
            for k in candidates:
                labels = self._fit_k(x, k)
                if len(set(labels.tolist())) < 2:
                    continue
                score = float(silhouette_score(x, labels))
                if best is None or score > best[0]:
                    best = (score, labels)
            return best[1] if best is not None else np.zeros(n, dtype=np.int64)
        k = min(int(self.n_clusters), n)
        return self._fit_k(x, k) if k > 1 else np.zeros(n, dtype=np.int64)

    def _fit_k(self, x: FloatArray, k: int) -> IntArray:
        if self.method == "kmeans":
            model = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(x)
            return np.asarray(model.labels_, dtype=np.int64)
        model_h = AgglomerativeClustering(
            n_clusters=k, linkage=self.linkage, metric=self.metric
        ).fit(x)
        return np.asarray(model_h.labels_, dtype=np.int64)

    def fit(self, x: FloatArray, old_labels: IntArray) -> FitResult:
        """(Re-)fit on profiles `x` whose current cluster ids are `old_labels`; ids stay stable."""
        raw = self._labels(x)
        new_k = int(raw.max()) + 1
        new_centroids = np.stack([x[raw == j].mean(axis=0) for j in range(new_k)])
        old_ids = sorted(set(old_labels.tolist()))
        old_centroids = np.stack([x[old_labels == i].mean(axis=0) for i in old_ids])
        cost = np.linalg.norm(old_centroids[:, None, :] - new_centroids[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(cost)
        new_to_id: dict[int, int] = {
            int(c): old_ids[int(r)] for r, c in zip(rows, cols, strict=True)
        }
        parents: dict[int, int] = {}
        for j in range(new_k):
            if j not in new_to_id:
                new_to_id[j] = self._next_id
                parents[self._next_id] = old_ids[int(np.argmin(cost[:, j]))]
                self._next_id += 1
        order = sorted(range(new_k), key=lambda j: new_to_id[j])
        self._ids = [new_to_id[j] for j in order]
        self._centroids = new_centroids[order]
        self._fitted = True
        labels = np.array([new_to_id[int(j)] for j in raw], dtype=np.int64)
        removed = [i for i in old_ids if i not in self._ids]
        successors = {
            old_ids[r]: new_to_id[int(np.argmin(cost[r]))]
            for r in range(len(old_ids))
            if old_ids[r] in removed
        }
        return FitResult(labels=labels, parents=parents, removed=removed, successors=successors)

    def assign(self, profile: FloatArray) -> int:
        """Id of the nearest centroid (cluster 0 before the first fit)."""
        if not self._fitted or len(self._ids) == 1:
            return self._ids[0]
        d = ((self._centroids - profile) ** 2).sum(axis=1)
        return self._ids[int(np.argmin(d))]

    def assign_many(self, profiles: FloatArray) -> IntArray:
        """Nearest-centroid ids of several profiles."""
        if not self._fitted or len(self._ids) == 1:
            return np.full(len(profiles), self._ids[0], dtype=np.int64)
        d = ((profiles[:, None, :] - self._centroids[None, :, :]) ** 2).sum(axis=2)
        ids: IntArray = np.asarray(self._ids, dtype=np.int64)[np.argmin(d, axis=1)]
        return ids

    def state_dict(self) -> dict[str, Any]:
        return {
            "ids": list(self._ids),
            "centroids": self._centroids.copy(),
            "dim": int(self._centroids.shape[1]),
            "next_id": self._next_id,
            "fitted": self._fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ids = [int(i) for i in state["ids"]]
        self._centroids = np.asarray(state["centroids"], dtype=np.float64).reshape(
            len(self._ids), int(state["dim"])
        )  # raises on a wrong size
        self._next_id = int(state["next_id"])
        self._fitted = bool(state["fitted"])
