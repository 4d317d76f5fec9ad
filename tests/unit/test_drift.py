"""Drift-adaptive learning rate: detectors, alarm counting, boost and decay, state."""

from __future__ import annotations

import numpy as np
import pytest

from streamval.models.drift import AdaptiveLearningRate, DriftMonitor


def _feed(policy: AdaptiveLearningRate, errors: np.ndarray) -> list[int]:
    return [i for i, e in enumerate(errors) if policy.update(float(e)) is not None]


def _errors(seed: int, n: int, level: float) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(0.0, level, n))


@pytest.mark.parametrize("name", ["adwin", "page_hinkley", "kswin"])
def test_each_detector_fires_on_an_error_increase_within_bounded_events(name: str) -> None:
    policy = AdaptiveLearningRate(base_lr=1e-3, detector=name)  # type: ignore[arg-type]
    calm = _feed(policy, _errors(0, 600, 0.01))
    alarms = _feed(policy, _errors(1, 300, 0.05))
    assert alarms, name
    print(f"{name}: first alarm {alarms[0]} events after a 5x error increase")
    assert alarms[0] <= 100
    if name != "kswin":  # KSWIN tests every event at alpha=0.005 and may fire on calm data
        assert calm == []
    assert policy.alarms == len(calm) + len(alarms)


def test_an_error_decrease_is_not_an_alarm() -> None:
    policy = AdaptiveLearningRate(base_lr=1e-3)
    _feed(policy, _errors(0, 600, 0.05))
    assert _feed(policy, _errors(1, 600, 0.005)) == []
    assert policy.alarms == 0 and not policy.adapting


def test_boost_then_half_life_decay_back_to_base() -> None:
    policy = AdaptiveLearningRate(
        base_lr=1e-3, boost=5.0, half_life=10.0, base_replay_fraction=0.5, drift_replay_fraction=0.1
    )
    policy.trigger()
    assert policy.lr == pytest.approx(5e-3) and policy.adapting and policy.replay_fraction == 0.1
    for _ in range(10):
        policy.on_update()
    assert policy.lr == pytest.approx(3e-3)
    policy.trigger()  # a second alarm restarts the boost, it does not compound
    assert policy.lr == pytest.approx(5e-3)
    for _ in range(200):
        policy.on_update()
    assert policy.lr == 1e-3 and not policy.adapting and policy.replay_fraction == 0.5
    assert policy.alarms == 2


def test_boost_of_one_counts_alarms_but_keeps_the_lr() -> None:
    policy = AdaptiveLearningRate(base_lr=1e-3, boost=1.0)
    _feed(policy, _errors(0, 600, 0.01))
    fired = _feed(policy, _errors(1, 300, 0.05))
    assert fired and policy.alarms == len(fired)
    assert policy.lr == 1e-3 and not policy.adapting


def test_alarm_reports_levels_before_and_after() -> None:
    policy = AdaptiveLearningRate(base_lr=1e-3)
    _feed(policy, _errors(0, 600, 0.01))
    for e in _errors(1, 300, 0.05):
        levels = policy.update(float(e))
        if levels is not None:
            break
    assert levels is not None
    before, after = levels
    assert after > 1.5 * before


def test_state_dict_round_trip_continues_identically() -> None:
    a = AdaptiveLearningRate(base_lr=1e-3, half_life=5.0)
    _feed(a, _errors(0, 400, 0.01))
    b = a.clone()
    b.load_state_dict(a.state_dict())
    tail = np.concatenate([_errors(1, 200, 0.01), _errors(2, 300, 0.05)])
    assert _feed(a, tail) == _feed(b, tail)
    assert (a.alarms, a.lr) == (b.alarms, b.lr)


def test_a_monitor_copy_is_independent() -> None:
    monitor = DriftMonitor()
    for e in _errors(0, 300, 0.01):
        monitor.update(float(e))
    copy = monitor.copy()
    alarms = [copy.update(float(e)) for e in _errors(1, 300, 0.05)]
    assert any(a is not None for a in alarms)
    assert monitor.state_dict()["errors"].tolist() != copy.state_dict()["errors"].tolist()
