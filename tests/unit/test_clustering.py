"""Asset profiles and clustering: standardisation, K selection, stable ids across re-fits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from streamval.models.assets import AssetTable
from streamval.models.clustering import AssetClustering
from streamval.models.profiles import ProfileInputs, ProfileSpace, series_vector


def _blobs(centres: list[float], n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 0.3, size=(n, 3)) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n)


@pytest.mark.parametrize("method", ["hierarchical", "kmeans"])
def test_blobs_are_recovered_and_ids_are_stable_across_refits(method: str) -> None:
    x, truth = _blobs([0.0, 4.0, 8.0])
    clustering = AssetClustering(n_clusters=3, method=method)  # type: ignore[arg-type]
    first = clustering.fit(x, old_labels=np.zeros(len(x), dtype=np.int64))
    assert adjusted_rand_score(truth, first.labels) == 1.0
    assert sorted(first.parents) == [1, 2] and set(first.parents.values()) == {0}
    # Re-fit on shuffled, slightly moved data: every asset keeps its id, no new cluster.
    order = np.random.default_rng(1).permutation(len(x))
    second = clustering.fit(x[order] + 0.1, old_labels=first.labels[order])
    assert np.array_equal(second.labels, first.labels[order])
    assert second.parents == {} and second.removed == []
    assert clustering.assign(x[0]) == first.labels[0]


def test_a_new_cluster_gets_a_fresh_id_and_its_nearest_parent() -> None:
    x, _ = _blobs([0.0, 10.0])
    clustering = AssetClustering(n_clusters=2)
    first = clustering.fit(x, np.zeros(len(x), dtype=np.int64))
    # A smaller group appears beyond the 10-blob; online it was assigned to that blob's cluster.
    far = np.random.default_rng(2).normal(14.0, 0.3, size=(8, 3))
    clustering.n_clusters = 3
    second = clustering.fit(
        np.concatenate([x, far]), np.concatenate([first.labels, np.full(8, first.labels[-1])])
    )
    assert clustering.ids == [0, 1, 2]
    assert second.parents == {2: int(first.labels[-1])}
    assert np.array_equal(second.labels[:40], first.labels)
    assert set(second.labels[40:].tolist()) == {2}


def test_auto_k_picks_the_number_of_blobs_by_silhouette() -> None:
    x, truth = _blobs([0.0, 5.0, 10.0, 15.0], n=15)
    clustering = AssetClustering(n_clusters="auto", max_clusters=6)
    fit = clustering.fit(x, np.zeros(len(x), dtype=np.int64))
    assert len(clustering.ids) == 4
    assert adjusted_rand_score(truth, fit.labels) == 1.0


def test_state_round_trip() -> None:
    x, _ = _blobs([0.0, 4.0, 8.0])
    a = AssetClustering()
    a.fit(x, np.zeros(len(x), dtype=np.int64))
    b = AssetClustering()
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.assign_many(x), b.assign_many(x)) and a.ids == b.ids
    np.testing.assert_array_equal(a.spread, b.spread)
    # A state saved before clusters had spreads: plain Euclidean distances.
    old = {k: v for k, v in a.state_dict().items() if k != "spread"}
    b.load_state_dict(old)
    np.testing.assert_array_equal(b.spread, np.ones_like(a.spread))
    with pytest.raises(ValueError):
        b.load_state_dict({**old, "spread": -a.spread})


def test_a_broad_cluster_keeps_its_edge_from_a_tight_neighbour() -> None:
    """A tight group and a broad one: the broad group's members on the near side are closer to
    the tight centroid than to their own, yet belong to the broad group; the distance scaled by
    each cluster's spread (a diagonal Gaussian's likelihood) gives them to it."""
    rng = np.random.default_rng(0)
    tight = rng.normal(0.0, 0.2, size=(150, 2))
    broad = rng.normal(5.0, 1.5, size=(150, 2))
    x = np.concatenate([tight, broad])
    truth = np.repeat([0, 1], 150)
    clustering = AssetClustering(n_clusters=2)
    fit = clustering.fit(x, np.zeros(len(x), dtype=np.int64))
    assert adjusted_rand_score(truth, fit.labels) == 1.0
    home, away = int(fit.labels[0]), int(fit.labels[-1])
    edge = np.array([1.6, 1.6])  # nearer the tight centroid, 2.2 of its spreads; 2.0 of broad's
    centroids = np.stack([x[fit.labels == c].mean(axis=0) for c in (home, away)])
    assert np.argmin(np.linalg.norm(centroids - edge, axis=1)) == 0
    assert clustering.assign(edge) == away
    assert clustering.assign(np.array([0.3, -0.2])) == home
    row = clustering.ids.index(home)
    assert np.all(clustering.spread[row] < 0.1) and np.all(clustering.spread[1 - row] > 1.0)


def test_profile_space_one_hot_standardises_and_imputes() -> None:
    attrs: list[dict[str, float | str]] = [
        {"sector": "bank", "tier": 1.0},
        {"sector": "tech", "tier": 3.0},
        {"sector": "bank"},
    ]
    stats = np.array([[0.01, 0.02], [0.03, np.nan], [0.02, 0.04]])
    space = ProfileSpace()
    x = space.fit(ProfileInputs.from_records(attrs, stats))
    assert space.numeric == ["tier"] and space.categorical == ["sector"]
    assert x.shape == (3, 3 + 2)
    assert np.allclose(x[:, :3].mean(axis=0), 0.0)
    assert x[2, 0] == 0.0  # missing tier -> the mean
    # Each block has total variance 1 over the fitted assets: the one-hot (bank 2/3, tech 1/3:
    # variance 2/9 a column) is scaled by 1.5.
    assert x[:, 3] == pytest.approx([1.5, 0.0, 1.5])  # bank
    for block in space.block_slices():
        assert x[:, block].var(axis=0).sum() == pytest.approx(1.0)
    unseen = space.transform(
        ProfileInputs.from_records([{"sector": "energy", "tier": 2.0}], np.array([[0.02, 0.03]]))
    )
    assert list(unseen[0, 3:]) == [0.0, 0.0]


def test_an_attribute_that_is_sometimes_a_string_is_categorical() -> None:
    attrs: list[dict[str, float | str]] = [{"grade": "A"}, {"grade": 2.0}, {}]
    space = ProfileSpace()
    x = space.fit(ProfileInputs.from_records(attrs, np.zeros((3, 1))))
    assert space.categorical == ["grade"] and space.categories == [["", "2.0", "A"]]
    assert (x[:, 1:] > 0).tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_series_statistics_see_mean_reversion_and_trend() -> None:
    rng = np.random.default_rng(0)
    table = AssetTable(seq_len=4)
    rows = table.blank(2)
    both = np.array([0, 1])
    level, trend = 0.0, 0.0
    for _ in range(300):
        level += -0.5 * level + rng.normal(0, 0.01)
        trend += 0.01 + rng.normal(0, 0.001)
        step = rows.shift(both, np.zeros((2, 0), dtype=np.float32), np.zeros(2, dtype=bool))
        rows.absorb(both, np.array([100.0 + level, 100.0 + trend]), step)
    a = rows.arrays
    stats = series_vector(
        n=a["st_n"],
        mean=a["st_mean"],
        m2=a["st_m2"],
        n_pairs=a["st_pairs"],
        sum_xy=a["st_sxy"],
        feat_sum=a["st_fsum"],
        feat_count=a["st_fcount"],
    )
    assert stats[0, 2] < -0.15  # the reverting series' changes are negatively autocorrelated
    assert stats[1, 0] == pytest.approx(0.01 / 101.5, rel=0.05)  # the trend, scale-free


def test_other_linkages_fit_and_ward_needs_euclidean() -> None:
    x, truth = _blobs([0.0, 4.0, 8.0])
    clustering = AssetClustering(n_clusters=3, linkage="average", metric="manhattan")
    assert (
        adjusted_rand_score(truth, clustering.fit(x, np.zeros(len(x), dtype=np.int64)).labels)
        == 1.0
    )
    with pytest.raises(ValueError, match="euclidean"):
        AssetClustering(linkage="ward", metric="cosine")


def test_an_asset_moves_only_after_consecutive_checks_beyond_the_margin() -> None:
    x, _ = _blobs([0.0, 10.0])
    clustering = AssetClustering(n_clusters=2, switch_margin=0.25, switch_checks=3)
    fit = clustering.fit(x, np.zeros(len(x), dtype=np.int64))
    home, other = int(fit.labels[0]), int(fit.labels[-1])
    far = np.full((1, 3), 10.0)  # at the other centroid
    middle = np.full((1, 3), 5.2)  # closer to the other one, but not by the margin
    state = (np.array([home]), np.array([-1]), np.array([0]))
    placed = np.array([True])
    for profile in (far, far, middle, far, far):
        state = clustering.reassign(profile, *state, placed)
        assert state[0].tolist() == [home]  # the middle check reset the count
    state = clustering.reassign(far, *state, placed)
    assert state[0].tolist() == [other] and state[2].tolist() == [0]
    # A new (unplaced) asset goes straight to the nearest centroid.
    new = clustering.reassign(far, np.array([home]), np.array([-1]), np.array([0]), ~placed)
    assert new[0].tolist() == [other]


def test_a_refit_keeps_borderline_assets_where_they_were() -> None:
    x, truth = _blobs([0.0, 4.0])
    clustering = AssetClustering(n_clusters=2, switch_margin=0.25)
    first = clustering.fit(x, np.zeros(len(x), dtype=np.int64))
    # Pretend two assets of blob 0 had been placed in blob 1's cluster and one moved right
    # next to blob 1: the first two stay (not clearly better elsewhere), nothing else moves.
    old = first.labels.copy()
    old[[0, 1]] = first.labels[-1]
    moved = x.copy()
    moved[[0, 1]] = 2.0  # half-way: the new fit is not clearly better for them
    second = clustering.fit(moved, old)
    assert second.labels[[0, 1]].tolist() == [first.labels[-1]] * 2
    assert np.array_equal(second.labels[2:], first.labels[2:])
    assert adjusted_rand_score(truth[2:], second.labels[2:]) == 1.0
    # Without keep (the bootstrap) the fit's own labels are taken.
    fresh = AssetClustering(n_clusters=2).fit(moved, old, keep=False)
    assert len(set(fresh.labels[:2].tolist())) == 1


def test_series_statistics_are_shrunk_while_history_is_short() -> None:
    """One volatile asset: with 2 observations its profile sits much nearer the population than
    with 200, when it sits at its own volatility."""
    rng = np.random.default_rng(0)
    stats = np.column_stack([np.zeros(50), rng.uniform(0.01, 0.02, 50), np.zeros(50)])
    counts = np.full((50, 3), 100.0)
    space = ProfileSpace(pseudo_count=6.0)
    space.fit(ProfileInputs(stats=stats, counts=counts))
    wild = np.array([[0.0, 0.04, 0.0]])
    young = space.transform(ProfileInputs(stats=wild, counts=np.array([[2.0, 1.0, 1.0]])))
    old = space.transform(ProfileInputs(stats=wild, counts=np.array([[200.0, 199.0, 198.0]])))
    population = space.transform(ProfileInputs(stats=stats, counts=counts))[:, 1]
    centre = population.mean()
    assert old[0, 1] - centre > 3 * population.std()
    assert young[0, 1] - centre < 0.5 * (old[0, 1] - centre)
    # Unknown statistics (a new asset) are the population value.
    blank = space.transform(ProfileInputs(stats=np.full((1, 3), np.nan), counts=np.zeros((1, 3))))
    assert abs(blank[0, 1] - population.mean()) < 0.5 * population.std()


def test_block_weights_keep_a_clean_block_and_drop_noise() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 60)
    clean = np.eye(3)[truth] * 1.2  # a one-hot that identifies the groups
    noise = [rng.normal(size=(180, 1)) for _ in range(6)]
    weights = AssetClustering(n_clusters=3).block_weights([clean, *noise])
    assert weights[0] == 1.0 and max(weights[1:]) < 0.3


def test_block_weights_let_agreeing_blocks_outvote_one_crisp_block() -> None:
    """A crisp three-valued block (a tier) that only partly follows the groups, and five noisy
    blocks that all follow them: the weighting that agrees with most blocks wins."""
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 80)
    tier = np.where(rng.random(240) < 0.6, truth, rng.integers(0, 3, 240))
    views = [(truth + rng.normal(0, 0.35, 240))[:, None] for _ in range(5)]
    weights = AssetClustering(n_clusters=3).block_weights([np.eye(3)[tier], *views])
    x = np.concatenate([b * w for b, w in zip([np.eye(3)[tier], *views], weights, strict=True)], 1)
    labels = AssetClustering(n_clusters=3).fit(x, np.zeros(240, dtype=np.int64)).labels
    assert adjusted_rand_score(truth, labels) > adjusted_rand_score(truth, tier) + 0.2


def test_auto_k_scores_stability_too() -> None:
    x, truth = _blobs([0.0, 5.0, 10.0], n=30)
    clustering = AssetClustering(n_clusters="auto", max_clusters=6)
    fit = clustering.fit(x, np.zeros(len(x), dtype=np.int64))
    assert len(clustering.ids) == 3 and fit.stability > 0.9
    assert adjusted_rand_score(truth, fit.labels) == 1.0
    assert fit.silhouette > 0.5 and set(fit.cluster_silhouette) == set(clustering.ids)


def test_block_weights_in_use_survive_a_refit_unless_clearly_worse() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 60)
    blocks = [np.eye(3)[truth] * 1.2, *(rng.normal(size=(180, 1)) for _ in range(4))]
    clustering = AssetClustering(n_clusters=3)
    in_use = [0.9, 0.05, 0.0, 0.05, 0.0]  # as good as any candidate: kept
    assert clustering.block_weights(blocks, in_use) == in_use
    noise_only = [0.0, 1.0, 0.0, 0.0, 0.0]  # agrees with nothing: replaced
    assert clustering.block_weights(blocks, noise_only)[0] == 1.0
