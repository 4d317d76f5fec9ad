"""The pure Engine: prequential semantics, clustering of a stream, persistence floor, state."""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.errors import CheckpointError
from streamval.models.assets import Rows
from streamval.stream.contract.outputs import Valuation
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

DAY = 86_400_000
SMALL = {"hidden": [16, 8], "batch_size": 16, "training": "sync"}


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


def round_trip(tree: Any) -> Any:
    """The state tree through JSON and `.npz` (loaded with allow_pickle=False), as a data-only
    checkpoint codec stores it; fails on any leaf that is not data."""
    arrays: dict[str, np.ndarray] = {}

    def encode(node: Any) -> Any:
        if isinstance(node, dict):
            assert all(isinstance(k, str) for k in node), list(node)
            return {"d": {k: encode(v) for k, v in node.items()}}
        if isinstance(node, list):
            return {"l": [encode(v) for v in node]}
        if isinstance(node, torch.Tensor):
            node = node.numpy()
        if isinstance(node, np.ndarray):
            assert node.dtype != object
            key = f"a{len(arrays)}"
            arrays[key] = node
            return {"a": key}
        assert node is None or type(node) in (bool, int, float, str), type(node)
        return {"v": node}

    text = json.dumps(encode(tree))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    stored = np.load(buffer, allow_pickle=False)

    def decode(node: dict[str, Any]) -> Any:
        if "d" in node:
            return {k: decode(v) for k, v in node["d"].items()}
        if "l" in node:
            return [decode(v) for v in node["l"]]
        if "a" in node:
            return stored[node["a"]]
        return node["v"]

    return decode(json.loads(text))


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
    engine = Engine(EngineSettings(**SMALL, **extra, min_history=30))
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
    run(engine, events[30 * 29 : 30 * 30])  # makes the bootstrap fit due...
    assert not engine.fitted
    engine.flush()  # ...which runs before the next later event, or now
    assert engine.fitted and engine.clusters == [0, 1, 2]
    state = engine.state_dict()["trainer"]
    for cid in ("1", "2"):
        assert state[cid]["learner"]["updates"] == state["0"]["learner"]["updates"] >= updates
        assert state[cid]["learner"]["own_updates"] == 0
        for name, tensor in state["0"]["learner"]["net"].items():
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
    # 8 fresh samples per step: the boost decays per step, about as often as the test's
    # 10 assets per group give 8 samples.
    # The per-event detector with the plain boost (the engine before issue 12's shock detector).
    legacy = {"detector": "adwin", "drift_response": "boost", "persistence_expert": False}
    engine = Engine(
        EngineSettings(**{**SMALL, "batch_size": 8}, **legacy, lr_boost=boost, lr_half_life=10)
    )
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


def _trend_run(response: str) -> tuple[np.ndarray, int, list[int]]:
    """Group 0 (6 of 18 assets) turns to a -2 % step from step 120 on, under the default shock
    detector (calibrated on 80 steps): its mean relative error per step, the valuations of it
    served with a fast learner after the shift, the steps of the alarms."""
    steps, at = 160, 120
    events, truth = three_groups(
        n_per_group=6, steps=steps, seed=2, shift_group=0, shift_at=at, shift=-0.02
    )
    engine = Engine(
        EngineSettings(**{**SMALL, "batch_size": 8}, drift_response=response, shock_calibration=80)
    )
    err, count = np.zeros(steps), np.zeros(steps)
    adapting, alarms, last = 0, [], {}
    for i in range(0, len(events), 18):  # one step per call
        result = engine.process(events[i : i + 18])
        alarms.extend(a.ts_ms // DAY - 1 for a in result.drift)
        for v in result.valuations:
            t = v.ts_ms // DAY - 1
            assert v.value is not None
            if truth[v.asset_id] == 0 and v.asset_id in last and not v.warming:
                err[t] += abs(v.value - v.valuation) / last[v.asset_id]
                count[t] += 1
                adapting += int(v.adapting and t >= at)
            last[v.asset_id] = v.value
    return err / np.maximum(count, 1), adapting, alarms


def test_a_fast_learner_recovers_from_a_common_trend_faster_than_the_stable_model_alone() -> None:
    at = 120
    err, adapting, alarms = _trend_run("fast_learner")
    err_off, adapting_off, alarms_off = _trend_run("none")
    assert at in alarms and at in alarms_off  # the cross-sectional detector sees the shift
    assert adapting > 0 and adapting_off == 0  # the fast learner won its shadow test
    excess = err[at : at + 30].mean() - err[at - 30 : at].mean()
    excess_off = err_off[at : at + 30].mean() - err_off[at - 30 : at].mean()
    print(f"excess error over 30 steps: fast learner {excess:.4f}, none {excess_off:.4f}")
    assert excess <= 0.75 * excess_off
    # Never worse over the whole stream (the condition on a drift response).
    assert err[err > 0].mean() <= err_off[err_off > 0].mean()


# -- prequential semantics --------------------------------------------------------------------


def test_the_model_sees_the_lagged_value_never_the_current_one() -> None:
    engine = Engine(EngineSettings(**SMALL, n_clusters=1, seq_len=3))
    result = engine.process(
        [AssetEvent("a", t, float(v)) for t, v in enumerate([10, 20, 30, 40, 50])]
    )
    # Untrained model = persistence: each valuation is the previous value, never the event's own.
    assert [v.valuation for v in result.valuations] == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert [v.warming for v in result.valuations] == [True, True, True, False, False]
    assert [v.error for v in result.valuations] == [10.0, 10.0, 10.0, 10.0, 10.0]


def _cut(events: list[AssetEvent], sizes: list[int]) -> list[list[AssetEvent]]:
    out, i = [], 0
    for size in sizes:
        out.append(events[i : i + size])
        i += size
    return [b for b in out if b]


def test_any_cut_into_batches_gives_the_same_valuations_learning_included() -> None:
    """Learning is tied to event time: the same stream cut differently, one event at a time,
    or in batches where one asset appears several times (waves), gives identical output."""
    events, _ = three_groups(steps=45, seed=2)
    rng = np.random.default_rng(0)
    cuts = {
        "whole": [len(events)],
        "one by one": [1] * len(events),
        "random": rng.integers(1, 200, size=len(events)).tolist(),
        "two steps per batch": [60] * len(events),
    }
    outputs = {}
    for name, sizes in cuts.items():
        engine = Engine(EngineSettings(**SMALL, refit_every=400))
        valuations, alarms = [], []
        for batch in _cut(events, sizes):
            result = engine.process(batch)
            assert not result.failed
            valuations.extend(result.valuations)
            alarms.extend(result.drift)
        outputs[name] = (valuations, alarms, engine.snapshot(), engine.assignments())
    reference = outputs.pop("whole")
    assert reference[2][0].updates > 10 and len(reference[2]) == 3  # it learned and fitted
    for name, (valuations, alarms, snapshots, assignments) in outputs.items():
        # The forward pass over 1 or 500 windows may round differently in the last bit
        # (BLAS); everything else, the model versions included, is identical.
        # So do the intervals (valuation +- a quantile of scores made of errors).
        assert [replace(v, valuation=0.0, lower=None, upper=None) for v in valuations] == [
            replace(v, valuation=0.0, lower=None, upper=None) for v in reference[0]
        ], name
        for field_name in ("valuation", "lower", "upper"):
            got = [getattr(v, field_name) for v in valuations]
            expected = [getattr(v, field_name) for v in reference[0]]
            assert [x is None for x in got] == [x is None for x in expected], name
            assert [x for x in got if x is not None] == pytest.approx(
                [x for x in expected if x is not None], rel=1e-9
            ), (name, field_name)
        assert (alarms, assignments) == (reference[1], reference[3]), name
        for snap, ref in zip(snapshots, reference[2], strict=True):
            assert replace(snap, rolling=None, total=None, interval_width=None) == replace(
                ref, rolling=None, total=None, interval_width=None
            )
            assert snap.interval_width == pytest.approx(ref.interval_width, rel=1e-9)
            assert snap.total.n == ref.total.n
            assert snap.total.mae == pytest.approx(ref.total.mae, rel=1e-9)


def test_every_labelled_sample_is_trained_exactly_once() -> None:
    events, _ = three_groups(steps=40)
    engine = Engine(EngineSettings(**SMALL))
    samples = 0
    for batch in _cut(events, [300] * 4):
        samples += sum(1 for v in engine.process(batch).valuations if not v.warming)
    engine.flush()
    snaps = engine.snapshot()
    queued = sum(s.queued_samples for s in snaps)
    trained = sum(s.trained_samples for s in snaps)
    assert trained + queued == samples  # none lost, none twice
    assert all(s.skipped_samples == 0 for s in snaps)  # sync mode never subsamples
    assert all(s.queued_samples < engine.settings.batch_size for s in snaps)
    for snap in snaps:  # each step took exactly batch_size fresh samples
        assert snap.trained_samples == snap.updates * engine.settings.batch_size


def test_duplicates_are_dropped_and_never_learned_twice() -> None:
    events, _ = three_groups(steps=30)
    engine = Engine(EngineSettings(**SMALL))
    run(engine, events)
    seen = {s.cluster: s.trained_samples + s.queued_samples for s in engine.snapshot()}
    n_before = {s.cluster: s.total.n for s in engine.snapshot()}
    last_step = events[-30:]
    result = engine.process(last_step + last_step[:5])
    assert result.duplicates == list(range(35))
    assert result.valuations == [] and result.late == []
    assert {s.cluster: s.trained_samples + s.queued_samples for s in engine.snapshot()} == seen
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


def test_state_is_data_and_round_trips_through_json_and_npz_to_identical_valuations() -> None:
    events, _ = three_groups(steps=50)
    cut = 30 * 35
    original = Engine(EngineSettings(**SMALL, refit_every=600))
    run(original, events[:cut])
    restored = Engine(EngineSettings(**SMALL, refit_every=600))
    restored.load_state_dict(round_trip(original.state_dict()))
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
    # The model's change served always: 40 steps are too few for the gate to open, and a closed
    # gate serves persistence whatever the seed.
    settings = {**SMALL, "combiner_gate_tstat": 0.0}
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = run(Engine(EngineSettings(**settings, seed=5)), events)
    assert torch.equal(torch.get_rng_state(), before)
    second = run(Engine(EngineSettings(**settings, seed=5)), events)
    other = run(Engine(EngineSettings(**settings, seed=6)), events)
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
        {"detector": "adwin", "drift_response": "boost"},
        {"drift_response": "none", "persistence_expert": False},
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


# -- robustness -------------------------------------------------------------------------------


def test_extreme_values_never_overflow() -> None:
    """A value of 1e308 then -1e308 (then tiny and huge ones) for one asset: no exception,
    every valuation and error finite, the engine carries on with the other assets."""
    events = []
    for t, v in enumerate([1e308, -1e308, 1e308, 5e-324, -1e308, 1.0, 1e308] * 3):
        events.append(AssetEvent("wild", t + 1, v, {"x": 1e308 if t % 2 else -1e308}))
        events.append(AssetEvent("calm", t + 1, 100.0 + t))
    engine = Engine(EngineSettings(**{**SMALL, "seq_len": 3, "batch_size": 4}, n_clusters=1))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no silent overflow
        result = engine.process(events)
    assert not result.failed and len(result.valuations) == len(events)
    for v in result.valuations:
        assert math.isfinite(v.valuation)
        assert v.error is not None and math.isfinite(v.error)
        assert json.dumps(v.to_json(), allow_nan=False)
    snap = engine.snapshot()[0]
    assert snap.trained_samples > 0  # it learned from the wild asset's clipped samples too
    for stats in (snap.total, snap.rolling):
        assert all(math.isfinite(x) for x in (stats.mae, stats.rmse, stats.r2) if x is not None)


def test_an_event_that_fails_is_reported_and_the_others_are_processed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events, _ = three_groups(steps=20)
    batch = events[:90]
    reference = Engine(EngineSettings(**SMALL)).process([e for e in batch if e.asset_id != "g1-3"])
    engine = Engine(EngineSettings(**SMALL))
    shift = Rows.shift

    def faulty(self: Rows, rows: np.ndarray, *args: object) -> object:
        if any(self["last_value"][rows] == bad for bad in poisoned):
            raise RuntimeError("poisoned row")
        return shift(self, rows, *args)  # type: ignore[arg-type]

    # A bug that hits every event of one asset after its first value.
    first = next(e for e in batch if e.asset_id == "g1-3")
    poisoned = [first.value]
    monkeypatch.setattr(Rows, "shift", faulty)
    result = engine.process(batch)
    failing = [i for i, e in enumerate(batch) if e.asset_id == "g1-3"][1:]
    assert [i for i, _ in result.failed] == failing
    assert all("poisoned row" in detail for _, detail in result.failed)
    valued = [v for v in result.valuations if v.asset_id != "g1-3"]
    assert [(v.asset_id, v.ts_ms, v.warming) for v in valued] == [
        (v.asset_id, v.ts_ms, v.warming) for v in reference.valuations
    ]


def test_idle_assets_expire_and_their_slots_are_reused() -> None:
    engine = Engine(EngineSettings(**SMALL, n_clusters=1, seq_len=3, asset_ttl=10 * DAY))
    old = [AssetEvent(f"old-{i}", DAY * t, 10.0 + t) for t in range(1, 5) for i in range(50)]
    engine.process(old)
    assert engine.n_assets == 50 and engine.expired_assets == 0
    capacity = engine._assets.capacity
    new = [AssetEvent(f"new-{i}", DAY * t, 5.0) for t in range(20, 23) for i in range(50)]
    result = engine.process(new)
    assert engine.expired_assets == 50 and engine.n_assets == 50
    assert engine._assets.capacity == capacity  # the old slots were reused
    assert engine.snapshot()[0].expired_assets == 50
    # An expired asset seen again starts afresh: not late, an empty window (warming).
    back = engine.process([AssetEvent("old-0", DAY * t, 99.0 + t) for t in (23, 24)])
    assert back.late == [] and [v.warming for v in back.valuations] == [True, True]
    assert back.valuations[1].valuation == 122.0  # persistence of its new value
    assert engine.expired_assets == 50  # it was already counted when its slot was released
    assert not result.late


def test_per_asset_state_stays_under_a_kilobyte() -> None:
    engine = Engine(EngineSettings(**SMALL, n_clusters=1))
    events = [
        AssetEvent(f"a{i}", DAY * t, 10.0 + t, {"volume": 1.0}, {"tier": 1.0, "sector": "x"})
        for t in range(1, 3)
        for i in range(5000)
    ]
    engine.process(events)
    print(f"{engine.state_bytes / engine.n_assets:.0f} B of arrays per asset")
    assert engine.state_bytes / engine.n_assets < 1024


# -- learning off the valuing path ------------------------------------------------------------


def test_background_training_learns_publishes_versions_and_closes() -> None:
    events, _ = three_groups(steps=61)
    engine = Engine(EngineSettings(**{**SMALL, "training": "background"}))
    run(engine, events[:-30])
    engine.flush()  # wait for the trainer to take every full step
    snaps = engine.snapshot()
    assert sum(s.updates for s in snaps) > 0
    for s in snaps:
        assert s.queued_samples < engine.settings.batch_size and s.skipped_samples == 0
        assert s.model_version >= s.updates
    published = {s.cluster: s.model_version for s in snaps}
    with engine.trainer.paused():  # no step can complete meanwhile
        last = engine.process(events[-30:]).valuations
    assert {v.model_version for v in last} == {published[v.cluster] for v in last}
    state = engine.state_dict()  # consistent while the thread lives
    thread = engine.trainer._thread
    assert thread is not None and thread.is_alive()
    engine.close()
    engine.close()  # idempotent
    assert not thread.is_alive()
    restored = Engine(EngineSettings(**SMALL))  # a sync engine can restore a background state
    restored.load_state_dict(state)
    assert restored.snapshot() == engine.snapshot()


def test_a_lagging_trainer_subsamples_and_counts_what_it_skips() -> None:
    events, _ = three_groups(steps=60)
    settings = EngineSettings(**{**SMALL, "training": "background", "max_backlog": 64})
    engine = Engine(settings)
    with engine.trainer.paused():  # the trainer cannot keep up at all
        run(engine, events)
        snaps = engine.snapshot()
    samples = 30 * (60 - settings.seq_len)  # model-made valuations with a value
    skipped = sum(s.skipped_samples for s in snaps)
    queued = sum(s.queued_samples for s in snaps)
    assert skipped > 0 and all(s.queued_samples <= 64 for s in snaps)
    assert skipped + queued + sum(s.trained_samples for s in snaps) == samples
    engine.close()


def test_a_trainer_behind_by_several_steps_trains_them_as_one() -> None:
    """Queued steps of a cluster are merged into one optimizer step (up to `catch_up_steps`):
    fewer updates for the same samples, each trained exactly once, nothing subsampled."""
    events, _ = three_groups(steps=60)
    updates = {}
    for steps in (1, 4):
        settings = EngineSettings(**{**SMALL, "training": "background", "catch_up_steps": steps})
        engine = Engine(settings)
        with engine.trainer.paused():  # the queue fills with many steps' worth
            run(engine, events)
            queued = sum(s.queued_samples for s in engine.snapshot())
        engine.flush()
        snaps = engine.snapshot()
        trained = sum(s.trained_samples for s in snaps)
        assert sum(s.skipped_samples for s in snaps) == 0
        assert trained + sum(s.queued_samples for s in snaps) == queued
        assert all(s.queued_samples < settings.batch_size for s in snaps)
        updates[steps] = sum(s.updates for s in snaps)
        engine.close()
    assert updates[4] * 3 <= updates[1]  # about a quarter as many steps


def test_a_fit_is_applied_without_waiting_for_the_training_step_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finished fit waits for the trainer's step in flight without blocking the valuing
    thread: the batch goes on (fit not applied), no new step starts, and the next batch after
    the step applies it and lets the trainer go on. The checkpoint's state and a clustering
    from the clustering owner likewise."""
    import threading

    from streamval.models.learner import SequenceLearner

    events, _ = three_groups(steps=80)
    settings = EngineSettings(**{**SMALL, "training": "background", "n_clusters": 3})
    engine = Engine(settings)
    gate, entered = threading.Event(), threading.Event()
    step = SequenceLearner.step

    def slow_step(self: SequenceLearner, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name == "streamval-trainer":
            entered.set()
            assert gate.wait(60)
        step(self, *args, **kwargs)

    monkeypatch.setattr(SequenceLearner, "step", slow_step)
    learner = engine.trainer.learner(0)
    by_ts: dict[int, list[AssetEvent]] = {}
    for e in events:
        by_ts.setdefault(e.ts_ms, []).append(e)
    steps = iter(by_ts.values())
    while not entered.is_set():  # until a training step is in flight (and blocked)
        engine.process(next(steps))
    engine._fit()  # a fit on the fitting thread, as a due one
    assert engine.fit_pending and engine._pending_fit is not None
    engine._pending_fit.result(timeout=60)  # the fit is done; the step is still in flight
    engine.process(next(steps))  # returns at once, without the fit
    assert not engine.fitted and engine.trainer._held
    gate.set()
    while engine.trainer._in_flight is not None:
        time.sleep(0.01)
    updates = learner.own_updates
    time.sleep(0.2)
    assert learner.own_updates == updates  # held: no new step started meanwhile
    engine.process(next(steps))
    assert engine.fitted and not engine.trainer._held and not engine.fit_pending
    gate.clear()
    while engine.trainer._in_flight is None:  # a step in flight (blocked) again: no state
        engine.process(next(steps))  # without waiting for it
    assert engine.state_dict_if_idle() is None and engine.trainer._held
    shared = engine.export_clustering(version=5, owner="other")
    assert shared is not None and not engine.adopt_clustering_if_idle(shared)
    gate.set()
    while engine.trainer._in_flight is not None:
        time.sleep(0.01)
    state = engine.state_dict_if_idle()
    assert state is not None and not engine.trainer._held
    assert engine.adopt_clustering_if_idle(shared) and engine.clustering_version == 5
    engine.flush()
    assert learner.own_updates > updates  # the trainer went on
    engine.close()


# -- state is data ----------------------------------------------------------------------------


def test_state_tree_holds_only_data() -> None:
    events, _ = three_groups(steps=30)
    engine = Engine(EngineSettings(**SMALL, detector="kswin"))
    run(engine, events)

    def leaves(node: Any) -> list[Any]:
        if isinstance(node, dict):
            assert all(isinstance(k, str) for k in node)
            return [x for v in node.values() for x in leaves(v)]
        if isinstance(node, list):
            return [x for v in node for x in leaves(v)]
        return [node]

    for leaf in leaves(engine.state_dict()):
        assert leaf is None or type(leaf) in (bool, int, float, str, np.ndarray, torch.Tensor)
        if isinstance(leaf, np.ndarray):
            assert leaf.dtype.kind in "biuf"


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(version=99),
        lambda s: s.pop("assets"),
        lambda s: s["assets"]["arrays"].update(lags=np.zeros((3, 5))),
        lambda s: s["trainer"]["0"]["learner"]["net"].popitem(),
        lambda s: s["clusters"].update({"7": s["clusters"]["0"]}),
        lambda s: s["trainer"]["0"].update(queue_x=np.zeros((2, 2))),
        lambda s: s["counters"].pop("watermark"),
        lambda s: s.update(rng={"state": "zz"}),
    ],
)
def test_a_damaged_state_is_refused_with_a_checkpoint_error(damage: Any) -> None:
    events, _ = three_groups(steps=20)
    engine = Engine(EngineSettings(**SMALL, n_clusters=1))
    run(engine, events)
    state = engine.state_dict()
    damage(state)
    fresh = Engine(EngineSettings(**SMALL, n_clusters=1))
    with pytest.raises(CheckpointError):
        fresh.load_state_dict(state)
    assert fresh.n_assets == 0 and fresh.process(events[:5]).valuations  # still usable


def test_the_fitting_subprocess_starts_before_the_bootstrap_fit() -> None:
    """Its imports take seconds on a loaded machine: an engine that will fit starts it with its
    first events, a follower made the clustering owner at once, a follower or a synchronous
    engine never."""
    background = EngineSettings(**{**SMALL, "training": "background", "n_clusters": 3})
    owner = Engine(background)
    follower = Engine(background)
    follower.fits_clustering = False
    sync = Engine(EngineSettings(**{**SMALL, "training": "sync", "n_clusters": 3}))
    events, _ = three_groups(steps=2)
    try:
        first = [e for e in events if e.ts_ms == events[0].ts_ms]
        for engine in (owner, follower, sync):
            assert not engine._fitter.running
            engine.process(first)
        assert owner._fitter.running and not owner.fitted
        assert not follower._fitter.running and not sync._fitter.running
        follower.fits_clustering = True  # a rebalance made it the owner
        assert follower._fitter.running
    finally:
        for engine in (owner, follower, sync):
            engine.close()


def test_a_program_that_never_closes_its_engine_exits_cleanly() -> None:
    """The background trainer is stopped at interpreter exit, before the daemon thread would be
    cut off inside a torch call, which aborted such programs now and then ("terminate called
    without an active exception"). The child exits while a (slowed) training step is in flight;
    its first exit handler, which runs last, finds the trainer thread gone."""
    import subprocess
    import sys

    code = (
        "import atexit, threading, torch\n"
        "def trainer_alive():\n"
        "    alive = any(t.name == 'streamval-trainer' for t in threading.enumerate())\n"
        "    print('trainer running at exit' if alive else 'trainer stopped')\n"
        "atexit.register(trainer_alive)  # runs after the handlers registered later\n"
        "from streamval.config import EngineSettings\n"
        "from streamval.engine import Engine\n"
        "from streamval.models.learner import SequenceLearner\n"
        "from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel\n"
        "step, started = SequenceLearner.step, threading.Event()\n"
        "def slow(self, *args, **kwargs):\n"
        "    started.set()\n"
        "    x = torch.ones(600, 600)\n"
        "    for _ in range(40):\n"
        "        x = torch.tanh(x @ x) / 600\n"
        "    step(self, *args, **kwargs)\n"
        "SequenceLearner.step = slow\n"
        "engine = Engine(EngineSettings(training='background', batch_size=16, hidden=[8]))\n"
        "for batch in grouped_panel(THREE_GROUPS, 20, 40, seed=0).steps():\n"
        "    engine.process(batch)\n"
        "    if started.is_set():\n"
        "        break\n"
        "print('in flight' if started.is_set() else 'no step')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["in flight", "trainer stopped"]


# -- takeover: state only -----------------------------------------------------------------------


def _asset_rows(engine: Engine, ids: list[str]) -> dict[str, np.ndarray]:
    """Per field, the assets' rows in `ids` order, without the error scales (they depend on
    the cluster's expert mix)."""
    state = engine._assets.state_dict()
    at = [state["ids"].index(a) for a in ids]
    return {
        name: np.asarray(column[at], dtype=np.float64)
        for name, column in state["arrays"].items()
        if name not in ("err_scale", "err_n")
    }


def test_absorb_rebuilds_the_assets_as_processing_does_and_nothing_else() -> None:
    events, truth = three_groups(steps=40)
    owner = Engine(EngineSettings(**SMALL, refit_every=0))
    run(owner, events[: 30 * 30])  # bootstrapped, trained
    shared = owner.export_clustering(version=1, owner="a")
    assert shared is not None
    cut = 30 * 36
    taken = Engine(EngineSettings(**SMALL, refit_every=0))
    taken.fits_clustering = False
    taken.adopt_clustering(shared)
    before = taken.snapshot()
    assert taken.absorb(events[:cut]) == cut
    owner.process(events[30 * 30 : cut], learn=False)
    # Windows, last values, scales, statistics and clusters as the owner's.
    mine, theirs = _asset_rows(taken, sorted(truth)), _asset_rows(owner, sorted(truth))
    for name, column in theirs.items():
        np.testing.assert_allclose(mine[name], column, rtol=1e-9, equal_nan=True, err_msg=name)

    # Nothing learned, sent, scored or counted: the clusters look as before, no fit is due.
    def untouched(snapshots: list[Any]) -> list[Any]:
        return [
            (s.cluster, s.updates, s.queued_samples, s.rolling, s.total, s.drift_alarms)
            for s in snapshots
        ]

    assert untouched(taken.snapshot()) == untouched(before)
    assert all(taken.trainer.queued(c) == 0 for c in taken.clusters)
    assert not taken._will_fit() and taken.clustering_fits == 0
    # The next events are valued by the model at once, in the owner's clusters.
    after = taken.process(events[cut : cut + 30], learn=False).valuations
    assert after and not any(v.warming for v in after)
    assert [v.cluster for v in after] == [owner.cluster_of(v.asset_id) for v in after]
    # Known events again (a partition this process had) are skipped as duplicates.
    assert taken.absorb(events[cut - 30 : cut]) == 0
