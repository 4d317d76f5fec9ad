"""Clustering of assets in the profile space, with cluster ids that survive re-fits.

Fits: Agglomerative clustering (Ward linkage, Euclidean; the paper's choice) or KMeans, on the
standardised profiles (`streamval.models.profiles`); other linkages and metrics are available
for studies (`linkage`, `metric`), while centroids and assignment use the distance below. K is
fixed (`n_clusters`, 3 by default), or ``"auto"``: the K in 2..max_clusters that maximises
silhouette x stability, stability being the mean adjusted Rand index between the fit and fits on
`n_resamples` bootstrap resamples (on the resampled assets): a K whose clusters a resample
redraws differently is not chosen for a good silhouette alone. ``n_clusters=1`` is one global
cluster (no fit).

Block weights (`block_weights`, the rule `ProfileSpace.fit` applies), on a sample of at most
`weigh_max_assets` assets. Each profile block (an attribute, a series statistic; all scaled to
variance 1) is clustered alone into K clusters (auto: its best K) and gets a *contrast*: how much
better its silhouette s is than that of the same fit on Gaussian nulls with the block's mean and
covariance, c = max(0, s - max s_null) / (1 - mean s_null) over four null draws (the best draw:
structure at chance level scores 0). A block that separates assets cleanly (a one-hot that
identifies groups: s = 1) has c near 1, a block of noise (s = s_null) near 0 however many such
blocks there are. Three weightings are candidates: all blocks equal, c / max c and its square root.
The one chosen is the one whose K-partition agrees best with the blocks' own partitions (largest
sum of adjusted Rand indices over the blocks with c > 0, or over all blocks if none has: the
consensus criterion of cluster ensembles, Strehl & Ghosh 2002). So a crisp block that no other
block supports (a risk tier cut from one score) does not overrule many blocks that agree on another
grouping, while a clean attribute among noise blocks (which agree with nothing) is not drowned by
them. Equal weights win unless another weighting agrees more than 10% better: a block whose groups
overlap (the credit book's ages, its autocorrelations) has no contrast alone and so no vote, yet
carries information that down-weighting it would throw away on the noise of a 500-asset sample.
At a re-fit the weights in use are a fourth candidate with the same edge: new weights redraw the
whole space, and with it every asset's neighbours.

Distance to a cluster: each cluster keeps its centroid and its *spread*, its members' variance
per coordinate (at least 1% of the coordinate's variance over the fitted assets), and the
distance is sqrt(sum_j (x_j - c_j)^2 / s_j + sum_j log(s_j / r_j)), r_j the smallest spread of
the clusters compared: twice a diagonal Gaussian's negative log-likelihood up to a constant, made
>= 0 so that the switch margin applies to it. Nearest-centroid Euclidean assignment gives the
wide edge of a spread-out cluster (the credit book's fragile borrowers) to a tight neighbour
whose centroid is nearer; Ward's own labels do not, but only the fit's sample gets them. So the
fit's labels are moved once to their nearest cluster by this distance (unless a cluster would be
left empty), and every assignment after (assets outside the sample, online checks, re-fits'
keep test) uses it.

Hysteresis: online, an asset changes cluster only when another cluster is closer than its own by
the margin (`distance < (1 - switch_margin) x distance to its own`) at `switch_checks` consecutive
checks (`reassign`); its first check places it at the nearest cluster. A re-fit keeps every asset
in its cluster unless the new fit's cluster for it is closer by the margin than its old cluster
(its old members' centroid and spread, in the new space), or its old id disappears; centroids and
spreads are then those of the kept assignment. The bootstrap fit (against the provisional cluster
0) keeps nothing.

Stable ids: a re-fit computes the old clusters' centroids *in the new space* (the members of each
old cluster, re-profiled) and matches them to the new centroids with the Hungarian algorithm
(`scipy.optimize.linear_sum_assignment`). Matched new clusters take the old ids; unmatched ones get
fresh ids (never reused), each with a `parent`: the nearest old cluster, whose model it copies. Old
clusters left unmatched disappear.

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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_samples, silhouette_score

from streamval.models.base import Estimator

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Method = Literal["hierarchical", "kmeans"]
_NULL_DRAWS = 4  # Gaussian nulls per block and K (block weights)
# A re-fit keeps the block weights in use unless another weighting's agreement is this much
# (relatively) larger: a new weighting redraws the whole space, and every asset with it.
_KEEP_WEIGHTS = 0.1
# A cluster's spread along a coordinate is at least this share of the coordinate's variance over
# the fitted assets: a cluster whose members agree exactly on a coordinate (a one-hot category)
# makes it decisive, not infinitely so.
_SPREAD_FLOOR = 0.01
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
    silhouette: float = float("nan")  # of the kept labels, in the fit's space
    cluster_silhouette: dict[int, float] = field(default_factory=dict)  # mean per cluster id
    stability: float = float("nan")  # auto K only: mean ARI of the resample fits


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
        switch_margin: float = 0.25,
        switch_checks: int = 4,
        n_resamples: int = 4,
        weigh_max_assets: int = 500,
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
        if not 0 <= switch_margin < 1:
            raise ValueError(f"switch_margin must be in [0, 1), got {switch_margin}")
        if switch_checks < 1:
            raise ValueError(f"switch_checks must be >= 1, got {switch_checks}")
        self.switch_margin = switch_margin
        self.switch_checks = switch_checks
        self.n_resamples = n_resamples  # auto K's stability
        self.weigh_max_assets = weigh_max_assets  # assets sampled to choose block weights / K
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = [0]
        self._centroids = np.zeros((1, 0))
        self._spread = np.ones((1, 0))  # per cluster and coordinate: its members' variance
        self._next_id = 1
        self._fitted = False

    @property
    def fitted(self) -> bool:
        return self._fitted

    @property
    def ids(self) -> list[int]:
        """The current cluster ids."""
        return list(self._ids)

    def _candidates(self, n: int) -> list[int]:
        if self.n_clusters == "auto":
            return list(range(2, min(self.max_clusters, n - 1) + 1))
        k = min(int(self.n_clusters), n)
        return [k] if k > 1 else []

    def _labels(self, x: FloatArray) -> tuple[IntArray, float]:
        """Unstable labels 0..k-1 of a fresh fit, and (auto K) the chosen K's stability."""
        n = len(x)
        candidates = self._candidates(n)
        if not candidates:
            return np.zeros(n, dtype=np.int64), float("nan")
        if len(candidates) == 1:
            return self._fit_k(x, candidates[0]), float("nan")
        rng = np.random.default_rng(self.seed)
        best: tuple[float, IntArray, float] | None = None
        for k in candidates:
            labels = self._fit_k(x, k)
            if len(set(labels.tolist())) < 2:
                continue
            silhouette = _silhouette(x, labels, self.weigh_max_assets, rng)
            stability = self._stability(x, labels, k, rng)
            score = max(silhouette, 0.0) * stability
            if best is None or score > best[0]:
                best = (score, labels, stability)
        if best is None:
            return np.zeros(n, dtype=np.int64), float("nan")
        return best[1], best[2]

    def _stability(
        self, x: FloatArray, labels: IntArray, k: int, rng: np.random.Generator
    ) -> float:
        """Mean ARI between `labels` and K-fits on bootstrap resamples, on the resampled rows."""
        n = len(x)
        size = min(n, self.weigh_max_assets)
        scores = []
        for _ in range(max(1, self.n_resamples)):
            rows = np.unique(rng.choice(n, size=size, replace=True))
            if len(rows) <= k:
                continue
            scores.append(adjusted_rand_score(labels[rows], self._fit_k(x[rows], k)))
        return float(np.mean(scores)) if scores else 0.0

    def block_weights(
        self, blocks: list[FloatArray], current: Sequence[float] | None = None
    ) -> list[float]:
        """Weights of the profile blocks (the rule in the module docstring); `current`: the
        weights in use, kept unless another weighting agrees clearly better."""
        if not blocks:
            return []
        n = len(blocks[0])
        rng = np.random.default_rng(self.seed)
        rows = np.arange(n)
        if n > self.weigh_max_assets:
            rows = np.sort(rng.choice(n, size=self.weigh_max_assets, replace=False))
        candidates = self._candidates(len(rows))
        if not candidates:
            return [1.0] * len(blocks)
        sample = [block[rows] for block in blocks]
        alive = np.array([x.shape[1] > 0 and float(x.var(axis=0).sum()) > 1e-12 for x in sample])
        contrast = np.zeros(len(blocks))
        partitions: dict[int, IntArray] = {}
        for j, x in enumerate(sample):
            if not alive[j]:
                continue
            best: tuple[float, IntArray] | None = None
            for k in candidates:
                labels = self._fit_k(x, k)
                score = self._contrast(x, labels, k, rng)
                if best is None or score > best[0]:
                    best = (score, labels)
            assert best is not None
            contrast[j], partitions[j] = best
        if not partitions:
            return [1.0] * len(blocks)
        # The votes: partitions of the blocks with structure beyond chance (all, if none has).
        votes = [p for j, p in partitions.items() if contrast[j] > 0] or list(partitions.values())
        top = float(contrast.max())
        relative = contrast / top if top > 0 else alive.astype(np.float64)
        weightings = [alive.astype(np.float64), relative, np.sqrt(relative)]
        keep = current is not None and len(current) == len(blocks)
        if keep:
            weightings.insert(0, np.asarray(current, dtype=np.float64))
        chosen, support = weightings[0], -np.inf
        for i, weights in enumerate(weightings):
            x = np.concatenate([b * w for b, w in zip(sample, weights, strict=True)], axis=1)
            labels, _ = self._labels(x)
            agreement = sum(float(adjusted_rand_score(p, labels)) for p in votes)
            if (keep and i == 0) or i == int(keep):
                # The weights in use, and equal weights, win near-ties: a block whose groups
                # overlap has no contrast alone (no vote) yet carries information, which
                # down-weighting it throws away on a sample's noise.
                agreement *= 1.0 + _KEEP_WEIGHTS
            if agreement > support + 1e-9:
                chosen, support = weights, agreement
        return [float(w) for w in chosen]

    def _contrast(self, x: FloatArray, labels: IntArray, k: int, rng: np.random.Generator) -> float:
        """How much better a block's K-partition's silhouette s is than the same fit's on
        Gaussian nulls with the block's mean and covariance: (s - max s0) / (1 - mean s0) over
        `_NULL_DRAWS` draws, at least 0 (the best draw, so chance-level structure scores 0)."""
        cov = np.atleast_2d(np.cov(x, rowvar=False))
        s = _silhouette(x, labels, len(x), rng)
        nulls = []
        for _ in range(_NULL_DRAWS):
            null = rng.multivariate_normal(x.mean(axis=0), cov, size=len(x), method="eigh")
            nulls.append(_silhouette(null, self._fit_k(null, k), len(x), rng))
        mean = float(np.mean(nulls))
        return max(0.0, (s - max(nulls)) / (1.0 - mean)) if mean < 1.0 else 0.0

    def _fit_k(self, x: FloatArray, k: int) -> IntArray:
        if self.method == "kmeans":
            model = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(x)
            return np.asarray(model.labels_, dtype=np.int64)
        model_h = AgglomerativeClustering(
            n_clusters=k, linkage=self.linkage, metric=self.metric
        ).fit(x)
        return np.asarray(model_h.labels_, dtype=np.int64)

    def fit(self, x: FloatArray, old_labels: IntArray, *, keep: bool | None = None) -> FitResult:
        """(Re-)fit on profiles `x` whose current cluster ids are `old_labels`; ids stay stable.

        With `keep` (default: whenever this clustering was fitted before) assets stay in their
        old cluster unless the new fit is clearly better for them (module docstring).
        """
        keep = self._fitted if keep is None else keep
        raw, stability = self._labels(x)
        floor = _SPREAD_FLOOR * np.maximum(x.var(axis=0), 1e-12) if len(x) else np.ones(0)
        raw = _refined(x, raw, floor)
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
        ids = [new_to_id[j] for j in order]
        labels = np.array([new_to_id[int(j)] for j in raw], dtype=np.int64)
        if keep:
            labels = self._kept(
                x,
                labels,
                old_labels,
                ids=ids,
                old=_moments(x, old_labels, old_ids, floor),
                new=_moments(x, raw, order, floor),
            )
        centroids, spread = _moments(x, labels, ids, floor)
        self._ids = ids
        self._centroids = centroids
        self._spread = spread
        self._fitted = True
        removed = [i for i in old_ids if i not in self._ids]
        successors = {
            old_ids[r]: new_to_id[int(np.argmin(cost[r]))]
            for r in range(len(old_ids))
            if old_ids[r] in removed
        }
        silhouette, per_cluster = _silhouettes(x, labels, np.random.default_rng(self.seed))
        return FitResult(
            labels=labels,
            parents=parents,
            removed=removed,
            successors=successors,
            silhouette=silhouette,
            cluster_silhouette=per_cluster,
            stability=stability,
        )

    def _kept(
        self,
        x: FloatArray,
        labels: IntArray,
        old_labels: IntArray,
        *,
        ids: list[int],
        old: tuple[FloatArray, FloatArray],
        new: tuple[FloatArray, FloatArray],
    ) -> IntArray:
        """The new labels, except where the old id survives and the asset's new cluster is not
        closer than its old cluster (its old members, in the new space) by the margin; `old`
        and `new`: (centroids, spreads) of the old clusters (ascending ids) and the new ones
        (in `ids` order)."""
        index = {cid: j for j, cid in enumerate(ids)}
        new_col = np.array([index[int(c)] for c in labels], dtype=np.int64)
        reference = np.minimum(old[1].min(axis=0), new[1].min(axis=0))
        d_new_all = _distances(x, *new, reference)
        d_new = d_new_all[np.arange(len(x)), new_col]
        old_ids = sorted(set(old_labels.tolist()))
        d_old_all = _distances(x, *old, reference)
        d_old = np.full(len(x), np.inf)
        for i, cid in enumerate(old_ids):
            if cid in index:
                rows = old_labels == cid
                d_old[rows] = d_old_all[rows, i]
        better = d_new < (1.0 - self.switch_margin) * d_old
        out: IntArray = np.where(np.isfinite(d_old) & ~better, old_labels, labels).astype(np.int64)
        return out

    def distances(self, profiles: FloatArray) -> FloatArray:
        """Distance of each profile to each cluster, scaled by the cluster's spread (columns
        in `ids` order; the module docstring)."""
        return _distances(profiles, self._centroids, self._spread)

    def settle(self, profiles: FloatArray, current: IntArray) -> IntArray:
        """One margin check without a streak (assets outside a re-fit's sample): the nearest
        cluster where the current one is gone or the nearest is closer by the margin."""
        if not self._fitted or len(self._ids) == 1:
            return np.full(len(profiles), self._ids[0], dtype=np.int64)
        ids = np.asarray(self._ids, dtype=np.int64)
        d = self.distances(profiles)
        nearest = np.argmin(d, axis=1)
        rows = np.arange(len(profiles))
        col = np.searchsorted(ids, current)
        known = (col < len(ids)) & (ids[np.minimum(col, len(ids) - 1)] == current)
        d_cur = np.where(known, d[rows, np.minimum(col, len(ids) - 1)], np.inf)
        move = d[rows, nearest] < (1.0 - self.switch_margin) * d_cur
        out: IntArray = np.where(move, ids[nearest], current).astype(np.int64)
        return out

    def reassign(
        self,
        profiles: FloatArray,
        current: IntArray,
        candidate: IntArray,
        streak: IntArray,
        placed: NDArray[np.bool_],
    ) -> tuple[IntArray, IntArray, IntArray]:
        """One online check with hysteresis: (cluster, candidate, streak) per asset.

        An unplaced asset (new since the last fit) goes to the nearest centroid. A placed one
        counts consecutive checks at which the same other centroid is closer by the margin, and
        moves there at `switch_checks`; a check without such a centroid resets the count.
        """
        nearest = self.assign_many(profiles)
        n = len(profiles)
        if not self._fitted or len(self._ids) == 1:
            return nearest, np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        settled = self.settle(profiles, current)
        wants = placed & (settled != current)
        streak = np.where(wants, np.where(candidate == settled, streak + 1, 1), 0)
        move = ~placed | (wants & (streak >= self.switch_checks))
        cluster = np.where(~placed, nearest, np.where(move, settled, current)).astype(np.int64)
        candidate = np.where(wants & ~move, settled, -1).astype(np.int64)
        streak = np.where(wants & ~move, streak, 0).astype(np.int64)
        return cluster, candidate, streak

    def assign(self, profile: FloatArray) -> int:
        """Id of the nearest cluster (cluster 0 before the first fit)."""
        return int(self.assign_many(np.asarray(profile, dtype=np.float64)[None, :])[0])

    def assign_many(self, profiles: FloatArray) -> IntArray:
        """Ids of the nearest clusters of several profiles (`distances`)."""
        if not self._fitted or len(self._ids) == 1:
            return np.full(len(profiles), self._ids[0], dtype=np.int64)
        d = self.distances(profiles)
        ids: IntArray = np.asarray(self._ids, dtype=np.int64)[np.argmin(d, axis=1)]
        return ids

    @property
    def spread(self) -> FloatArray:
        """Per cluster (rows in `ids` order) and coordinate: the variance distances divide by."""
        return self._spread.copy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "ids": list(self._ids),
            "centroids": self._centroids.copy(),
            "spread": self._spread.copy(),
            "dim": int(self._centroids.shape[1]),
            "next_id": self._next_id,
            "fitted": self._fitted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ids = [int(i) for i in state["ids"]]
        self._centroids = np.asarray(state["centroids"], dtype=np.float64).reshape(
            len(self._ids), int(state["dim"])
        )  # raises on a wrong size
        # Without spreads (a clustering saved before they existed): plain Euclidean distances.
        spread = state.get("spread")
        self._spread = (
            np.ones_like(self._centroids)
            if spread is None
            else np.asarray(spread, dtype=np.float64).reshape(self._centroids.shape)
        )
        if not np.all(np.isfinite(self._spread) & (self._spread > 0)):
            raise ValueError("cluster spreads must be finite and positive")
        self._next_id = int(state["next_id"])
        self._fitted = bool(state["fitted"])


def _moments(
    x: FloatArray, labels: IntArray, ids: Sequence[int], floor: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Centroid and spread (per-coordinate variance, at least `floor`) of each cluster in
    `ids` (a cluster without members: the population's)."""
    centroids, spreads = [], []
    for cid in ids:
        members = x[labels == cid]
        if not len(members):
            members = x
        centroids.append(members.mean(axis=0))
        spreads.append(np.maximum(members.var(axis=0), floor))
    return np.stack(centroids), np.stack(spreads)


def _distances(
    x: FloatArray, centroids: FloatArray, spread: FloatArray, reference: FloatArray | None = None
) -> FloatArray:
    """sqrt(sum_j (x_j - c_kj)^2 / s_kj + sum_j log(s_kj / r_j)) per row and cluster k, r the
    smallest spread per coordinate (`reference`, when several sets of clusters are compared):
    twice a diagonal Gaussian's negative log-likelihood up to a constant common to all
    clusters, shifted to be >= 0 so that the switch margin (a share of the distance) applies."""
    spread = np.maximum(spread, 1e-300)
    ref = spread.min(axis=0) if reference is None else np.minimum(reference, spread.min(axis=0))
    penalty = np.log(spread / ref[None, :]).sum(axis=1)
    q = (((x[:, None, :] - centroids[None, :, :]) ** 2) / spread[None, :, :]).sum(axis=2)
    d: FloatArray = np.sqrt(np.maximum(q + penalty[None, :], 0.0))
    return d


def _refined(x: FloatArray, labels: IntArray, floor: FloatArray) -> IntArray:
    """A fit's labels moved once to the nearest cluster by `_distances` (clusters that a
    tight neighbour's centroid would otherwise bite into keep their spread-out members);
    unchanged if a cluster would be left empty."""
    k = int(labels.max()) + 1 if len(labels) else 0
    if k < 2:
        return labels
    centroids, spread = _moments(x, labels, range(k), floor)
    out = np.argmin(_distances(x, centroids, spread), axis=1).astype(np.int64)
    return out if len(np.unique(out)) == k else labels


def _silhouette(x: FloatArray, labels: IntArray, max_rows: int, rng: np.random.Generator) -> float:
    """Silhouette of a labelling (on a sample of `max_rows` rows); 0 when it is undefined."""
    if len(set(labels.tolist())) < 2 or len(x) < 3:
        return 0.0
    size = min(len(x), max_rows)
    return float(
        silhouette_score(
            x,
            labels,
            sample_size=size if size < len(x) else None,
            random_state=int(rng.integers(2**31)),
        )
    )


def _silhouettes(
    x: FloatArray, labels: IntArray, rng: np.random.Generator, max_rows: int = 2000
) -> tuple[float, dict[int, float]]:
    """Mean silhouette of a fit and per cluster id (NaN where undefined)."""
    ids = sorted(set(labels.tolist()))
    if len(ids) < 2 or len(ids) >= len(x):
        return float("nan"), {i: float("nan") for i in ids}
    rows = np.arange(len(x))
    if len(x) > max_rows:
        rows = np.sort(rng.choice(len(x), size=max_rows, replace=False))
    if len(set(labels[rows].tolist())) < 2:
        return float("nan"), {i: float("nan") for i in ids}
    s = silhouette_samples(x[rows], labels[rows])
    per = {
        i: float(s[labels[rows] == i].mean()) if (labels[rows] == i).any() else float("nan")
        for i in ids
    }
    return float(s.mean()), per
