"""Drift detectors with state as numbers: our ADWIN against river's, every detector's state."""

from __future__ import annotations

import numpy as np
import pytest
from river import drift

from streamval.models.detectors import ADWIN, DetectorName, make_detector


def _errors(seed: int, n: int, level: float) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(0.0, level, n))


def test_own_adwin_fires_exactly_where_rivers_does() -> None:
    """River's ADWIN is compiled and cannot export its state; ours can, and must agree."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        x = np.abs(rng.normal(0.0, 1.0, 2500))
        x[800:] *= rng.uniform(1.0, 3.0)
        x[1700:] += rng.uniform(-0.5, 1.0)
        delta = (0.002, 0.01, 0.1)[seed % 3]
        ours, theirs = ADWIN(delta=delta), drift.ADWIN(delta=delta)
        fired_ours, fired_theirs = [], []
        for i, v in enumerate(x.tolist()):
            ours.update(v)
            theirs.update(v)
            fired_ours += [i] if ours.drift_detected else []
            fired_theirs += [i] if theirs.drift_detected else []
            assert ours.width == theirs.width
        assert fired_ours == fired_theirs, seed


@pytest.mark.parametrize("name", ["adwin", "page_hinkley", "kswin"])
def test_detector_state_is_numbers_and_continues_identically(name: DetectorName) -> None:
    a = make_detector(name, seed=3)
    calm, shifted = _errors(0, 400, 1.0), _errors(1, 400, 3.0)
    for v in calm:
        a.update(float(v))
    state = a.state_dict()
    leaves = [v for v in state.values() if not isinstance(v, np.ndarray)]
    assert all(v is None or type(v) in (bool, int, float) for v in leaves), state
    b = make_detector(name, seed=3)
    b.load_state_dict(state)
    fired = []
    for v in shifted:
        a.update(float(v))
        b.update(float(v))
        assert a.drift_detected == b.drift_detected
        fired.append(a.drift_detected)
    assert any(fired)


def test_a_copy_is_independent() -> None:
    a = ADWIN()
    for v in _errors(0, 500, 1.0):
        a.update(float(v))
    b = a.copy()
    for v in _errors(1, 300, 4.0):
        b.update(float(v))
    assert a.width == 500 and b.width != 800


def test_unknown_detector_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        make_detector("cusum")  # type: ignore[arg-type]
