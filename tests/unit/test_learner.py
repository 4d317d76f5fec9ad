"""Per-cluster sequence model: persistence at start, steps of fresh plus replayed samples,
snapshots served by a separate copy, state as data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamval.models.learner import Cell, Predictor, SequenceLearner


def _samples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Target = 0.02 * feature at the last step (+ noise): a learnable signal."""
    rng = np.random.default_rng(seed)
    windows = np.zeros((n, 4, 2), dtype=np.float32)
    windows[:, :, 0] = np.cumsum(rng.normal(0, 0.01, (n, 4)), axis=1)
    windows[:, :, 0] -= windows[:, -1:, 0]
    windows[:, :, 1] = rng.normal(0, 1, (n, 4))
    targets = 0.02 * windows[:, -1, 1] + rng.normal(0, 0.002, n)
    return windows, targets


def _learner(cell: Cell = "lstm", seed: int = 0) -> SequenceLearner:
    return SequenceLearner(
        n_features=1, seq_len=4, cell=cell, hidden=[8, 4], batch_size=16, lr=1e-2, seed=seed
    )


def _train(learner: SequenceLearner, x: np.ndarray, y: np.ndarray) -> None:
    b = learner.batch_size
    for i in range(0, len(y) - b + 1, b):
        learner.step(x[i : i + b], y[i : i + b])


@pytest.mark.parametrize("cell", ["lstm", "gru", "linear"])
def test_untrained_model_is_persistence_and_learns_a_signal(cell: Cell) -> None:
    learner = _learner(cell)
    x, y = _samples(4000)
    assert np.all(learner.predict(x[:50]) == 0.0)
    _train(learner, x, y)
    test_x, test_y = _samples(300, seed=1)
    mse = float(np.mean((learner.predict(test_x) - test_y) ** 2))
    baseline = float(np.mean(test_y**2))  # persistence predicts a change of 0
    assert mse < 0.3 * baseline, (cell, mse, baseline)


def test_a_step_trains_its_fresh_samples_once_plus_a_replay_share_of_older_ones() -> None:
    learner = _learner()
    x, y = _samples(64)
    assert learner.replay_size(0.5) == 0  # nothing to replay yet
    learner.step(x[:16], y[:16])
    assert (learner.updates, learner.samples_seen) == (1, 16)
    assert learner.replay_size(0.5) == 16  # as many old samples as fresh ones at share 0.5
    assert learner.replay_size(0.2) == 4
    learner.step(x[16:32], y[16:32], replay_fraction=0.2)
    assert (learner.updates, learner.samples_seen) == (2, 32)


def test_the_serving_copy_changes_only_when_a_snapshot_is_loaded() -> None:
    learner = _learner()
    serving = Predictor.for_learner(learner)
    x, y = _samples(400)
    before = serving.predict(x[:20])
    _train(learner, x, y)
    assert np.array_equal(serving.predict(x[:20]), before)  # still the published version 0
    snapshot = learner.snapshot()
    serving.load(snapshot)
    assert serving.version == learner.updates == 25
    assert np.array_equal(serving.predict(x[:20]), learner.predict(x[:20]))
    _train(learner, *_samples(64, seed=2))
    for tensor in snapshot.networks["main"].values():  # a snapshot is never written to
        assert tensor.data_ptr() not in {p.data_ptr() for p in learner._net.parameters()}


def test_state_round_trip_and_fork() -> None:
    a = _learner()
    x, y = _samples(600)
    _train(a, x[:300], y[:300])
    state = a.state_dict()
    as_arrays = {
        **state,
        "net": {k: v.numpy() for k, v in state["net"].items()},
        "adam": {k: [np.asarray(t) for t in v] for k, v in state["adam"].items()},
    }
    b = a.clone()
    b.load_state_dict(as_arrays)  # tensors may come back from a codec as arrays
    child = a.fork(seed=99)
    assert np.array_equal(child.predict(x[:20]), a.predict(x[:20]))
    assert child.updates == a.updates and child.own_updates == 0 and child.samples_seen == 0
    for learner in (a, b):
        _train(learner, x[300:], y[300:])
    assert np.array_equal(a.predict(x[:50]), b.predict(x[:50]))
    assert not np.array_equal(child.predict(x[:50]), a.predict(x[:50]))  # the fork is independent


def test_a_state_of_another_shape_is_refused() -> None:
    state = _learner().state_dict()
    other = SequenceLearner(n_features=2, seq_len=4, hidden=[8, 4], batch_size=16)
    with pytest.raises(RuntimeError):
        other.load_state_dict(state)


def test_reset_moments_zeroes_momentum_only() -> None:
    learner = _learner()
    x, y = _samples(100)
    _train(learner, x, y)
    learner.reset_moments()
    adam = learner.state_dict()["adam"]
    assert adam["exp_avg"] and all(torch.all(t == 0) for t in adam["exp_avg"])
    assert any(torch.any(t > 0) for t in adam["exp_avg_sq"])


def test_construction_leaves_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a, b = _learner(seed=3), _learner(seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    for (_, p), (_, q) in zip(
        a.state_dict()["net"].items(), b.state_dict()["net"].items(), strict=True
    ):
        assert torch.equal(p, q)
