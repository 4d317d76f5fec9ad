"""A cluster's owner watches it on the scored events its valuers send: with one valuer it raises
the engine's own alarms; with several it judges each event-time step over all their events."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.unit.test_shocks import DAY, TINY, panel

from streamval.config import EngineSettings
from streamval.consumers.learning import (
    ModelRecord,
    decode_model,
    encode_model,
    slim_learner_state,
)
from streamval.consumers.watch import ClusterWatch
from streamval.engine import Engine, cluster_policy
from streamval.models.learner import SequenceLearner
from streamval.models.shocks import CrossSectionalDetector
from streamval.models.trainer import RemoteTrainer, Scored, Trainer
from streamval.stream.contract.outputs import DriftAlarm


def alarm_keys(alarms: list[DriftAlarm]) -> list[tuple[Any, ...]]:
    return [(a.ts_ms, a.detected_ts_ms, a.detector, a.assets, a.affected) for a in alarms]


@pytest.mark.parametrize(
    ("steps", "shock_at", "jump", "calibration"),
    [(140, 110, -6.0, 50), (40, 30, -12.0, 250)],  # cross-sectional; per-event ADWIN
)
def test_with_one_valuer_the_owner_raises_the_engines_alarms(
    steps: int, shock_at: int, jump: float, calibration: int
) -> None:
    settings = EngineSettings(**TINY, shock_calibration=calibration)
    sent: list[Scored] = []

    def sink(cluster: int, *, clusters: list[int], x: Any, y: Any, ts: Any, scored: Scored) -> None:
        sent.append(scored)

    def remote(s: EngineSettings) -> Trainer:
        return RemoteTrainer(sink=sink, batch_size=s.batch_size, max_backlog=s.max_backlog)

    engine = Engine(settings, trainer=remote)
    events = panel(steps=steps, n=30, shock_at=shock_at, jump=jump)
    expected: list[DriftAlarm] = []
    for i in range(0, len(events), 30):
        expected.extend(engine.process(events[i : i + 30]).drift)
    engine.close()
    watch = ClusterWatch(settings, 0)
    monitor = cluster_policy(settings, 0).monitor
    got: list[DriftAlarm] = []
    for scored in sent:
        got.extend(watch.observe("valuer-0", 30, scored, monitor))
    assert expected and any(shock_at * DAY <= a.ts_ms <= (shock_at + 3) * DAY for a in expected)
    assert alarm_keys(got) == alarm_keys(expected)
    assert watch.late == 0


def steps_of(assets: range, steps: range, rng: np.random.Generator, shock: int) -> Scored:
    """Scored events of `assets` at each step (event time = step), a common jump at `shock`."""
    ts = np.repeat(np.asarray(steps, dtype=np.int64), len(assets))
    z = rng.normal(size=len(ts)) * 0.8 + np.where(ts == shock, 3.0, 0.0)
    values = rng.normal(size=len(ts)) + 100
    return Scored(ts, values, values - z, z)


def test_several_valuers_steps_are_judged_over_all_their_events() -> None:
    settings = EngineSettings(**TINY, shock_calibration=30, shock_refractory=5, shock_rate=0.01)
    rng = np.random.default_rng(0)
    a_assets, b_assets = range(0, 20), range(20, 40)
    reference = CrossSectionalDetector.from_settings(settings)
    watch = ClusterWatch(settings, 0)
    monitor = cluster_policy(settings, 0).monitor
    expected, got = [], []
    for start in range(0, 60, 5):  # valuer a sends 5 steps, then valuer b the same 5
        chunk = range(start, start + 5)
        a = steps_of(a_assets, chunk, rng, shock=45)
        b = steps_of_b = steps_of(b_assets, chunk, rng, shock=45)
        if start == 0:  # b is heard from first (a valuer not heard from holds nothing back)
            got.extend(watch.observe("b", 20, b[:20], monitor))
            b = b[20:]
        got.extend(watch.observe("a", 20, a, monitor))
        got.extend(watch.observe("b", 20, b, monitor))
        for t in chunk:  # the whole cross-section, step by step
            for part in (a, b if start else steps_of_b):
                for ts, z in zip(part.ts[part.ts == t], part.z[part.ts == t], strict=True):
                    shock = reference.observe(int(ts), float(z))
                    if shock is not None:
                        expected.append((shock.ts_ms, shock.assets))
    shocks = [(a.ts_ms, a.assets) for a in got if a.detector == "cross_sectional"]
    # Each step judged whole (40 assets), not in a's and b's halves; the last step stays open.
    assert shocks == expected and (45, 40) in shocks
    assert watch.assets() == 40 and watch.late == 0


def test_a_silent_valuer_stops_holding_steps_back_and_late_events_are_counted() -> None:
    settings = EngineSettings(**TINY, shock_calibration=10)
    rng = np.random.default_rng(1)
    watch = ClusterWatch(settings, 0, silence_s=30.0)
    monitor = cluster_policy(settings, 0).monitor
    watch.observe("b", 10, steps_of(range(10), range(0, 1), rng, -1), monitor, now=0.0)
    watch.observe("a", 10, steps_of(range(10), range(0, 3), rng, -1), monitor, now=0.0)
    assert watch._judged is None  # b has sent step 0 only: step 0 may still grow
    watch.observe("a", 10, steps_of(range(10), range(3, 6), rng, -1), monitor, now=10.0)
    assert watch._judged is None and watch.assets(now=10.0) == 20
    # b silent for longer than silence_s: a's steps go on without it.
    watch.observe("a", 10, steps_of(range(10), range(6, 8), rng, -1), monitor, now=41.0)
    assert watch._judged == 6 and watch.assets(now=41.0) == 10
    # b comes back with steps already judged: they count in the metrics, not in the detection.
    n = watch.errors.n
    watch.observe("b", 10, steps_of(range(10), range(1, 3), rng, -1), monitor, now=42.0)
    assert watch.late == 20 and watch.errors.n == n + 20


def test_the_watch_goes_on_from_its_state_in_a_model_record() -> None:
    """A learner taking a cluster over continues its metrics and its calibrated detector."""
    settings = EngineSettings(**TINY, shock_calibration=20, shock_rate=0.05)
    learner = SequenceLearner.from_settings(settings, seed=1)
    rng = np.random.default_rng(2)
    first = ClusterWatch(settings, 3)
    policy = cluster_policy(settings, 3)
    for start in range(0, 40, 5):
        first.observe(
            "a", 30, steps_of(range(30), range(start, start + 5), rng, 45), policy.monitor
        )
    assert first.shock is not None and first.shock.calibrated
    record = ModelRecord(
        cluster=3,
        version=learner.updates,
        clustering_version=1,
        learner=slim_learner_state(learner.state_dict()),
        policy=policy.state_dict(),
        watch=first.state_dict(),
        watched=(2, 17),
    )
    back = decode_model(encode_model(record, "group", "models"))
    assert back.watched == (2, 17) and back.watch is not None
    second = ClusterWatch(settings, 3)
    second.load_state_dict(back.watch)
    monitor = cluster_policy(settings, 3).monitor
    monitor.load_state_dict(back.policy["monitor"])
    rest = [steps_of(range(30), range(s, s + 5), rng, 45) for s in range(40, 60, 5)]
    got_first = [a for part in rest for a in first.observe("a", 30, part, policy.monitor)]
    got_second = [a for part in rest for a in second.observe("a", 30, part, monitor)]
    assert alarm_keys(got_second) == alarm_keys(got_first)
    assert any(a.ts_ms == 45 for a in got_second)
    assert second.errors.stats(rolling=False) == first.errors.stats(rolling=False)
    # A state of another detector setting is refused, not half applied.
    other = ClusterWatch(EngineSettings(**TINY, detector="adwin"), 3)
    with pytest.raises(ValueError, match="detector"):
        other.load_state_dict(back.watch)


def test_a_split_off_cluster_starts_with_its_parents_detector_calibration() -> None:
    settings = EngineSettings(**TINY, shock_calibration=10)
    rng = np.random.default_rng(3)
    parent = ClusterWatch(settings, 1)
    parent.observe(
        "a", 20, steps_of(range(20), range(0, 15), rng, -1), cluster_policy(settings, 1).monitor
    )
    assert parent.shock is not None and parent.shock.calibrated
    for source in (parent, parent.state_dict()):  # owned here, or from the models topic
        child = ClusterWatch(settings, 4)
        child.fork_detector(source)
        assert child.shock is not None and child.shock.calibrated
        assert child.shock.thresholds == parent.shock.thresholds
        assert child.errors.n == 0 and child.shock.alarms == 0
    unusable = ClusterWatch(settings, 5)
    unusable.fork_detector({"shock": None})
    assert unusable.shock is not None and not unusable.shock.calibrated
