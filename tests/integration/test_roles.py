"""The valuer/learner split on a real broker: a valuer sends its labelled samples to the
training-samples topic, a learner trains the clusters and publishes snapshots on the models
topic, the valuer serves them; a restarted learner goes on from the latest snapshots."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.test_scaleout import T0, configure, produce, wait_for
from tests.integration.threads import Running
from tests.unit.test_shocks import DAY
from tests.unit.test_shocks import panel as shock_panel

from streamval.config import Settings
from streamval.consumers.learner import LearnerService
from streamval.consumers.learning import decode_model, decode_samples
from streamval.consumers.service import ValuationService
from streamval.models.trainer import POOL, RemoteTrainer
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import DAY_MS, THREE_GROUPS, grouped_panel
from streamval.stream.kafka.reader import read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def role(settings: Settings, name: str) -> Settings:
    consumer = settings.consumer.model_copy(update={"role": name})
    return settings.model_copy(update={"consumer": consumer})


def model_versions(settings: Settings) -> dict[int, list[int]]:
    """Per cluster, the versions on the models topic in the order they were written."""
    out: dict[int, list[int]] = defaultdict(list)
    for record in read_topic(settings, settings.models_topic(), timeout_s=30):
        model = decode_model(record.value)
        assert record.key == str(model.cluster).encode()
        out[model.cluster].append(model.version)
    return dict(out)


def valuer_cluster_series(valuer: ValuationService) -> set[str]:
    """The names of the valuer's exported samples that carry a cluster label."""
    text = generate_latest(valuer.metrics.registry).decode()
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "cluster" in sample.labels and not sample.name.endswith("_created")
    }


def valued(settings: Settings) -> list[dict[str, object]]:
    return [json.loads(r.value) for r in read_topic(settings, settings.topics.valuations)]


def test_a_valuer_serves_the_models_a_learner_trains_on_its_samples(
    kafka_settings: Settings,
) -> None:
    settings = configure(kafka_settings)
    panel = grouped_panel(
        THREE_GROUPS, 8, 70, seed=0, t0_ms=T0, attributes=True, attribute_noise=0.1
    )
    fitted, split = T0 + 20 * DAY_MS, T0 + 45 * DAY_MS
    early = [e for e in panel.events if e.ts_ms < fitted]
    first = [e for e in panel.events if fitted <= e.ts_ms < split]
    second = [e for e in panel.events if e.ts_ms >= split]
    valuer = ValuationService(role(settings, "valuer"), instance="valuer")
    learner = LearnerService(role(settings, "learner"), instance="learner")
    # Born at 0 (for increase() in alerts) in a valuer, absent where nothing sends samples.
    sample_failures = ("streamval_send_failures_total", {"kind": "sample"})
    assert valuer.metrics.registry.get_sample_value(*sample_failures) == 0.0
    assert ValuationService(settings).metrics.registry.get_sample_value(*sample_failures) is None
    running = [Running(valuer, "valuer"), Running(learner, "learner")]
    try:
        produce(settings, early)
        wait_for(
            lambda: (
                all(r.ok() for r in running)
                and valuer.published >= len(early)
                and valuer.engine.clustering_version >= 1
            ),
            120,
            "the start valued and the clustering fitted",
        )
        produce(settings, first)
        wait_for(
            lambda: (
                all(r.ok() for r in running)
                and valuer.published >= len(early) + len(first)
                and len(learner.models.latest()) >= 3
                and learner.published >= 10
            ),
            120,
            "snapshots of every cluster",
        )
        published = {c: r.version for c, r in learner.models.latest().items()}
        # The valuer serves them: every cluster's latest version, within the valuer's loop.
        trainer = valuer.engine.trainer
        assert isinstance(trainer, RemoteTrainer)
        wait_for(
            lambda: all(
                c not in valuer.engine.clusters or trainer.snapshot(c).version >= v
                for c, v in published.items()
            ),
            30,
            "the valuer to serve the snapshots",
        )
        produce(settings, second)
        wait_for(
            lambda: all(r.ok() for r in running) and valuer.published >= len(panel.events),
            120,
            "the second part valued",
        )
        for r in running:
            r.stop()
    finally:
        for r in running:
            r.halt()

    out = valued(settings)
    keys = {(e.asset_id, e.ts_ms) for e in panel.events}
    assert {(v["asset_id"], v["ts"]) for v in out} == keys  # every event valued
    assert len(out) == len(keys)
    # Nothing was trained in the valuer; every sample went to the learner, and it trained them.
    assert trainer.sent > 0 and learner.trained > 0
    assert all(trainer.counts(c)[1] == 0 for c in valuer.engine.clusters)
    samples = read_topic(settings, settings.training_samples_topic(), timeout_s=30)
    assert sum(len(decode_samples(r.value)) for r in samples) == trainer.sent
    # Each cluster's samples sit in one partition, chosen by the map (not by hashing the key).
    partitions: dict[int, set[int]] = defaultdict(set)
    clustering = {decode_samples(r.value).clustering_version for r in samples}
    latest = max(clustering)
    for r in samples:
        block = decode_samples(r.value)
        if block.clustering_version == latest:
            partitions[block.cluster].add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())
    assert len(set().union(*partitions.values())) == len(partitions)  # no two share one
    # Per-cluster metrics come from the cluster's owner: the learner's series are the engine's
    # own definitions over the scored events (one valuer here: the same numbers as the valuer's
    # engine keeps), the valuer exports none but its valuations by cluster.
    owned = sorted(learner.snapshots(), key=lambda snap: snap.cluster)
    assert owned and {snap.cluster for snap in owned} == set(valuer.engine.clusters)
    engine_side = {snap.cluster: snap for snap in valuer.engine.snapshot()}
    for snap in owned:
        assert snap.total == engine_side[snap.cluster].total, snap.cluster
        assert snap.rolling == engine_side[snap.cluster].rolling, snap.cluster
        assert snap.assets == engine_side[snap.cluster].assets > 0
        labels = {"cluster": str(snap.cluster), "window": "total"}
        got = learner.metrics.registry.get_sample_value("streamval_cluster_mae", labels)
        assert got == snap.total.mae
    assert not valuer_cluster_series(valuer) - {"streamval_valuations_published_total"}
    trained = learner.metrics.registry.get_sample_value("streamval_learner_samples_trained_total")
    assert trained == learner.trained
    # The metrics topic holds the learner's snapshots keyed by cluster, none of the valuer's.
    snapshots = [
        (r.key, json.loads(r.value))
        for r in read_topic(settings, settings.topics.metrics, timeout_s=30)
    ]
    mine = [(k, v) for k, v in snapshots if v.get("kind") == "snapshot"]
    assert mine and all(v["instance"] == "learner" for _, v in mine)
    assert all(k == str(v["cluster"]).encode() for k, v in mine)
    assert {v["cluster"] for _, v in mine} >= {snap.cluster for snap in owned}
    # The pooled expert runs in the split too: every sample goes once more, under POOL, to its
    # own partition; the learner owning it publishes the pooled model there (not a cluster: no
    # metrics of its own), and the valuer serves it in its clusters' expert mixes.
    pool_samples = sum(len(decode_samples(r.value)) for r in samples if r.key == str(POOL).encode())
    assert 0 < pool_samples < trainer.sent
    assert POOL not in {snap.cluster for snap in owned}
    assert learner.models.latest()[POOL].version > 0
    assert any(valuer.engine._clusters[c].mix.pooled for c in valuer.engine.clusters)
    # Versions advance on the models topic, and the second part is valued by those models.
    versions = model_versions(settings)
    served_pool = trainer.pool_snapshot()
    assert served_pool is not None and served_pool.version in versions[POOL]
    assert len(versions) >= 2
    assert all(v == sorted(v) and v[-1] > v[0] for v in versions.values() if len(v) > 1)
    on_topic = {(c, v) for c, vs in versions.items() for v in vs}
    late = [v for v in out if int(str(v["ts"])) >= split and not v["warming"]]
    assert late and all(int(str(v["model_version"])) > 0 for v in late)
    served = {(int(str(v["cluster"])), int(str(v["model_version"]))) for v in late}
    # Served versions are the learner's (a new cluster may be served its parent's at first).
    parents_or_own = {v for _, v in on_topic}
    assert all(version in parents_or_own for _, version in served)


def test_a_restarted_learner_goes_on_from_the_latest_snapshots(kafka_settings: Settings) -> None:
    settings = configure(kafka_settings)
    engine = settings.engine.model_copy(update={"n_clusters": 1})
    settings = settings.model_copy(update={"engine": engine})
    panel = grouped_panel(THREE_GROUPS, 6, 60, seed=1, t0_ms=T0, attributes=False)
    split = T0 + 30 * DAY_MS
    first = [e for e in panel.events if e.ts_ms < split]
    second = [e for e in panel.events if e.ts_ms >= split]
    valuer = Running(ValuationService(role(settings, "valuer"), instance="valuer"), "valuer")
    learner = LearnerService(role(settings, "learner"), instance="learner-1")
    first_learner = Running(learner, "learner-1")
    again: Running | None = None
    try:
        produce(settings, first)
        assert isinstance(valuer.service, ValuationService)
        service = valuer.service
        trainer = service.engine.trainer
        assert isinstance(trainer, RemoteTrainer)
        wait_for(
            lambda: first_learner.ok() and service.published >= len(first),
            120,
            "the first part valued",
        )
        wait_for(
            lambda: first_learner.ok() and learner.trained >= 300,
            120,
            "the first learner training",
        )
        first_learner.stop()
        reached = learner.models.latest()[0].version
        handed = learner.models.latest()[0].watch
        assert reached > 0 and learner.restored == 0
        produce(settings, second)
        wait_for(lambda: service.published >= len(panel.events), 120, "the second part valued")
        restarted = LearnerService(role(settings, "learner"), instance="learner-2")
        again = Running(restarted, "learner-2")
        wait_for(
            lambda: (
                again is not None
                and again.ok()
                and restarted.trained + learner.trained >= trainer.sent - 32
            ),
            120,
            "the second learner training the rest",
        )
        again.stop()
        valuer.stop()
    finally:
        for r in (valuer, first_learner, again):
            if r is not None:
                r.halt()
    assert restarted.restored == 1  # from the models topic, not a cold start
    # The cluster's metrics and detector went on from the snapshot too: its count continued
    # (no restart from 0, no event counted twice) and the detector did not calibrate again.
    assert handed is not None and handed["errors"]["n"] > 0
    (snap,) = restarted.snapshots()
    assert handed["errors"]["n"] < snap.total.n <= service.engine.snapshot()[0].total.n
    watch = restarted._owned[0].watch
    assert watch.shock is not None and handed["shock"] is not None
    calibrating = len(handed["shock"]["calib"])  # steps gathered towards its calibration
    assert calibrating > 0 and len(watch.shock.state_dict()["calib"]) > calibrating
    assert learner.behind == restarted.behind == 0  # read to its end before each assignment
    versions = model_versions(settings)[0]
    assert versions == sorted(versions)  # the version continued, it was not reset
    assert versions[-1] > reached
    after = versions[versions.index(reached) + 1 :]
    assert after and after[0] == reached + 1
    # Every sample trained exactly once across the restart: the second learner skipped those in
    # the snapshot it restored and read the rest (a last partial batch stays queued).
    queued = restarted.trainer.counts(0)[0]
    assert learner.trained + restarted.trained + queued == trainer.sent


def test_the_learner_detects_a_shock_over_the_valuers_events_and_boosts_its_lr(
    kafka_settings: Settings,
) -> None:
    """Drift detection runs where the cluster trains: a crash of every asset at one step, valued
    by a valuer, is detected by the learner, which boosts the cluster's lr and reports it."""
    settings = configure(kafka_settings)
    engine = settings.engine.model_copy(
        update={"n_clusters": 1, "shock_calibration": 50, "drift_response": "boost"}
    )
    settings = settings.model_copy(update={"engine": engine})
    events = [
        AssetEvent(e.asset_id, T0 + e.ts_ms, e.value)
        for e in shock_panel(steps=140, n=30, shock_at=110)
    ]
    shock_ts = T0 + 111 * DAY
    valuer = ValuationService(role(settings, "valuer"), instance="valuer")
    learner = LearnerService(role(settings, "learner"), instance="learner")
    running = [Running(valuer, "valuer"), Running(learner, "learner")]
    try:
        produce(settings, events)
        wait_for(
            lambda: all(r.ok() for r in running) and valuer.published >= len(events),
            180,
            "every event valued",
        )
        wait_for(
            lambda: all(r.ok() for r in running) and learner.trainer.policy(0).alarms >= 1,
            120,
            "the learner's drift alarm",
        )
        for r in running:
            r.stop()
    finally:
        for r in running:
            r.halt()
    drift = [
        json.loads(r.value)
        for r in read_topic(settings, settings.topics.metrics, timeout_s=30)
        if json.loads(r.value).get("kind") == "drift"
    ]
    shocks = [d for d in drift if d["ts"] == shock_ts and d["detector"] == "cross_sectional"]
    assert len(shocks) == 1, drift
    assert shocks[0]["assets"] == 30 and shocks[0]["response"] == "boost"
    assert shocks[0]["lr"] > settings.engine.lr  # boosted where the cluster trains
    assert len(drift) == learner.trainer.policy(0).alarms  # the valuer sent none
    counted = learner.metrics.registry.get_sample_value(
        "streamval_drift_alarms_total", {"cluster": "0", "detector": "cross_sectional"}
    )
    assert counted is not None and counted >= 1
    assert (
        valuer.metrics.registry.get_sample_value(
            "streamval_drift_alarms_total", {"cluster": "0", "detector": "cross_sectional"}
        )
        is None
    )
