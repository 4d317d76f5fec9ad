"""Partial pooling (`engine.pooling`): per-cluster models, one shared network with per-cluster
heads, one global network; state, training modes, new clusters, learning from few samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tests.unit.test_engine import SMALL, round_trip, run, three_groups

from streamval.config import EngineSettings, load_settings
from streamval.engine import Engine
from streamval.errors import CheckpointError, ConfigError
from streamval.models.drift import AdaptiveLearningRate
from streamval.models.experts import ExpertMix
from streamval.models.learner import Predictor, SequenceLearner
from streamval.models.trainer import RemoteTrainer, Trainer
from streamval.stream.contract.outputs import Valuation
from streamval.stream.contract.schema import AssetEvent

DAY = 86_400_000
MODES = ["cluster", "shared", "global"]


def momentum_stream(steps: int, seed: int, groups: int = 3, per: int = 10) -> list[AssetEvent]:
    """Groups told apart by a sector attribute that share their dynamics: each asset's change is
    0.6 times its last change plus noise, so a model can beat persistence by up to a third."""
    rng = np.random.default_rng(seed)
    n = groups * per
    value = rng.uniform(50, 150, n)
    change = np.zeros(n)
    sectors = ["bank", "tech", "energy", "retail"][:groups]
    events = []
    for t in range(steps):
        change = 0.6 * change + rng.normal(0, 1.0, n)
        value = value + change
        for k in rng.permutation(n).tolist():
            g = k // per
            events.append(
                AssetEvent(
                    f"g{g}-{k}", (t + 1) * DAY, float(value[k]), attributes={"sector": sectors[g]}
                )
            )
    return events


def mse_over_persistence(valuations: list[Valuation], after_ms: int) -> float:
    """MSE of the model-made valuations after `after_ms` over persistence's on the same events."""
    last: dict[str, float] = {}
    model, persistence = [], []
    for v in valuations:
        previous = last.get(v.asset_id)
        assert v.value is not None
        last[v.asset_id] = v.value
        if v.ts_ms > after_ms and not v.warming and previous is not None:
            model.append((v.valuation - v.value) ** 2)
            persistence.append((previous - v.value) ** 2)
    return float(np.mean(model) / np.mean(persistence))


# -- settings -------------------------------------------------------------------------------------


def test_a_bad_pooling_value_fails_fast_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"engine\.pooling.*'cluster', 'shared' or 'global'"):
        load_settings(overrides={"engine.pooling": "pooled"}, environ={})
    assert load_settings(environ={}).engine.pooling == "cluster"  # the paper stays the default
    with pytest.raises(ValueError, match="pooling 'pooled'"):
        SequenceLearner(0, pooling="pooled")  # type: ignore[arg-type]


# -- state and training modes ---------------------------------------------------------------------


@pytest.mark.parametrize("pooling", MODES)
def test_state_round_trips_to_identical_valuations(pooling: str) -> None:
    events, _ = three_groups(steps=50)
    cut = 30 * 35
    settings = EngineSettings(**SMALL, refit_every=600, pooling=pooling)
    original = Engine(settings)
    run(original, events[:cut])
    assert original.clusters == [0, 1, 2]
    state = round_trip(original.state_dict())
    pooled = pooling != "cluster"
    assert (state["shared_learner"] is not None) == pooled
    assert (state["pool"] is not None) == (not pooled)  # the pooled expert: per-cluster models
    assert all((slot["learner"] is None) == pooled for slot in state["trainer"].values())
    if pooled:
        heads = state["shared_learner"]["heads"]
        assert sorted(heads) == (["0", "1", "2"] if pooling == "shared" else [])
    restored = Engine(settings)
    restored.load_state_dict(state)
    assert restored.snapshot() == original.snapshot()
    assert run(original, events[cut:]) == run(restored, events[cut:])
    assert restored.snapshot() == original.snapshot()
    other = next(m for m in MODES if m != pooling)
    with pytest.raises(CheckpointError, match=f"pooling='{pooling}' \\(settings: '{other}'\\)"):
        Engine(EngineSettings(**SMALL, refit_every=600, pooling=other)).load_state_dict(state)


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(shared_learner=None),
        lambda s: s["shared_learner"]["heads"].update({"0": torch.zeros(3)}),
        lambda s: s["shared_learner"].update(res_c=np.zeros(1, dtype=np.int64)),
        lambda s: s["trainer"]["0"].update(learner=s["shared_learner"]),
    ],
)
def test_a_damaged_pooled_state_is_refused_with_a_checkpoint_error(damage: Any) -> None:
    events, _ = three_groups(steps=20)
    settings = EngineSettings(**SMALL, pooling="shared")
    engine = Engine(settings)
    run(engine, events)
    state = engine.state_dict()
    damage(state)
    with pytest.raises(CheckpointError):
        Engine(settings).load_state_dict(state)


@pytest.mark.parametrize("pooling", ["shared", "global"])
def test_background_training_publishes_the_shared_model_to_every_cluster(pooling: str) -> None:
    events, _ = three_groups(steps=61)
    engine = Engine(EngineSettings(**{**SMALL, "training": "background", "pooling": pooling}))
    try:
        run(engine, events[:-30])
        engine.flush()
        snaps = engine.snapshot()
        assert len(snaps) == 3 and sum(s.updates for s in snaps) > 0
        # one network: every cluster serves the same version, the sum of all clusters' steps
        assert {s.model_version for s in snaps} == {engine.trainer.snapshot(0).version}
        assert sum(s.updates for s in snaps) <= snaps[0].model_version
        for s in snaps:
            assert s.trained_samples >= s.updates * engine.settings.batch_size  # catch-up steps
        state = engine.state_dict()
    finally:
        engine.close()
    restored = Engine(EngineSettings(**SMALL, pooling=pooling))
    restored.load_state_dict(state)
    assert restored.snapshot() == engine.snapshot()


def test_sync_shared_pooling_is_deterministic_whatever_the_batch_cut() -> None:
    events, _ = three_groups(steps=45, seed=2)
    settings = EngineSettings(**SMALL, refit_every=400, pooling="shared")
    whole = Engine(settings).process(events).valuations
    rng = np.random.default_rng(0)
    engine, pieces, pos = Engine(settings), [], 0
    while pos < len(events):
        size = int(rng.integers(1, 200))
        pieces.extend(engine.process(events[pos : pos + size]).valuations)
        pos += size
    assert [(v.asset_id, v.ts_ms, v.model_version, v.cluster) for v in pieces] == [
        (v.asset_id, v.ts_ms, v.model_version, v.cluster) for v in whole
    ]
    assert [v.valuation for v in pieces] == pytest.approx([v.valuation for v in whole], rel=1e-9)
    assert max(v.model_version for v in whole) > 10
    assert Engine(settings).process(events).valuations == whole


# -- new clusters ---------------------------------------------------------------------------------


def test_new_clusters_start_from_the_shared_part() -> None:
    events, _ = three_groups(steps=40)
    engine = Engine(EngineSettings(**SMALL, bootstrap_assets=30, min_history=30, pooling="shared"))
    run(engine, events[: 30 * 30])
    engine.flush()
    assert engine.fitted and engine.clusters == [0, 1, 2]
    learner = engine.trainer.learner(0)
    assert all(engine.trainer.learner(c) is learner for c in (1, 2))  # one network
    state = learner.state_dict()
    for cid in ("1", "2"):  # the bootstrap's new clusters take the mean of the heads: cluster 0's
        assert torch.equal(state["heads"][cid], state["heads"]["0"])
    windows = np.random.default_rng(0).normal(0, 1, (20, 12, 1 + engine.settings.max_features))
    windows = windows.astype(np.float32)
    windows[..., 1:] = np.nan  # no features
    served = {}
    for cid in (0, 1, 2):
        predictor = Predictor(8, 12, "lstm", [16, 8], cluster=cid)
        predictor.load(engine.trainer.snapshot(cid))
        served[cid] = predictor.predict(windows)
    untrained = SequenceLearner(8, seq_len=12, hidden=[16, 8], pooling="shared")
    assert np.all(untrained.predict(windows) == 0.0)  # an untrained net is persistence
    assert np.abs(served[1]).mean() > 1e-3  # a new cluster is not
    np.testing.assert_allclose(served[1], served[0], rtol=1e-6)


def test_a_later_cluster_head_is_the_mean_of_the_live_ones_and_serves_at_once() -> None:
    learner = SequenceLearner(0, seq_len=4, hidden=[8], batch_size=8, pooling="shared", seed=3)
    rng = np.random.default_rng(1)
    for cluster, slope in ((0, 0.5), (1, -0.5), (0, 0.5), (1, -0.5)) * 5:
        x = rng.normal(0, 1, (8, 4, 1)).astype(np.float32)
        learner.step(x, slope * x[:, -1, 0].astype(np.float64), lr=1e-2, cluster=cluster)
    state = learner.state_dict()
    assert not torch.equal(state["heads"]["0"], state["heads"]["1"])
    learner.add_cluster(7, like=[0, 1])
    mean = (state["heads"]["0"] + state["heads"]["1"]) / 2
    assert torch.allclose(learner.state_dict()["heads"]["7"], mean)
    x = rng.normal(0, 1, (16, 4, 1)).astype(np.float32)
    new = learner.predict(x, cluster=7)
    assert np.abs(new).mean() > 1e-3
    between = (learner.predict(x, cluster=0) + learner.predict(x, cluster=1)) / 2
    np.testing.assert_allclose(new, between, rtol=1e-4, atol=1e-6)  # a linear head: the mean
    # a cluster the snapshot has no head for is served by the shared part alone
    shared_only = Predictor.for_learner(learner, cluster=99).predict(x)
    assert np.abs(shared_only).mean() > 1e-3 and not np.allclose(shared_only, new)


# -- the fast learner under pooling ---------------------------------------------------------------


def _pooled_trainer(learner: SequenceLearner) -> Trainer:
    trainer = Trainer(batch_size=8, max_backlog=64, background=False, pooled=True)
    for cluster in (0, 1):
        trainer.add(cluster, learner, AdaptiveLearningRate(1e-2, seed=cluster))
    return trainer


def test_a_fast_learner_under_shared_pooling_is_a_private_copy_retired_instead_of_folded() -> None:
    learner = SequenceLearner(0, seq_len=4, hidden=[8], batch_size=8, pooling="shared", seed=2)
    trainer = _pooled_trainer(learner)
    rng = np.random.default_rng(0)

    def feed(cluster: int, n: int = 8) -> None:
        x = rng.normal(0, 1, (n, 4, 1)).astype(np.float32)
        y = 0.5 * x[:, -1, 0].astype(np.float64)
        trainer.submit(cluster, x, y, np.arange(n, dtype=np.int64))

    feed(0)
    feed(1)
    trainer.run_due()
    assert trainer.snapshot(0) is trainer.snapshot(1)  # one network, published to both
    trainer.start_fast(0, seed=5, lr=5e-2)
    feed(1)
    trainer.run_due()
    fast = trainer.fast_snapshot(0)
    assert fast is not None and fast.version == 1 + 1  # a copy: cluster 1's step did not train it
    feed(0)
    trainer.run_due()
    fast_after = trainer.fast_snapshot(0)
    assert fast_after is not None and fast_after.version == 3
    before = learner.state_dict()
    trainer.end_fast(0, fold=True)
    after = learner.state_dict()
    assert trainer.fast_snapshot(0) is None
    for name, tensor in before["net"].items():  # the shared network is not overwritten
        assert torch.equal(after["net"][name], tensor)
    state = trainer.state_dict()
    assert state["0"]["learner"] is None and state["0"]["steps"] == 2


def test_a_pooled_engines_expert_mix_retires_a_fast_learner_that_would_be_folded() -> None:
    from tests.unit.test_shocks import _steps

    for pooling, end in (("cluster", "folded"), ("shared", "retired"), ("global", "retired")):
        settings = EngineSettings(
            **SMALL, pooling=pooling, persistence_expert=False, fast_max_steps=12
        )
        mix = Engine(settings)._clusters[0].mix.fork()  # a new cluster's mix keeps the setting
        mix.start_fast()
        assert _steps(mix, 14, fast_err=0.0, stable_err=0.5) == ["served", end], pooling
    assert not ExpertMix(can_fold=False).can_fold


# -- what pooling is for ---------------------------------------------------------------------------


def test_shared_pooling_learns_shared_dynamics_faster_than_per_cluster_models() -> None:
    """Three clusters with the same dynamics and 80 steps: each per-cluster model sees a third
    of the samples and has barely left persistence; the shared network has learnt them, and so
    has the pooled expert beside the per-cluster models (`pooled_expert`, the default). (With
    `pooling="shared"` replaced by per-cluster models this fails: both ratios are ~0.99.)"""
    steps = 80
    events = momentum_stream(steps, seed=0)
    ratios: dict[str, float] = {}
    for name, pooling, pooled_expert in (
        ("cluster", "cluster", False),
        ("cluster+pooled", "cluster", True),
        ("shared", "shared", True),
    ):
        engine = Engine(
            EngineSettings(
                hidden=[16, 8],
                batch_size=16,
                training="sync",
                pooling=pooling,
                pooled_expert=pooled_expert,
            )
        )
        valuations = run(engine, events, chunk=30)
        assert engine.clusters == [0, 1, 2]
        assert (engine.trainer.pool_snapshot() is not None) == (name == "cluster+pooled")
        ratios[name] = mse_over_persistence(valuations, after_ms=steps // 2 * DAY)
    assert ratios["shared"] < 0.93, ratios
    assert ratios["shared"] < ratios["cluster"] - 0.05, ratios
    assert ratios["cluster+pooled"] < ratios["cluster"] - 0.03, ratios


# -- the pooled expert beside per-cluster models (`pooled_expert`) ---------------------------------


def test_the_pooled_expert_starts_at_the_first_split_and_learns_every_clusters_samples() -> None:
    events, _ = three_groups(steps=50)
    engine = Engine(EngineSettings(**SMALL))
    first = run(engine, events[:300])
    assert engine.clusters == [0] and engine.trainer.pool_snapshot() is None
    assert all(len(c.mix.weights()) == 4 and not c.mix.pooled for c in engine._clusters.values())
    assert first  # one cluster: nothing to pool
    run(engine, events[300:])
    assert engine.clusters == [0, 1, 2]
    counts = engine.trainer.pool_counts()
    assert counts is not None
    queued, trained, _ = counts
    per_cluster = [engine.trainer.counts(c) for c in engine.clusters]
    # every sample of every cluster since the split, in steps of its own
    assert trained + queued > max(t + q for q, t, _ in per_cluster)
    assert all(c.mix.pooled for c in engine._clusters.values())
    weights = {c: cl.mix.served_weights() for c, cl in engine._clusters.items()}
    assert all(w[3] > 0.0 for w in weights.values()), weights
    without = Engine(EngineSettings(**SMALL, pooled_expert=False))
    run(without, events)
    assert without.clusters == [0, 1, 2] and without.trainer.pool_counts() is None


def test_the_pooled_expert_is_deterministic_whatever_the_batch_cut() -> None:
    """Its samples queue in event order, not cluster by cluster within a batch."""
    events, _ = three_groups(steps=40, seed=3)
    outs = []
    for chunk in (1, 97, len(events)):
        engine = Engine(EngineSettings(**SMALL))
        outs.append([v.valuation for v in run(engine, events, chunk=chunk)])
        assert engine.trainer.pool_counts() is not None
    assert outs[0] == pytest.approx(outs[1], rel=1e-9) and outs[0] == pytest.approx(outs[2])


def test_a_valuer_restoring_a_pooled_model_serves_it_until_its_learner_publishes() -> None:
    """A valuer (split mode) mirrors the pooled model as it mirrors the clusters' models."""
    events, _ = three_groups(steps=50)
    engine = Engine(EngineSettings(**SMALL))
    run(engine, events)
    state = engine.state_dict()
    assert state["pool"] is not None

    def remote(s: EngineSettings) -> Trainer:
        return RemoteTrainer(
            sink=lambda *a, **k: None, batch_size=s.batch_size, max_backlog=s.max_backlog
        )

    valuer = Engine(EngineSettings(**SMALL), trainer=remote)
    valuer.load_state_dict(state)
    assert valuer.clusters == engine.clusters
    mirror, pool = valuer.trainer.pool_snapshot(), engine.trainer.pool_snapshot()
    assert mirror is not None and pool is not None and mirror.version == pool.version > 0
    like = engine.trainer.learner(0)
    x = np.random.default_rng(0).normal(size=(3, like.seq_len, like.n_inputs)).astype(np.float32)
    mirrored, trained = Predictor.for_learner(like), Predictor.for_learner(like)
    mirrored.load(mirror)
    trained.load(pool)
    np.testing.assert_array_equal(mirrored.predict(x), trained.predict(x))
    valuer.close()
    engine.close()


def test_a_mix_saved_before_the_pooled_expert_loads_without_it() -> None:
    mix = ExpertMix(prior=0.4)
    old = mix.state_dict()
    old["w"], old["live"] = old["w"][:3], old["live"][:3]
    old["loss"] = np.delete(old["loss"], 3)
    loaded = ExpertMix(prior=0.4)
    loaded.load_state_dict(old)
    assert not loaded.pooled and loaded.served_weights().tolist() == [0.6, 0.4, 0.0, 0.0]
    assert loaded.join_pooled() and loaded.served_weights().round(4).tolist() == [
        0.4286,
        0.2857,
        0.0,
        0.2857,
    ]
    assert not loaded.join_pooled()
