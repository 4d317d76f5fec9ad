"""Warm start from a history: clusters fitted, models trained and windows full before the first
live event, even with fewer assets than the streaming bootstrap waits for."""

from __future__ import annotations

import pytest
from tests.unit.test_engine import SMALL, ari, three_groups

from streamval.config import EngineSettings
from streamval.consumers.warmup import warm_up
from streamval.engine import Engine


def test_history_bootstraps_the_clustering_and_fills_the_windows() -> None:
    events, truth = three_groups(n_per_group=5, steps=50)
    split = 15 * 40  # 40 days of history, then 10 live days
    history, live = events[:split], events[split:]
    settings = EngineSettings(**SMALL)  # bootstrap_assets=30: 15 assets never bootstrap live

    cold = Engine(settings)
    cold.process(history)
    assert not cold.fitted

    engine = Engine(settings)
    progress: list[int] = []
    report = warm_up(engine, history, batch_size=100, on_progress=progress.append)
    assert report.events == split and report.refused == 0 and report.assets == 15
    assert progress == list(range(100, split + 1, 100))
    assert engine.fitted and report.clusters == engine.clusters == [0, 1, 2]
    assert ari(engine, truth) >= 0.95
    valuations = engine.process(live[:15]).valuations
    assert not any(v.warming for v in valuations)
    assert {engine.cluster_of(a) for a in truth} == {0, 1, 2}


def test_the_history_counts_its_own_refused_rows() -> None:
    events, _ = three_groups(n_per_group=2, steps=5)
    report = warm_up(Engine(EngineSettings(**SMALL)), [*events, events[-1], events[0]])
    assert report.events == len(events) + 2
    assert report.refused == 2  # a duplicate, and a row older than its asset's last


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        warm_up(Engine(EngineSettings(**SMALL)), [], batch_size=0)
