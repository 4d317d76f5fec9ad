"""Two valuation services in one consumer group share one clustering through Kafka: every
asset gets the same cluster id whichever process values it, also after a takeover; snapshots of
the two processes stay apart; a message on the clusterings topic that is not a clustering is
ignored."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from tests.integration.threads import Running

from streamval.config import Settings
from streamval.consumers.service import ValuationService
from streamval.engine import Engine
from streamval.models.shared import SharedClustering
from streamval.monitoring.metrics import EngineMetrics
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import DAY_MS, THREE_GROUPS, grouped_panel
from streamval.stream.kafka.clients import make_producer
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T0 = 1_600_000_000_000
PARTITIONS = 4
SEQ_LEN = 6


def configure(settings: Settings) -> Settings:
    engine = settings.engine.model_copy(
        update={
            "hidden": [8],
            "seq_len": SEQ_LEN,
            "bootstrap_assets": 12,
            "min_history": 8,
            "batch_size": 32,
        }
    )
    consumer = settings.consumer.model_copy(
        update={
            "max_poll_records": 200,
            "metrics_interval_s": 0.5,
            "profile_interval_s": 0.5,
            "poll_timeout_ms": 200,
            # kafka-python may leave a member outside its group after a rebalance; the
            # service's watchdog re-creates the consumer after this long without partitions.
            "rejoin_after_s": 15.0,
        }
    )
    topics = settings.topics.model_copy(update={"partitions": PARTITIONS})
    return settings.model_copy(update={"engine": engine, "consumer": consumer, "topics": topics})


def produce(
    settings: Settings, events: list[AssetEvent], partition: dict[str, int] | None = None
) -> None:
    """Keyed by asset; to `partition[asset]` where given, else by the key's hash."""
    producer = make_producer(settings)
    for e in events:
        producer.send(
            settings.topics.input,
            key=e.asset_id.encode(),
            value=e.to_bytes(),
            partition=(partition or {}).get(e.asset_id),
        )
    producer.flush()
    producer.close()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Member(Running):
    """A valuation service of the group running in a thread, with its own metrics."""

    def __init__(self, settings: Settings, instance: str) -> None:
        self.metrics = EngineMetrics()
        super().__init__(
            ValuationService(settings, metrics=self.metrics, instance=instance), instance
        )
        self.service: ValuationService

    @property
    def engine(self) -> Engine:
        engine = self.service.engine
        assert isinstance(engine, Engine)
        return engine

    def partitions(self) -> set[int]:
        return {tp.partition for tp in set(self.service._assigned)}


def wait_until_split(members: list[Member]) -> None:
    """Until the two members hold every partition between them, each some, none both."""
    wait_for(
        lambda: (
            all(m.partitions() for m in members)
            and sorted(members[0].partitions() | members[1].partitions()) == list(range(PARTITIONS))
            and not members[0].partitions() & members[1].partitions()
        ),
        90,
        "the group to split the partitions",
    )


def start_pair(settings: Settings) -> tuple[Member, Member]:
    """Two members of one group, once the group has split the partitions: (owner, follower)."""
    t = settings.topics
    topics = [t.input, t.dlq, t.valuations, t.metrics]
    ensure_topics(settings, [*topics, settings.clusterings_topic(), settings.profiles_topic()])
    members = [Member(settings, "a"), Member(settings, "b")]
    try:
        wait_until_split(members)
    except BaseException:
        for m in members:
            m.halt()
        raise
    owner, follower = sorted(members, key=lambda m: 0 not in m.partitions())
    return owner, follower


def test_the_owner_fits_on_the_other_processes_assets_through_the_profiles_topic(
    kafka_settings: Settings,
) -> None:
    """One group's assets only in the follower's partitions: the owner's fit still gives it a
    cluster of its own (it read their profiles), and both processes agree on every id."""
    settings = configure(kafka_settings)
    # More than the follower's 15 assets: the owner bootstraps once its own have arrived too.
    engine = settings.engine.model_copy(update={"bootstrap_assets": 20})
    settings = settings.model_copy(update={"engine": engine})
    panel = grouped_panel(
        THREE_GROUPS, 10, 40, seed=0, t0_ms=T0, attributes=True, attribute_noise=0.1
    )
    owner, follower = start_pair(settings)
    try:
        mine, theirs = sorted(owner.partitions()), sorted(follower.partitions())
        names = sorted(panel.truth)
        # Group 2 and half of group 1 to the follower's partitions, the rest to the owner's.
        to_follower = [
            n for i, n in enumerate(names) if panel.truth[n] == 2 or (panel.truth[n] == 1 and i % 2)
        ]
        where = {n: theirs[i % len(theirs)] for i, n in enumerate(to_follower)}
        rest = [n for n in names if n not in where]
        where.update({n: mine[i % len(mine)] for i, n in enumerate(rest)})
        # The follower's assets start first (10 days, enough to be ready), so their profiles
        # are on the topic, of about the maturity of the owner's own when it bootstraps.
        early = T0 + 10 * DAY_MS
        head = [e for e in panel.events if e.asset_id in to_follower and e.ts_ms < early]
        produce(settings, head, where)
        profiles = owner.service._profiles
        assert profiles is not None
        wait_for(
            lambda: len(profiles.profiles()) >= len(to_follower), 60, "the follower's profiles"
        )
        assert not owner.engine.fitted  # nothing of its own yet
        produce(
            settings, [e for e in panel.events if e.ts_ms >= early or e.asset_id in rest], where
        )
        wait_for(
            lambda: (
                sum(m.service.published for m in (owner, follower)) >= len(panel.events)
                and follower.engine.clustering_version >= 1
            ),
            90,
            "every event valued and the clustering shared",
        )
        owner.stop()
        follower.stop()
    finally:
        for m in (owner, follower):
            m.halt()
    assert follower.engine.clustering_fits == 0
    by_group: dict[int, set[int]] = {}
    for m in (owner, follower):
        for asset, cluster in m.engine.assignments().items():
            by_group.setdefault(panel.truth[asset], set()).add(cluster)
    assert all(len(c) == 1 for c in by_group.values()), by_group
    assert len({next(iter(c)) for c in by_group.values()}) == 3, by_group
    assert not set(owner.engine.assignments()) & set(to_follower)


def test_two_processes_share_one_clustering_and_a_takeover_keeps_it(
    kafka_settings: Settings,
) -> None:
    settings = configure(kafka_settings)
    t = settings.topics
    ensure_topics(settings, [t.input, t.dlq, t.valuations, t.metrics, settings.clusterings_topic()])
    panel = grouped_panel(
        THREE_GROUPS, 15, 80, seed=0, t0_ms=T0, attributes=True, attribute_noise=0.1
    )
    split = T0 + 50 * DAY_MS
    first = [e for e in panel.events if e.ts_ms < split]
    second = [e for e in panel.events if e.ts_ms >= split]
    members = [Member(settings, "a"), Member(settings, "b")]
    try:
        wait_until_split(members)
        owner, follower = sorted(members, key=lambda m: 0 not in m.partitions())
        produce(settings, first)
        wait_for(
            lambda: (
                sum(m.service.published for m in members) >= len(first)
                and follower.engine.clustering_version >= 1
            ),
            90,
            "the first part valued and the clustering shared",
        )
        assert owner.engine.fits_clustering and not follower.engine.fits_clustering
        assert owner.engine.clustering_fits >= 1 and follower.engine.clustering_fits == 0
        # One meaning per id: each ground-truth group has one cluster id across both processes.
        ids: dict[str, set[int]] = {}
        for m in members:
            for asset, cluster in m.engine.assignments().items():
                ids.setdefault(asset, set()).add(cluster)
        by_group: dict[int, set[int]] = {}
        for asset, clusters in ids.items():
            by_group.setdefault(panel.truth[asset], set()).update(clusters)
        assert all(len(c) == 1 for c in by_group.values()), by_group
        group_id = {g: next(iter(c)) for g, c in by_group.items()}
        assert len(set(group_id.values())) == 3
        assert {a for m in members for a in m.engine.assignments()} == set(panel.truth)
        assert all(m.engine.assignments() for m in members)

        # Takeover: the owner stops, the follower gets every partition (and the ownership).
        taken = set(owner.engine.assignments())
        before = follower.service.published
        owner.stop()
        wait_for(
            lambda: sorted(follower.partitions()) == list(range(PARTITIONS)), 90, "the takeover"
        )
        produce(settings, second)
        keys = {(e.asset_id, e.ts_ms) for e in second}
        wait_for(lambda: follower.service.published - before >= len(second), 90, "the second part")
        follower.stop()
    finally:
        for m in members:
            m.halt()

    valued = [json.loads(r.value) for r in read_topic(settings, t.valuations, timeout_s=30)]
    later = [v for v in valued if (v["asset_id"], v["ts"]) in keys]
    assert {(v["asset_id"], v["ts"]) for v in later} == keys
    wrong = [v for v in later if v["cluster"] != group_id[panel.truth[v["asset_id"]]]]
    assert not wrong, f"{len(wrong)} valuations in another cluster after the takeover: {wrong[:3]}"
    # No warming relapse: the follower rebuilt the taken-over assets' windows from their
    # partitions' records before the committed offset (consumer.takeover_lookback), so the
    # model values them from their first event in the new process.
    relapsed = [v for v in later if v["asset_id"] in taken and v["warming"]]
    assert not relapsed, f"{len(relapsed)} warming valuations after the takeover: {relapsed[:3]}"
    assert {v["asset_id"] for v in later} >= taken
    assert 0 < follower.service.takeover_records <= len(first)
    got = follower.metrics.registry.get_sample_value
    assert got("streamval_takeover_records_total") == follower.service.takeover_records
    assert got("streamval_takeovers_total") >= 1
    assert got("streamval_takeover_seconds_total") > 0

    shared = [
        SharedClustering.from_json(r.value)
        for r in read_topic(settings, settings.clusterings_topic(), timeout_s=10)
    ]
    assert shared and all(s.owner == "a" or s.owner == "b" for s in shared)
    assert [s.version for s in shared] == list(range(1, len(shared) + 1))
    assert sorted(shared[-1].ids) == sorted(group_id.values())

    snapshots = read_topic(settings, t.metrics, timeout_s=10)
    keys_by_instance: dict[str, set[bytes]] = {}
    for r in snapshots:
        body = json.loads(r.value)
        if body.get("kind") == "snapshot":
            assert r.key == f"{body['instance']}/{body['cluster']}".encode()
            keys_by_instance.setdefault(body["instance"], set()).add(r.key)
    assert set(keys_by_instance) == {"a", "b"}
    assert (
        owner.metrics.registry.get_sample_value(
            "streamval_instance_info",
            {"instance_id": owner.service.instance, "group": settings.consumer.group_id},
        )
        == 1.0
    )


def test_foreign_and_damaged_clusterings_are_ignored_and_the_latest_valid_one_used(
    kafka_settings: Settings,
) -> None:
    settings = configure(kafka_settings)
    t = settings.topics
    topic = settings.clusterings_topic()
    ensure_topics(settings, [t.input, t.dlq, t.valuations, t.metrics, topic])
    panel = grouped_panel(THREE_GROUPS, 6, 30, seed=1, t0_ms=T0, attributes=True)
    # A clustering fitted elsewhere, published as version 5 between damaged messages.
    fitter = Engine(settings.engine)
    fitter.process(panel.events)
    fitter.refit()
    fitter.close()
    valid = fitter.export_clustering(version=5, owner="elsewhere")
    assert valid is not None
    producer = make_producer(settings)
    for key, value in (
        (b"clustering", b"\x00garbage"),
        (b"clustering", valid.to_json()),
        (b"clustering", b'{"format": "someone-else/2"}'),
        (b"other", None),
    ):
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    produce(settings, panel.events)

    metrics = EngineMetrics()
    service = ValuationService(settings, metrics=metrics, instance="solo")
    service.run(max_idle_polls=6)

    assert service.published == len(panel.events)
    engine = service.engine
    assert engine.clustering_version == 5 and engine.clusters == sorted(valid.ids)
    rejected = metrics.registry.get_sample_value(
        "streamval_clusterings_rejected_total", {"reason": "invalid"}
    )
    assert rejected == 3
    assert metrics.registry.get_sample_value("streamval_clustering_version") == 5
    clusters = {json.loads(r.value)["cluster"] for r in read_topic(settings, t.valuations)}
    assert clusters <= set(valid.ids)
    # The only member owns partition 0, so it owns the clustering: it adopted version 5 and
    # would re-fit from there (none was due here), never back to the provisional cluster.
    assert engine.fits_clustering and engine.clustering_fits == 0
