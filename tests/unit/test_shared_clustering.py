"""One clustering for several engines: the message round-trips, followers assign like the owner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.models.shared import FORMAT, AssetProfile, SharedClustering
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

SMALL = {"hidden": [8], "batch_size": 16, "training": "sync", "bootstrap_assets": 12}


def _halves(steps: int = 60) -> tuple[list, list, dict[str, int]]:
    """Three groups of assets; the events of even- and odd-numbered assets (two partitions)."""
    panel = grouped_panel(THREE_GROUPS, 10, steps, seed=0, attributes=True, attribute_noise=0.1)
    names = sorted({e.asset_id for e in panel.events})
    even = {n for i, n in enumerate(names) if i % 2 == 0}
    a = [e for e in panel.events if e.asset_id in even]
    b = [e for e in panel.events if e.asset_id not in even]
    return a, b, panel.truth


def _run(engine: Engine, events: list) -> None:
    for i in range(0, len(events), 60):
        engine.process(events[i : i + 60])


def test_message_round_trips_through_json() -> None:
    a, _, _ = _halves()
    owner = Engine(EngineSettings(**SMALL))
    _run(owner, a)
    shared = owner.export_clustering(version=7, owner="p1")
    assert shared is not None
    back = SharedClustering.from_json(shared.to_json())
    assert (back.version, back.owner, back.ids, back.next_id) == (7, "p1", shared.ids, 3)
    np.testing.assert_array_equal(back.centroids, shared.centroids)
    assert shared.spread is not None and back.spread is not None
    np.testing.assert_array_equal(back.spread, shared.spread)
    for name, value in shared.space.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(back.space[name], value)
        else:
            assert back.space[name] == value
    assert back.parents == shared.parents


def test_unfitted_engine_exports_nothing() -> None:
    assert Engine(EngineSettings(**SMALL)).export_clustering(version=1, owner="x") is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"format": "other/1"}',
        json.dumps({"format": FORMAT, "version": 1}).encode(),
    ],
)
def test_malformed_messages_raise_value_error(value: bytes | None) -> None:
    with pytest.raises(ValueError):
        SharedClustering.from_json(value)


def test_wrong_sizes_and_values_are_refused() -> None:
    a, _, _ = _halves()
    owner = Engine(EngineSettings(**SMALL))
    _run(owner, a)
    shared = owner.export_clustering(version=1, owner="p1")
    assert shared is not None
    good = json.loads(shared.to_json())
    for change in (
        lambda b: b["centroids"].pop(),
        lambda b: b["centroids"][0].append(1.0),
        lambda b: b["space"]["mean"].pop(),
        lambda b: b.update(next_id=0),
        lambda b: b.update(ids=[0, 0, 1]),
        lambda b: b.update(version="x"),
        lambda b: b.update(version=True),
        lambda b: b["space"]["scale"].__setitem__(0, float("nan")),
        lambda b: b["spread"].pop(),
        lambda b: b["spread"][0].__setitem__(0, 0.0),
    ):
        body = json.loads(json.dumps(good))
        change(body)
        with pytest.raises(ValueError):
            SharedClustering.from_json(json.dumps(body).encode())


def test_follower_assigns_every_asset_like_the_owner_and_never_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, truth = _halves()
    owner = Engine(EngineSettings(**SMALL))
    follower = Engine(EngineSettings(**SMALL))
    follower.fits_clustering = False
    fit_calls: list[int] = []
    fit = follower._fit
    monkeypatch.setattr(follower, "_fit", lambda: fit_calls.append(1) or fit())
    _run(owner, a)
    _run(follower, b)
    assert owner.fitted and not follower.fitted and follower.clustering_fits == 0
    assert not fit_calls  # no fit is even scheduled (it would cut every segment short)
    shared = owner.export_clustering(version=1, owner="owner")
    assert shared is not None
    follower.adopt_clustering(SharedClustering.from_json(shared.to_json()))
    assert follower.fitted and follower.clusters == owner.clusters
    assert follower.clustering_version == 1
    # The same asset valued by either engine lands in the same cluster id: the follower's
    # assets against the truth, via the owner's ids of the same group.
    group_id = {truth[n]: c for n, c in owner.assignments().items()}
    assert len(group_id) == 3
    for name, cluster in follower.assignments().items():
        assert cluster == group_id[truth[name]], name
    # A takeover: the owner gets the follower's assets (new to it) and agrees on every one.
    _run(owner, b)
    got = owner.assignments()
    for name, cluster in follower.assignments().items():
        assert got[name] == cluster, name
    assert follower.clustering_fits == 0


def test_follower_keeps_models_across_versions_and_forks_new_clusters() -> None:
    a, b, _ = _halves()
    owner = Engine(EngineSettings(**SMALL))
    follower = Engine(EngineSettings(**SMALL))
    follower.fits_clustering = False
    _run(owner, a)
    _run(follower, b)
    first = owner.export_clustering(version=1, owner="o")
    assert first is not None
    follower.adopt_clustering(first)
    version = {c: follower.snapshot()[i].model_version for i, c in enumerate(follower.clusters)}
    # A later version with one cluster more (as a re-fit would add): its model is a copy of
    # the parent's, the others keep theirs.
    extra = SharedClustering(
        version=2,
        owner="o",
        ids=[*first.ids, first.next_id],
        centroids=np.vstack([first.centroids, first.centroids[:1] + 100.0]),
        next_id=first.next_id + 1,
        space=first.space,
        parents={**first.parents, first.next_id: first.ids[0]},
    )
    follower.adopt_clustering(extra)
    assert follower.clusters == [*first.ids, first.next_id]
    snaps = {s.cluster: s for s in follower.snapshot()}
    for c, v in version.items():
        assert snaps[c].model_version == v
    assert snaps[first.next_id].model_version == snaps[first.ids[0]].model_version


def test_profile_message_round_trips_and_refuses_garbage() -> None:
    a, _, _ = _halves()
    engine = Engine(EngineSettings(**SMALL))
    _run(engine, a)
    ready = engine.ready_counts()
    profiles = engine.asset_profiles(ready, "p1")
    assert len(profiles) == len(ready) > 0
    for p in profiles:
        back = AssetProfile.from_json(p.to_json())
        assert (back.asset, back.instance, back.n_values) == (p.asset, "p1", ready[p.asset])
        assert back.attributes == p.attributes
        np.testing.assert_allclose(back.stats, p.stats, equal_nan=True)
        assert back.features.keys() == p.features.keys()
    for bad in (None, b"{}", b"[]", b'{"format": "streamval.profile/1", "asset": "x"}'):
        with pytest.raises(ValueError):
            AssetProfile.from_json(bad)


def test_owner_fits_on_the_other_processes_assets_through_their_profiles() -> None:
    """The owner holds two groups, the follower the third: with the follower's profiles the
    owner's fit finds all three groups, and the follower's assets get their group's cluster."""
    panel = grouped_panel(THREE_GROUPS, 10, 60, seed=0, attributes=True, attribute_noise=0.1)
    mine = [e for e in panel.events if panel.truth[e.asset_id] != 2]
    theirs = [e for e in panel.events if panel.truth[e.asset_id] == 2]
    follower = Engine(EngineSettings(**SMALL))
    follower.fits_clustering = False
    _run(follower, theirs)
    for with_profiles in (False, True):
        owner = Engine(EngineSettings(**{**SMALL, "bootstrap_assets": 30}))
        if with_profiles:
            owner.profile_source = lambda: follower.asset_profiles(follower.ready_counts(), "f")
        _run(owner, mine)
        assert not owner.fitted  # 20 assets of its own: below bootstrap_assets
        assert owner.bootstrap_shared() == with_profiles
    shared = owner.export_clustering(version=1, owner="o")
    assert shared is not None
    follower.adopt_clustering(shared)
    group_id = {panel.truth[n]: c for n, c in owner.assignments().items()}
    assert len(set(group_id.values())) == 2  # the owner's own two groups ...
    third = set(follower.assignments().values())
    assert len(third) == 1 and not third & set(group_id.values())  # ... and the third


def test_profiles_due_first_ready_then_after_growth_and_bounded_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamval.config import load_settings
    from streamval.consumers import profiles as module

    sync = module.ProfileSync(load_settings(environ={}), "me")
    assert sync.due({"a": 8, "b": 80}) == ["a", "b"]
    sync._sent.update(a=8, b=80)
    assert sync.due({"a": 15, "b": 89}) == []  # a grew by less than 8, b by less than 1/8
    assert sync.due({"a": 16, "b": 90}) == ["a", "b"]
    monkeypatch.setattr(module, "MAX_PER_INTERVAL", 2)
    assert sync.due({"a": 16, "b": 200, "new": 8}) == ["new", "b"]


def test_profiles_go_out_in_chunks_without_waiting_and_a_refused_one_is_due_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round of due profiles is sent a chunk per call, never flushed on the caller's thread;
    a profile the broker refuses (errback) is due again, a delivered one is not."""
    from kafka.producer.future import FutureProduceResult, FutureRecordMetadata

    from streamval.config import load_settings
    from streamval.consumers import profiles as module

    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, FutureProduceResult]] = []

        def send(self, topic: str, key: bytes, value: bytes) -> FutureRecordMetadata:
            produced = FutureProduceResult(None)
            self.sent.append((key, produced))
            return FutureRecordMetadata(produced, 0, -1, None, len(key), len(value), -1)

        def flush(self, timeout: float | None = None) -> None:
            raise AssertionError("publishing must not wait for the broker")

    producer = Producer()
    sync = module.ProfileSync(load_settings(environ={}), "me")
    sync._producer = producer  # type: ignore[assignment]
    monkeypatch.setattr(module, "CHUNK", 2)
    panel = grouped_panel(THREE_GROUPS, 2, 12, seed=0, attributes=True)
    engine = Engine(EngineSettings(**SMALL))
    _run(engine, panel.events)
    counts = engine.ready_counts()
    assert sync.plan(counts) == len(counts) == 6
    chunks = []
    while chunk := sync.next_chunk():
        chunks.append(chunk)
        sync.publish(engine.asset_profiles(chunk, "me"))
    assert [len(c) for c in chunks] == [2, 2, 2]
    assert sync.due(counts) == []  # sent (not yet acknowledged) counts as sent
    refused = producer.sent[0]
    for _, produced in producer.sent[1:]:
        produced.success((0, 0, -1))
    refused[1].failure(RuntimeError("broker refused"))
    assert sync.due(counts) == [refused[0].decode()]


def test_clustering_sync_logs_a_bad_message_once_and_keeps_the_highest_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streamval.config import load_settings
    from streamval.consumers.clusterings import ClusteringSync

    rejected: list[str] = []
    sync = ClusteringSync(load_settings(environ={}), "me", on_rejected=rejected.append)
    space = Engine(EngineSettings(**SMALL))._space.state_dict()

    def version(v: int) -> bytes:
        return SharedClustering(
            version=v, owner="o", ids=[0], centroids=np.zeros((1, 0)), next_id=1, space=space
        ).to_json()

    with caplog.at_level("WARNING"):
        assert sync.receive(b"garbage") is None
        assert sync.receive(version(2)) is not None
        assert sync.receive(b"more garbage") is None
        assert sync.receive(version(1)) is not None  # older: read, not taken
    assert sync.rejected == 2 and rejected == ["invalid", "invalid"]
    assert len([r for r in caplog.records if "not a usable clustering" in r.getMessage()]) == 1
    latest = sync.latest()
    assert latest is not None and latest.version == 2
