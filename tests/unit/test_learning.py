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
    SAMPLES_SIGNATURE,
    SAMPLES_VERSION,
    SCORED_PER_RECORD,
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
from streamval.consumers.watch import ClusterWatch
from streamval.engine import Engine, cluster_policy, cluster_seed
from streamval.errors import ConfigError
from streamval.models.learner import SequenceLearner
from streamval.models.trainer import POOL, RemoteTrainer, Scored, Trainer
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

SETTINGS = EngineSettings(hidden=[8], seq_len=6, batch_size=16, n_clusters=1, training="sync")


def scored(m: int, seed: int = 0) -> Scored:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=m)
    z[:2] = np.nan  # warming: scored in the metrics, no standardised error
    return Scored(
        np.arange(m, dtype=np.int64) * 1000 + 1_600_000_000_000,
        rng.normal(size=m) + 100,
        rng.normal(size=m) + 100,
        z,
    )


def block(n: int = 5, cluster: int = 2, m: int = 7) -> SampleBlock:
    rng = np.random.default_rng(n)
    return SampleBlock(
        cluster=cluster,
        clustering_version=7,
        windows=rng.normal(size=(n, 6, 9)).astype(np.float32),
        targets=rng.normal(size=n),
        ts=np.arange(n, dtype=np.int64) * 1000 + 1_600_000_000_000,
        scored=scored(m),
        valuer="v",
        assets=12,
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
    original = block()
    back = decode_samples(encode_samples(original))
    assert (back.cluster, back.clustering_version, back.valuer, back.assets) == (2, 7, "v", 12)
    np.testing.assert_array_equal(back.windows, original.windows)
    np.testing.assert_array_equal(back.targets, original.targets)
    np.testing.assert_array_equal(back.ts, original.ts)
    assert back.windows.dtype == np.float32 and back.ts.dtype == np.int64
    for name in ("ts", "values", "valuations", "z"):  # NaN z (warming) kept as NaN
        np.testing.assert_array_equal(getattr(back.scored, name), getattr(original.scored, name))
    # Compact: the numbers plus a header of well under 200 bytes.
    raw = encode_samples(original)
    payload = original.windows.nbytes + 16 * len(original) + 32 * len(original.scored)
    assert len(raw) < payload + 200
    # Scored events alone (a segment of warming assets) make a block; nothing at all does not.
    alone = decode_samples(encode_samples(block(n=0, m=3)))
    assert len(alone) == 0 and len(alone.scored) == 3
    with pytest.raises(ValueError, match="empty"):
        decode_samples(encode_samples(block(n=0, m=0)))


def test_a_block_of_another_format_version_is_refused_not_misread() -> None:
    raw = encode_samples(block())
    assert raw.startswith(SAMPLES_SIGNATURE) and raw[len(SAMPLES_SIGNATURE)] == SAMPLES_VERSION
    for version in (1, SAMPLES_VERSION + 1):
        other = SAMPLES_SIGNATURE + bytes([version]) + raw[len(SAMPLES_SIGNATURE) + 1 :]
        with pytest.raises(ValueError, match=f"version: a sample block of format {version}"):
            decode_samples(other)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda raw: b"{" + raw[1:], "signature"),
        (lambda raw: raw[:10], "truncated"),
        (lambda raw: raw[:-3], "length"),
        (lambda raw: raw + b"\0", "length"),
        (lambda raw: raw[:12] + raw[12:].replace(b'"n":5', b'"n":0'), "length"),
        (lambda raw: raw[:12] + raw[12:].replace(b'"m":7', b'"m":-'), "header"),
        (lambda raw: raw[:12] + raw[12:].replace(b'"cluster":2', b'"cluster":-'), "header"),
        (lambda raw: raw[:12] + raw[12:].replace(b'"valuer":"v"', b'"valuer":0  '), "valuer"),
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
    bad = block()
    bad.scored.values[3] = np.inf
    with pytest.raises(ValueError, match="scored"):
        decode_samples(encode_samples(bad))
    bad = block()
    bad.scored.z[3] = -np.inf
    with pytest.raises(ValueError, match="scored"):
        decode_samples(encode_samples(bad))


def test_the_outbox_cuts_records_keys_them_by_cluster_and_places_them_by_the_map() -> None:
    sizes = [{5: 40}, {5: 41}]
    outbox = SampleOutbox("samples", lambda: 3, instance="v1", assets=lambda: sizes.pop(0))
    outbox.partitions = 2
    big = block(n=SAMPLES_PER_RECORD + 10, cluster=5, m=2 * SCORED_PER_RECORD + 1)
    x, y, ts = big.windows, big.targets, big.ts
    outbox.add(5, clusters=[0, 5, 9], x=x, y=y, ts=ts, scored=big.scored)
    records = outbox.take()
    assert outbox.take() == []
    assert [r.partition for r in records] == [1, 1, 1]
    assert {r.key for r in records} == {b"5"} and {r.kind for r in records} == {"sample"}
    blocks = [decode_samples(r.value) for r in records]
    assert [len(b) for b in blocks] == [SAMPLES_PER_RECORD, 10, 0]
    assert [len(b.scored) for b in blocks] == [SCORED_PER_RECORD, SCORED_PER_RECORD, 1]
    assert {(b.clustering_version, b.valuer, b.assets) for b in blocks} == {(3, "v1", 40)}
    np.testing.assert_array_equal(np.concatenate([b.ts for b in blocks]), big.ts)
    np.testing.assert_array_equal(np.concatenate([b.scored.ts for b in blocks]), big.scored.ts)
    # The valuer's asset counts are asked again after each take.
    outbox.add(5, clusters=[5], x=x[:1], y=y[:1], ts=ts[:1], scored=big.scored[:1])
    assert decode_samples(outbox.take()[0].value).assets == 41


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
        self.calls: list[tuple[int, list[int], int, Scored]] = []

    def __call__(
        self, cluster: int, *, clusters: list[int], x: Any, y: Any, ts: Any, scored: Scored
    ) -> None:
        self.calls.append((cluster, clusters, len(y), scored))


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


def test_the_scored_events_travel_with_the_samples_and_give_the_owner_the_engines_metrics() -> None:
    events = grouped_panel(THREE_GROUPS, 4, 30, seed=0).events
    sink = Sink()
    engine = valuer_engine(sink)
    result = engine.process(events)
    labelled = [v for v in result.valuations if v.value is not None]
    sent = [scored for _, _, _, scored in sink.calls]
    assert sum(len(s) for s in sent) == len(labelled)
    warming = np.concatenate([np.isnan(s.z) for s in sent])
    assert warming.tolist() == [v.warming for v in labelled]
    # The owner's metrics over the scored events are the engine's own, to the last digit.
    watch = ClusterWatch(SETTINGS, 0)
    monitor = cluster_policy(SETTINGS, 0).monitor
    for s in sent:
        watch.observe("v", 4, s, monitor)
    snap = engine.snapshot()[0]
    assert watch.errors.stats(rolling=True) == snap.rolling
    assert watch.errors.stats(rolling=False) == snap.total
    assert watch.assets() == 4


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


def test_a_valuer_sends_every_sample_to_the_pooled_model_and_serves_its_learners() -> None:
    settings = SETTINGS.model_copy(update={"n_clusters": 3})
    events = grouped_panel(THREE_GROUPS, 10, 40, seed=0, attribute_noise=0.1).events
    sink = Sink()

    def make(s: EngineSettings) -> Trainer:
        return RemoteTrainer(sink=sink, batch_size=s.batch_size, max_backlog=s.max_backlog)

    engine = Engine(settings, trainer=make)
    trainer = engine.trainer
    assert isinstance(trainer, RemoteTrainer)
    for i in range(0, 600, 30):  # a step per call
        engine.process(events[i : i + 30])
    assert trainer.pool_snapshot() is None and POOL not in {c for c, *_ in sink.calls}
    engine.refit()  # (a valuer fits off its valuing thread; here now)
    assert len(engine.clusters) > 1 and trainer.pool_snapshot() is not None
    # Once the first clustering split the bootstrap cluster, every sample goes once more, under
    # POOL, with no scored events: the pooled model's learner trains on every cluster's.
    pooled = 0
    for i in range(600, len(events), 30):
        before = len(sink.calls)
        engine.process(events[i : i + 30])
        calls = sink.calls[before:]
        pool = sum(n for cluster, _, n, _ in calls if cluster == POOL)
        assert pool == sum(n for cluster, _, n, _ in calls if cluster != POOL)
        assert all(len(scored) == 0 for cluster, _, _, scored in calls if cluster == POOL)
        pooled += pool
    assert pooled > 0
    assert any(engine._clusters[c].mix.pooled for c in engine.clusters)
    # The learner's snapshot replaces the pooled mirror, newer versions only.
    learner = trained_learner(7)
    trainer.offer(POOL, 7, slim_learner_state(learner.state_dict()))
    assert trainer.apply_offered() == 1
    assert trainer.pool_snapshot().version == 7  # type: ignore[union-attr]
    trainer.offer(POOL, 6, slim_learner_state(trained_learner(6).state_dict()))
    assert trainer.apply_offered() == 0
    # A pooled block decodes (its id is below every cluster's); its partition comes after theirs.
    assert decode_samples(encode_samples(block(3, cluster=POOL, m=0))).cluster == POOL
    assert partition_of(POOL, [0, 1, 2], 4) == 3 and partition_of(POOL, [0, 1, 2], 3) == 0
