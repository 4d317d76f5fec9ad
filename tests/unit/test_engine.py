"""The pure Engine: prequential semantics, clustering of a stream, persistence floor, state."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.errors import CheckpointError
from streamval.stream.contract.outputs import Valuation
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

DAY = 86_400_000
SMALL = {"hidden": [16, 8], "batch_size": 16}


def three_groups(
    n_per_group: int = 10,
    steps: int = 120,
    seed: int = 0,
    attributes: bool = True,
    shift_group: int | None = None,
    shift_at: int = 0,
    shift: float = 0.0,
) -> tuple[list[AssetEvent], dict[str, int]]:
    """Three groups of assets with different dynamics (`THREE_GROUPS`), levels from 5 to 3,000;
    a noisy numeric tier; `shift` is added to the log return of `shift_group` from `shift_at`."""
    panel = grouped_panel(
        THREE_GROUPS,
        n_per_group,
        steps,
        seed=seed,
        attributes=attributes,
        attribute_noise=0.1,
        shift_group=shift_group,
        shift_at=shift_at,
        shift=shift,
    )
    return panel.events, panel.truth


def run(engine: Engine, events: list[AssetEvent], chunk: int = 60) -> list[Valuation]:
    out: list[Valuation] = []
    for i in range(0, len(events), chunk):
        out.extend(engine.process(events[i : i + chunk]).valuations)
    return out


def ari(engine: Engine, truth: dict[str, int]) -> float:
    got = engine.assignments()
    ids = sorted(truth)
    return float(adjusted_rand_score([truth[i] for i in ids], [got[i] for i in ids]))


# -- clustering of a stream -------------------------------------------------------------------


def test_three_groups_are_recovered_and_ids_survive_a_refit() -> None:
    events, truth = three_groups(steps=60)
    engine = Engine(EngineSettings(**SMALL))
    run(engine, events)
    assert engine.fitted and engine.clusters == [0, 1, 2]
    score = ari(engine, truth)
    print(f"ARI (attributes + dynamics) = {score:.3f}")
    assert score >= 0.95
    before = engine.assignments()
    more, _ = three_groups(steps=90, seed=0)
    run(engine, more[len(events) :])
    engine.refit()
    assert engine.assignments() == before
    assert engine.clusters == [0, 1, 2]


def test_three_groups_by_dynamics_alone() -> None:
    events, truth = three_groups(steps=120, attributes=False)
    engine = Engine(EngineSettings(**SMALL))
    run(engine, events)
    score = ari(engine, truth)
    print(f"ARI (dynamics only) = {score:.3f}")
    assert score >= 0.8


@pytest.mark.parametrize("extra", [{"n_clusters": "auto"}, {"clustering": "kmeans"}])
def test_auto_k_and_kmeans_find_the_groups(extra: dict[str, object]) -> None:
    events, truth = three_groups(steps=40)
    engine = Engine(EngineSettings(**SMALL, **extra, min_history=30, max_updates_per_batch=0))
    run(engine, events)
    assert len(engine.clusters) == 3
    assert ari(engine, truth) >= 0.95


def test_single_global_model_never_fits() -> None:
    events, _ = three_groups(steps=30)
    engine = Engine(EngineSettings(**SMALL, n_clusters=1))
    values = run(engine, events)
    assert not engine.fitted and engine.clusters == [0]
    assert {v.cluster for v in values} == {0}
    assert engine.snapshot()[0].assets == 30


def test_before_the_bootstrap_everything_is_provisional_cluster_zero() -> None:
    events, _ = three_groups(steps=10)  # fewer than min_history=12 values per asset
    engine = Engine(EngineSettings(**SMALL))
    values = run(engine, events)
    assert not engine.fitted
    assert {v.cluster for v in values} == {0}
    assert all(v.warming for v in values)  # the window (seq_len=12) is not full yet


def test_new_clusters_start_as_copies_of_the_shared_model() -> None:
    events, _ = three_groups(steps=40)
    engine = Engine(EngineSettings(**SMALL, bootstrap_assets=30, min_history=30))
    run(engine, events[: 30 * 29])
    assert not engine.fitted
    updates = engine.snapshot()[0].model_version
    assert updates > 0
    run(engine, events[30 * 29 : 30 * 30])  # the bootstrap fit runs at the end of this call
    assert engine.fitted and engine.clusters == [0, 1, 2]
    state = engine.state_dict()["clusters"]
    for cid in (1, 2):
        assert state[cid]["learner"]["updates"] == state[0]["learner"]["updates"] >= updates
        assert state[cid]["learner"]["own_updates"] == 0
        for name, tensor in state[0]["learner"]["net"].items():
            assert torch.equal(state[cid]["learner"]["net"][name], tensor)


# -- accuracy floor ---------------------------------------------------------------------------


def test_random_walk_is_within_five_percent_of_persistence() -> None:
    rng = np.random.default_rng(3)
    n, steps = 30, 250
    vol = rng.uniform(0.005, 0.03, n)
    logv = np.log(rng.uniform(5, 3000, n))
    events = []
    for t in range(steps):
        logv = logv + rng.normal(0, vol)
        for k in rng.permutation(n):
            events.append(
                AssetEvent(
                    f"a{k}",
                    (t + 1) * DAY,
                    float(np.exp(logv[k])),
                    {"volume": float(rng.normal(1, 0.3))},
                    {"tier": float(k % 3)},
                )
            )
    engine = Engine(EngineSettings(**SMALL))
    last: dict[str, float] = {}
    model_rel, persist_rel, model_abs, persist_abs = [], [], [], []
    for v in run(engine, events):
        assert v.value is not None
        if not v.warming:
            prev = last[v.asset_id]
            model_rel.append(abs(v.value - v.valuation) / prev)
            persist_rel.append(abs(v.value - prev) / prev)
            model_abs.append(abs(v.value - v.valuation))
            persist_abs.append(abs(v.value - prev))
        last[v.asset_id] = v.value
    rel = float(np.mean(model_rel) / np.mean(persist_rel))
    raw = float(np.mean(model_abs) / np.mean(persist_abs))
    print(f"random walk MAE / persistence MAE: scale-free {rel:.4f}, raw {raw:.4f}")
    assert (
        sum(engine.snapshot()[i].updates for i in range(len(engine.clusters))) > 100
    )  # it did learn
    assert rel <= 1.05
    assert raw <= 1.05


# -- drift adaptation -------------------------------------------------------------------------

SHIFT_AT = 80
SHIFT_STEPS = 180


def _shift_run(
    boost: float,
) -> tuple[Engine, np.ndarray, list[tuple[int, int, float]], dict[int, list[float]], int]:
    """Group 0's return drops by 2 % per step from SHIFT_AT on; returns per-step group-0 error."""
    events, truth = three_groups(
        steps=SHIFT_STEPS, seed=1, shift_group=0, shift_at=SHIFT_AT, shift=-0.02
    )
    engine = Engine(EngineSettings(**SMALL, lr_boost=boost, lr_half_life=10))
    err = np.zeros(SHIFT_STEPS)
    count = np.zeros(SHIFT_STEPS)
    alarms: list[tuple[int, int, float]] = []
    lr_trace: dict[int, list[float]] = {}
    last: dict[str, float] = {}
    shifted_events_before_alarm = 0
    for i in range(0, len(events), 30):  # one step of all 30 assets per call
        result = engine.process(events[i : i + 30])
        alarms.extend((a.cluster, a.ts_ms // DAY - 1, a.lr) for a in result.drift)
        for v in result.valuations:
            t = v.ts_ms // DAY - 1
            assert v.value is not None
            if truth[v.asset_id] == 0 and v.asset_id in last:
                err[t] += abs(v.value - v.valuation) / last[v.asset_id]
                count[t] += 1
                if t >= SHIFT_AT and not alarms:
                    shifted_events_before_alarm += 1
            last[v.asset_id] = v.value
        for cid in engine.clusters:
            lr_trace.setdefault(cid, []).append(engine.lr(cid))
    return engine, err / np.maximum(count, 1), alarms, lr_trace, shifted_events_before_alarm


def test_level_shift_fires_boosts_one_cluster_and_recovers_faster_than_without_boost() -> None:
    engine, err, alarms, lrs, delay = _shift_run(boost=5.0)
    shifted = engine.cluster_of("g0-0")
    assert shifted is not None
    # Fires on the shifted cluster only, after the shift, within a bounded number of its events.
    assert alarms and all(c == shifted and t >= SHIFT_AT for c, t, _ in alarms)
    print(f"detector delay: {delay} events of the shifted group ({alarms[0][1] - SHIFT_AT} steps)")
    assert delay <= 100
    # Its lr rises to base * boost and decays back; the other clusters' lr never moves.
    base = engine.settings.lr
    assert alarms[0][2] == pytest.approx(5 * base)
    assert max(lrs[shifted]) > 3 * base
    assert lrs[shifted][-1] == base
    assert engine.snapshot()[engine.clusters.index(shifted)].drift_alarms == len(alarms)
    for cid, trace in lrs.items():
        if cid != shifted:
            assert set(trace) == {base}
    # Recovery: mean excess error over the 60 steps after the shift, and steps to recover.
    _, err_off, alarms_off, lrs_off, _ = _shift_run(boost=1.0)
    assert alarms_off  # the same alarm fires without the boost...
    assert set(lrs_off[shifted]) == {base}  # ...but the lr stays at base
    pre = err[SHIFT_AT - 30 : SHIFT_AT].mean()
    pre_off = err_off[SHIFT_AT - 30 : SHIFT_AT].mean()
    excess = err[SHIFT_AT : SHIFT_AT + 60].mean() - pre
    excess_off = err_off[SHIFT_AT : SHIFT_AT + 60].mean() - pre_off

    def recovered_at(e: np.ndarray, level: float) -> int:
        rolling = np.convolve(e, np.ones(10) / 10, mode="valid")  # rolling[k] = mean of e[k:k+10]
        return next(
            (k + 9 - SHIFT_AT for k in range(SHIFT_AT, len(rolling)) if rolling[k] <= 1.5 * level),
            10**6,
        )

    print(
        f"pre-shift error {pre:.4f}/{pre_off:.4f}; excess error over 60 steps: boost {excess:.4f}, "
        f"no boost {excess_off:.4f}; steps to recover: boost {recovered_at(err, pre)}, "
        f"no boost {recovered_at(err_off, pre_off)}"
    )
    assert excess <= 0.8 * excess_off
    assert recovered_at(err, pre) < recovered_at(err_off, pre_off)


# -- prequential semantics --------------------------------------------------------------------


def test_the_model_sees_the_lagged_value_never_the_current_one() -> None:
    engine = Engine(EngineSettings(**SMALL, n_clusters=1, seq_len=3, max_updates_per_batch=0))
    result = engine.process(
        [AssetEvent("a", t, float(v)) for t, v in enumerate([10, 20, 30, 40, 50])]
    )
    # Untrained model = persistence: each valuation is the previous value, never the event's own.
    assert [v.valuation for v in result.valuations] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert [v.warming for v in result.valuations] == [True, True, True, False, False]
    assert [v.error for v in result.valuations] == [10.0, 10.0, 10.0, 10.0, 10.0]


def test_batch_equals_one_by_one_except_learning() -> None:
    events, _ = three_groups(steps=40)
    warm, rest = events[: 30 * 25], events[30 * 25 :]
    a = Engine(EngineSettings(**SMALL))
    run(a, warm)
    b = Engine(EngineSettings(**SMALL))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    batch = a.process(rest)
    single = [b.process([e], learn=False) for e in rest]
    b.learn()
    one_by_one = [v for r in single for v in r.valuations]
    assert len(one_by_one) == len(batch.valuations) == len(rest)
    for x, y in zip(batch.valuations, one_by_one, strict=True):
        assert (x.asset_id, x.cluster, x.warming, x.adapting, x.lr, x.model_version) == (
            y.asset_id,
            y.cluster,
            y.warming,
            y.adapting,
            y.lr,
            y.model_version,
        )
        assert x.valuation == pytest.approx(y.valuation, rel=1e-9)
    # After the learning step both engines are in the same state: identical next valuations.
    more, _ = three_groups(steps=45)
    after_a = a.process(more[len(events) :]).valuations
    after_b = b.process(more[len(events) :]).valuations
    assert [v.valuation for v in after_a] == pytest.approx([v.valuation for v in after_b], rel=1e-9)


def test_learning_is_bounded_per_call_and_never_per_event() -> None:
    events, _ = three_groups(steps=40)
    engine = Engine(EngineSettings(**SMALL, max_updates_per_batch=2))
    total = 0
    for i in range(0, len(events), 300):
        result = engine.process(events[i : i + 300])
        assert all(0 < n <= 2 for n in result.updates.values())
        total += sum(result.updates.values())
    labelled = sum(1 for e in events)
    assert 0 < total < labelled / 8


def test_duplicates_are_dropped_and_never_learned_twice() -> None:
    events, _ = three_groups(steps=30)
    engine = Engine(EngineSettings(**SMALL))
    run(engine, events)
    state = engine.state_dict()
    seen = {
        cid: c["learner"]["seen"] + len(c["learner"]["pending_y"])
        for cid, c in state["clusters"].items()
    }
    n_before = {s.cluster: s.total.n for s in engine.snapshot()}
    last_step = events[-30:]
    result = engine.process(last_step + last_step[:5])
    assert result.duplicates == list(range(35))
    assert result.valuations == [] and result.late == []
    state = engine.state_dict()
    assert {
        cid: c["learner"]["seen"] + len(c["learner"]["pending_y"])
        for cid, c in state["clusters"].items()
    } == seen
    assert {s.cluster: s.total.n for s in engine.snapshot()} == n_before
    # Within one batch, too: the second copy is a duplicate.
    fresh = AssetEvent("g0-0", 10**12, 1.0)
    result = engine.process([fresh, fresh])
    assert len(result.valuations) == 1 and result.duplicates == [1]


def test_late_events_are_reported_or_accepted() -> None:
    events = [
        AssetEvent("a", 5, 1.0),
        AssetEvent("a", 3, 2.0),
        AssetEvent("b", 1, 3.0),
        AssetEvent("a", 6, 4.0),
    ]
    strict = Engine(EngineSettings(**SMALL)).process(events)
    assert strict.late == [1]
    assert [v.ts_ms for v in strict.valuations] == [5, 1, 6]
    lenient = Engine(EngineSettings(**SMALL), accept_late=True).process(events)
    assert lenient.late == [] and [v.ts_ms for v in lenient.valuations] == [5, 3, 1, 6]


def test_no_nan_or_inf_is_ever_emitted() -> None:
    rng = np.random.default_rng(7)
    events = []
    for t in range(40):
        events.append(AssetEvent("zero", t, 0.0))
        events.append(AssetEvent("neg", t, float(-100 + rng.normal())))
        events.append(AssetEvent("huge", t, float(1e300 * rng.uniform(0.5, 1.5))))
        events.append(AssetEvent("tiny", t, float(1e-300 * rng.uniform(0.5, 1.5))))
        events.append(AssetEvent("jumpy", t, float(rng.choice([1e-6, 1e6]))))
        events.append(AssetEvent("features-only", t, None, {"x": float(rng.normal(0, 1e6))}))
        events.append(
            AssetEvent(
                "sparse", t, float(t) if t % 3 == 0 else None, {"x": 1e200}, {"k": "v", "n": 1e308}
            )
        )
        events.append(AssetEvent(f"new-{t}", t, None))
    engine = Engine(
        EngineSettings(**{**SMALL, "bootstrap_assets": 3, "batch_size": 4, "seq_len": 3})
    )
    values = run(engine, events, chunk=16)
    assert len(values) == len(events)
    for v in values:
        assert math.isfinite(v.valuation) and math.isfinite(v.lr)
        assert v.error is None or not math.isnan(v.error)
    for snap in engine.snapshot():
        assert snap.total.mae is None or not math.isnan(snap.total.mae)


def test_an_asset_without_any_value_gets_the_cluster_median() -> None:
    engine = Engine(EngineSettings(**SMALL, n_clusters=1))
    result = engine.process(
        [AssetEvent(a, 1, v) for a, v in (("x", 10.0), ("y", 30.0), ("z", 20.0))]
        + [AssetEvent("new", 2)]
    )
    assert result.valuations[0].valuation == 0.0  # nothing known yet
    assert result.valuations[-1].valuation == 20.0 and result.valuations[-1].warming


# -- state and determinism --------------------------------------------------------------------


def test_state_dict_round_trip_through_torch_save_gives_identical_valuations() -> None:
    events, _ = three_groups(steps=50)
    cut = 30 * 35
    original = Engine(EngineSettings(**SMALL, refit_every=600))
    run(original, events[:cut])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = Engine(EngineSettings(**SMALL, refit_every=600))
    restored.load_state_dict(torch.load(buffer))
    assert restored.snapshot() == original.snapshot()
    a = run(original, events[cut:])
    b = run(restored, events[cut:])
    assert a == b
    assert restored.snapshot() == original.snapshot()
    assert restored.assignments() == original.assignments()


def test_state_of_other_settings_is_refused() -> None:
    engine = Engine(EngineSettings(**SMALL))
    engine.process([AssetEvent("a", 1, 1.0)])
    with pytest.raises(CheckpointError):
        Engine(EngineSettings(**SMALL, seq_len=5)).load_state_dict(engine.state_dict())


def test_same_seed_same_valuations_and_global_rng_untouched() -> None:
    events, _ = three_groups(steps=40)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = run(Engine(EngineSettings(**SMALL, seed=5)), events)
    assert torch.equal(torch.get_rng_state(), before)
    second = run(Engine(EngineSettings(**SMALL, seed=5)), events)
    other = run(Engine(EngineSettings(**SMALL, seed=6)), events)
    assert first == second
    assert [v.valuation for v in first] != [v.valuation for v in other]


@pytest.mark.parametrize(
    "extra",
    [
        {"cell": "gru"},
        {"cell": "linear"},
        {"lr_boost": 1.0},
        {"detector": "page_hinkley"},
        {"detector": "kswin"},
    ],
)
def test_configurations_used_by_the_baselines_run(extra: dict[str, object]) -> None:
    events, _ = three_groups(steps=30)
    engine = Engine(EngineSettings(**SMALL, **extra))
    values = run(engine, events, chunk=120)
    assert all(math.isfinite(v.valuation) for v in values)
    assert sum(s.updates for s in engine.snapshot()) > 0


def test_snapshot_carries_what_monitoring_needs() -> None:
    events, _ = three_groups(steps=30)
    engine = Engine(EngineSettings(**SMALL, metrics_window=50))
    run(engine, events)
    snaps = engine.snapshot(ts_ms=42)
    assert [s.cluster for s in snaps] == engine.clusters
    assert sum(s.assets for s in snaps) == 30
    for s in snaps:
        assert s.ts_ms == 42 and s.lr == engine.settings.lr
        assert s.rolling.n == 50 and s.total.n > 50
        assert s.model_version >= s.updates
        assert s.to_json()["kind"] == "snapshot"
