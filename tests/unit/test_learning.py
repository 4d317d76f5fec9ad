"""The valuer/learner split without a broker: the cluster -> partition map, the sample and model
encodings, and a valuer's engine (`RemoteTrainer`) that sends its samples on and serves the
models it is offered."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamval.config import EngineSettings, load_settings
from streamval.consumers.learning import (
    SAMPLES_PER_RECORD,
    ModelRecord,
    SampleBlock,
    SampleOutbox,
    decode_model,
    decode_samples,
    encode_model,
    encode_samples,
    partition_of,
    slim_learner_state,
)
from streamval.engine import Engine, cluster_policy, cluster_seed
from streamval.errors import ConfigError
from streamval.models.learner import SequenceLearner
from streamval.models.trainer import RemoteTrainer, Trainer
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

SETTINGS = EngineSettings(hidden=[8], seq_len=6, batch_size=16, n_clusters=1, training="sync")


def block(n: int = 5, cluster: int = 2, alarm: bool = False) -> SampleBlock:
    rng = np.random.default_rng(n)
    return SampleBlock(
        cluster=cluster,
        clustering_version=7,
        windows=rng.normal(size=(n, 6, 9)).astype(np.float32),
        targets=rng.normal(size=n),
        ts=np.arange(n, dtype=np.int64) * 1000 + 1_600_000_000_000,
        alarm=alarm,
    )


# -- the partition map ---------------------------------------------------------------------------


def test_clusters_are_dealt_round_robin_over_the_partitions_in_id_order() -> None:
    clusters = [7, 0, 3, 12, 5]
    assert [partition_of(c, clusters, 3) for c in sorted(clusters)] == [0, 1, 2, 0, 1]
    # As many partitions as clusters: no two share one (hashing five keys would likely collide).
    assert sorted(partition_of(c, clusters, 5) for c in clusters) == [0, 1, 2, 3, 4]
    # Every valuer with the same clustering computes the same map, whatever order it lists them.
    assert all(partition_of(c, clusters, 4) == partition_of(c, clusters[::-1], 4) for c in clusters)


def test_a_cluster_missing_from_the_list_still_gets_a_partition_and_bad_counts_fail() -> None:
    assert partition_of(4, [1, 2], 8) == 2  # counted among the clusters: [1, 2, 4]
    assert partition_of(0, [], 3) == 0
    with pytest.raises(ValueError, match="partitions"):
        partition_of(0, [0], 0)


# -- sample blocks -------------------------------------------------------------------------------


def test_a_sample_block_round_trips_exactly() -> None:
    original = block(alarm=True)
    back = decode_samples(encode_samples(original))
    assert (back.cluster, back.clustering_version, back.alarm) == (2, 7, True)
    np.testing.assert_array_equal(back.windows, original.windows)
    np.testing.assert_array_equal(back.targets, original.targets)
    np.testing.assert_array_equal(back.ts, original.ts)
    assert back.windows.dtype == np.float32 and back.ts.dtype == np.int64
    # Compact: the numbers plus a header of well under 200 bytes.
    raw = encode_samples(original)
    assert len(raw) < original.windows.nbytes + 16 * len(original) + 200


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda raw: b"{" + raw[1:], "signature"),
        (lambda raw: raw[:10], "truncated"),
        (lambda raw: raw[:-3], "length"),
        (lambda raw: raw + b"\0", "length"),
        (lambda raw: raw[:12] + raw[12:].replace(b'"n":5', b'"n":0'), "n"),
        (lambda raw: raw[:12] + raw[12:].replace(b'"cluster":2', b'"cluster":-'), "header"),
        (lambda raw: raw[:12] + raw[12:].replace(b"false", b"0    "), "alarm"),
    ],
)
def test_a_damaged_sample_block_is_refused_with_the_problem_named(
    damage: Any, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        decode_samples(damage(encode_samples(block())))


def test_non_finite_samples_and_empty_records_are_refused() -> None:
    bad = block()
    bad.targets[1] = np.nan
    with pytest.raises(ValueError, match="values"):
        decode_samples(encode_samples(bad))
    bad = block()
    bad.windows[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="values"):
        decode_samples(encode_samples(bad))
    unknown = block()  # a feature not known yet: NaN in the window, as the engine makes them
    unknown.windows[:, :, 3] = np.nan
    assert np.isnan(decode_samples(encode_samples(unknown)).windows[:, :, 3]).all()
    with pytest.raises(ValueError, match="signature"):
        decode_samples(None)


def test_the_outbox_cuts_records_keys_them_by_cluster_and_places_them_by_the_map() -> None:
    outbox = SampleOutbox("samples", lambda: 3)
    outbox.partitions = 2
    big = block(n=SAMPLES_PER_RECORD + 10, cluster=5)
    outbox.add(5, clusters=[0, 5, 9], x=big.windows, y=big.targets, ts=big.ts, alarm=True)
    records = outbox.take()
    assert outbox.take() == []
    assert [r.partition for r in records] == [1, 1]
    assert {r.key for r in records} == {b"5"} and {r.kind for r in records} == {"sample"}
    blocks = [decode_samples(r.value) for r in records]
    assert [len(b) for b in blocks] == [SAMPLES_PER_RECORD, 10]
    assert [b.alarm for b in blocks] == [True, False]  # an alarm is acted on once
    assert {b.clustering_version for b in blocks} == {3}
    np.testing.assert_array_equal(np.concatenate([b.ts for b in blocks]), big.ts)


# -- models --------------------------------------------------------------------------------------


def trained_learner(steps: int = 3) -> SequenceLearner:
    learner = SequenceLearner.from_settings(SETTINGS, seed=cluster_seed(SETTINGS, 0))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        x = rng.normal(size=(16, 6, 9)).astype(np.float32)
        learner.step(x, rng.normal(size=16), lr=0.01, replay_fraction=0.5)
    return learner


def test_a_model_round_trips_and_serves_the_same_predictions() -> None:
    learner = trained_learner()
    policy = cluster_policy(SETTINGS, 0)
    state = slim_learner_state(learner.state_dict())
    record = ModelRecord(4, learner.updates, 2, state, policy.state_dict(), covered=(1, 40, 7))
    back = decode_model(encode_model(record, "g", "g.models"))
    assert (back.cluster, back.version, back.clustering_version) == (4, 3, 2)
    assert back.covered == (1, 40, 7)
    restored = SequenceLearner.from_settings(SETTINGS, seed=99)
    restored.load_state_dict(back.learner)
    cluster_policy(SETTINGS, 0).load_state_dict(back.policy)
    x = np.random.default_rng(1).normal(size=(10, 6, 9)).astype(np.float32)
    np.testing.assert_allclose(restored.predict(x), learner.predict(x))
    assert restored.updates == learner.updates
    # Slim: no optimizer moments, no replay reservoir.
    assert back.learner["adam"]["step"] == [] and len(back.learner["res_y"]) == 0


def test_a_damaged_or_foreign_model_record_is_refused() -> None:
    learner = trained_learner(1)
    raw = encode_model(ModelRecord(0, 1, 0, slim_learner_state(learner.state_dict()), {}), "g", "t")
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF
    for bad in (bytes(flipped), b"\x80\x04pickle", b"", None):
        with pytest.raises(ValueError):
            decode_model(bad)


# -- a valuer's engine ---------------------------------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int], int, bool]] = []

    def __call__(
        self, cluster: int, *, clusters: list[int], x: Any, y: Any, ts: Any, alarm: bool
    ) -> None:
        self.calls.append((cluster, clusters, len(y), alarm))


def valuer_engine(sink: Sink) -> Engine:
    def make(s: EngineSettings) -> Trainer:
        return RemoteTrainer(sink=sink, batch_size=s.batch_size, max_backlog=s.max_backlog)

    return Engine(SETTINGS, trainer=make)


def test_a_valuer_sends_every_sample_on_and_trains_nothing_itself() -> None:
    events = grouped_panel(THREE_GROUPS, 4, 40, seed=0).events
    sink = Sink()
    engine = valuer_engine(sink)
    reference = Engine(SETTINGS)
    result = engine.process(events)
    local = reference.process(events)
    sent = sum(n for _, _, n, _ in sink.calls)
    assert isinstance(engine.trainer, RemoteTrainer)
    assert sent == engine.trainer.sent > 0
    assert sent == reference.trainer.counts(0)[1] + reference.trainer.counts(0)[0]
    assert {v.model_version for v in result.valuations} == {0}
    assert max(v.model_version for v in local.valuations) > 0
    assert all(clusters == [0] for _, clusters, _, _ in sink.calls)


def test_a_valuer_serves_an_offered_model_from_the_next_batch_and_never_an_older_one() -> None:
    events = grouped_panel(THREE_GROUPS, 4, 40, seed=0).events
    engine = valuer_engine(Sink())
    trainer = engine.trainer
    assert isinstance(trainer, RemoteTrainer)
    engine.process(events[:200])
    learner = trained_learner(5)
    trainer.offer(0, 5, slim_learner_state(learner.state_dict()))
    assert engine.trainer.snapshot(0).version == 0  # not before the valuing thread applies it
    assert trainer.apply_offered() == 1
    served = engine.process(events[200:])
    assert {v.model_version for v in served.valuations} == {5}
    x = np.random.default_rng(1).normal(size=(10, 6, 9)).astype(np.float32)
    np.testing.assert_allclose(trainer.learner(0).predict(x), learner.predict(x))
    trainer.offer(0, 4, slim_learner_state(trained_learner(4).state_dict()))
    assert trainer.apply_offered() == 0
    assert engine.trainer.snapshot(0).version == 5
    # A cluster it does not have yet keeps its offer until it appears.
    trainer.offer(3, 9, slim_learner_state(learner.state_dict()))
    assert trainer.apply_offered() == 0


def test_a_drift_alarm_travels_with_the_clusters_next_samples() -> None:
    sink = Sink()
    engine = valuer_engine(sink)
    engine.process(grouped_panel(THREE_GROUPS, 4, 20, seed=0).events)
    engine.trainer.boost(0)
    engine.process(grouped_panel(THREE_GROUPS, 4, 4, seed=0, t0_ms=10**12).events)
    engine.process(grouped_panel(THREE_GROUPS, 4, 4, seed=0, t0_ms=2 * 10**12).events)
    alarms = [alarm for _, _, _, alarm in sink.calls]
    assert alarms.count(True) == 1 and alarms.index(True) > 0


def test_split_roles_need_per_cluster_models() -> None:
    with pytest.raises(ConfigError, match="pooling"):
        load_settings(
            None, overrides={"consumer.role": "valuer", "engine.pooling": "shared"}, environ={}
        )
    settings = load_settings(None, overrides={"consumer.role": "learner"}, environ={})
    assert settings.training_samples_topic() == "streamval.training-samples"
    assert settings.models_topic() == "streamval.models"


def test_a_model_of_other_settings_is_refused_and_the_served_one_stays() -> None:
    engine = valuer_engine(Sink())
    trainer = engine.trainer
    assert isinstance(trainer, RemoteTrainer)
    trainer.offer(0, 3, slim_learner_state(trained_learner(3).state_dict()))
    assert trainer.apply_offered() == 1
    other = EngineSettings(hidden=[4], seq_len=6, batch_size=16, n_clusters=1)
    wrong = SequenceLearner.from_settings(other, seed=0)
    trainer.offer(0, 9, slim_learner_state(wrong.state_dict()))
    assert trainer.apply_offered() == 0
    assert trainer.refused == 1 and "cluster 0, version 9" in trainer.refusal
    assert trainer.snapshot(0).version == 3
