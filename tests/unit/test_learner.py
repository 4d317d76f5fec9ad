"""Per-cluster sequence learner: persistence at start, bounded micro-batch learning, state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from streamval.models.learner import Cell, ConstantSchedule, SequenceLearner


def _samples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Target = 0.02 * feature at the last step (+ noise): a learnable signal."""
    rng = np.random.default_rng(seed)
    windows = np.zeros((n, 4, 2))
    windows[:, :, 0] = np.cumsum(rng.normal(0, 0.01, (n, 4)), axis=1)
    windows[:, :, 0] -= windows[:, -1:, 0]
    windows[:, :, 1] = rng.normal(0, 1, (n, 4))
    targets = 0.02 * windows[:, -1, 1] + rng.normal(0, 0.002, n)
    return windows, targets


def _learner(cell: Cell = "lstm", seed: int = 0) -> SequenceLearner:
    return SequenceLearner(
        n_features=1, seq_len=4, cell=cell, hidden=[8, 4], batch_size=16, lr=1e-2, seed=seed
    )


@pytest.mark.parametrize("cell", ["lstm", "gru", "linear"])
def test_untrained_model_is_persistence_and_learns_a_signal(cell: Cell) -> None:
    learner = _learner(cell)
    x, y = _samples(2000)
    assert np.all(learner.predict(x[:50]) == 0.0)
    for w, t in zip(x, y, strict=True):
        learner.add(w, t)
    while learner.learn(max_updates=50):
        pass
    test_x, test_y = _samples(300, seed=1)
    mse = float(np.mean((learner.predict(test_x) - test_y) ** 2))
    baseline = float(np.mean(test_y**2))  # persistence predicts a change of 0
    assert mse < 0.3 * baseline, (cell, mse, baseline)


def test_updates_are_bounded_and_need_a_micro_batch_of_fresh_samples() -> None:
    learner = _learner()
    x, y = _samples(200)
    assert learner.fresh_per_update == 8
    for w, t in zip(x[:7], y[:7], strict=True):
        learner.add(w, t)
    assert learner.learn(max_updates=10) == 0  # never one step per event
    for w, t in zip(x[7:], y[7:], strict=True):
        learner.add(w, t)
    assert learner.learn(max_updates=3) == 3
    assert learner.updates == 3 and learner.samples_seen == 200


def test_smaller_replay_share_keeps_the_update_rate() -> None:
    learner = _learner()
    x, y = _samples(64)
    for w, t in zip(x, y, strict=True):
        learner.add(w, t)
    assert learner.learn(max_updates=100, schedule=ConstantSchedule(1e-2, replay_fraction=0.1)) == 8


def test_state_round_trip_and_fork() -> None:
    a = _learner()
    x, y = _samples(600)
    for w, t in zip(x[:300], y[:300], strict=True):
        a.add(w, t)
    a.learn(max_updates=10)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = a.clone()
    b.load_state_dict(torch.load(buffer))
    child = a.fork(seed=99)
    assert np.array_equal(child.predict(x[:20]), a.predict(x[:20]))
    assert child.updates == a.updates and child.own_updates == 0 and child.samples_seen == 0
    for learner in (a, b):
        for w, t in zip(x[300:], y[300:], strict=True):
            learner.add(w, t)
        learner.learn(max_updates=10)
    assert np.array_equal(a.predict(x[:50]), b.predict(x[:50]))
    assert not np.array_equal(child.predict(x[:50]), a.predict(x[:50]))  # the fork is independent


def test_reset_moments_zeroes_momentum_only() -> None:
    learner = _learner()
    x, y = _samples(100)
    for w, t in zip(x, y, strict=True):
        learner.add(w, t)
    learner.learn(max_updates=2)
    learner.reset_moments()
    states = list(learner.state_dict()["opt"]["state"].values())
    assert states and all(torch.all(s["exp_avg"] == 0) for s in states)
    assert any(torch.any(s["exp_avg_sq"] > 0) for s in states)


def test_construction_leaves_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a, b = _learner(seed=3), _learner(seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    for (_, p), (_, q) in zip(
        a.state_dict()["net"].items(), b.state_dict()["net"].items(), strict=True
    ):
        assert torch.equal(p, q)
