"""A deployment of 3 valuers and 2 learners (`streamval run --role valuer|learner`, real
processes) on a 6-partition input; `kill -9` of one valuer and one learner mid-stream. Every
event is valued at least once with at most 1 % duplicates (at-least-once), each asset keeps one
cluster id whichever process values it, each cluster's model version advances on samples from
every input partition, and the assets taken over are valued by the model from their first event
in the new process (no warming relapse: the takeover read rebuilt their windows)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_scaleout import T0, produce

from streamval.config import Settings
from streamval.consumers.learning import decode_model, decode_samples
from streamval.models.shared import SharedClustering
from streamval.stream.datasets.synthetic import DAY_MS, THREE_GROUPS, grouped_panel
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 6
PER_GROUP = 8  # 24 assets, each group on every partition
STEPS = 90
FIRST = 30  # days before the mid-stream part
KILL_AT = 45  # the kills come while this day of the stream is being produced


def start(settings: Settings, role: str, log: Path) -> subprocess.Popen[bytes]:
    t = settings.topics
    sets: dict[str, Any] = {
        "topics.input": t.input,
        "topics.dlq": t.dlq,
        "topics.valuations": t.valuations,
        "topics.metrics": t.metrics,
        "topics.partitions": PARTITIONS,
        "consumer.group_id": settings.consumer.group_id,
        "consumer.poll_timeout_ms": 200,
        "consumer.max_poll_records": 10,
        "consumer.metrics_interval_s": 2.0,
        "consumer.profile_interval_s": 0.5,
        "consumer.rejoin_after_s": 20.0,  # kafka-python may stay outside its group
        "engine.hidden": [8],
        "engine.seq_len": 6,
        "engine.min_history": 8,
        "engine.bootstrap_assets": 12,
        "engine.batch_size": 16,
        "engine.refit_on_drift": False,  # one clustering version: ids comparable throughout
        # A killed member's partitions move after 6 s (the broker's minimum), not 45 s.
        "kafka.consumer": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
        "monitoring.enabled": False,
        "logging.format": "json",
    }
    cmd = [sys.executable, "-m", "streamval.cli", "run", "--role", role]
    cmd += ["--bootstrap-servers", str(settings.kafka.bootstrap_servers)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    with log.open("ab") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def logged(log: Path, msg: str) -> list[dict[str, Any]]:
    return [line for line in lines(log) if line.get("msg", "").startswith(msg)]


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in logs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.5)


def latest_versions(settings: Settings) -> dict[int, int]:
    """Each cluster's latest model version on the models topic."""
    out: dict[int, int] = {}
    for r in read_topic(settings, settings.models_topic(), timeout_s=5):
        model = decode_model(r.value)
        out[model.cluster] = max(out.get(model.cluster, 0), model.version)
    return out


def partitions_of(log: Path) -> set[int]:
    """The partitions a valuer holds now, from its log."""
    held: set[int] = set()
    for line in lines(log):
        if line.get("msg") == "partitions assigned":
            held = set(line["partitions"])  # eager rebalances: each assignment is complete
    return held


def test_three_valuers_two_learners_kill_9_of_one_of_each(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(
        update={"topics": kafka_settings.topics.model_copy(update={"partitions": PARTITIONS})}
    )
    t = settings.topics
    samples_topic, models_topic = settings.training_samples_topic(), settings.models_topic()
    ensure_topics(
        settings,
        [
            t.input,
            t.dlq,
            t.valuations,
            t.metrics,
            samples_topic,
            models_topic,
            settings.clusterings_topic(),
            settings.profiles_topic(),
        ],
    )
    panel = grouped_panel(
        THREE_GROUPS, PER_GROUP, STEPS, seed=3, t0_ms=T0, attributes=True, attribute_noise=0.1
    )
    names = sorted(panel.truth)
    where = {n: i % PARTITIONS for i, n in enumerate(names)}  # every group on every partition
    day = {e.ts_ms: (e.ts_ms - T0) // DAY_MS for e in panel.events}
    by_day: dict[int, list[Any]] = {}
    for e in panel.events:
        by_day.setdefault(day[e.ts_ms], []).append(e)

    logs = {name: tmp_path / f"{name}.log" for name in ("v0", "v1", "v2", "l0", "l1")}
    procs = {
        name: start(settings, "learner" if name[0] == "l" else "valuer", log)
        for name, log in logs.items()
    }
    all_logs = list(logs.values())
    valuers = ("v0", "v1", "v2")

    def learning(learner: str) -> set[int]:
        return {line["cluster"] for line in logged(logs[learner], "learning a cluster")}

    def stream(days: range) -> None:
        """One day of the stream every 0.1 s."""
        for d in days:
            produce(settings, by_day[d], where)
            time.sleep(0.1)

    try:
        # The valuers split the 6 partitions, two each.
        wait_for(
            lambda: (
                sorted(p for v in valuers for p in partitions_of(logs[v]))
                == list(range(PARTITIONS))
                and all(len(partitions_of(logs[v])) == 2 for v in valuers)
            ),
            180,  # five processes importing torch on a loaded machine
            "the valuers to split the input",
            all_logs,
        )
        produce(settings, [e for d in range(FIRST) for e in by_day[d]], where)
        wait_for(
            lambda: sum(bool(logged(logs[v], "adopted clustering")) for v in valuers) >= 2,
            120,
            "the clustering fitted and adopted by both followers",
            all_logs,
        )
        stream(range(FIRST, KILL_AT))
        wait_for(
            lambda: len(learning("l0") | learning("l1")) >= 3,
            60,
            "the learners to learn every cluster",
            all_logs,
        )
        # Mid-stream, kill -9 of one valuer (not the clustering's owner) and of the learner
        # with the most clusters; the stream goes on.
        victim = next(v for v in ("v1", "v2", "v0") if 0 not in partitions_of(logs[v]))
        busy = max(("l0", "l1"), key=lambda x: len(learning(x)))
        for name in (victim, busy):
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait(timeout=30)
        at_kill = latest_versions(settings)
        stream(range(KILL_AT, STEPS))
        taken = {n for n, p in where.items() if p in partitions_of(logs[victim])}
        survivors = [v for v in valuers if v != victim]
        survivor = next(x for x in ("l0", "l1") if x != busy)
        keys = {(e.asset_id, e.ts_ms) for e in panel.events}

        def valued() -> set[tuple[str, int]]:
            records = read_topic(settings, t.valuations, timeout_s=5)
            return {(b["asset_id"], b["ts"]) for b in (json.loads(r.value) for r in records)}

        wait_for(lambda: valued() >= keys, 120, "every event valued", all_logs)
        # The surviving learner takes the dead one's clusters (after its session timeout),
        # restores them from the models topic and trains on: every version moves past the kill.
        wait_for(
            lambda: all(
                latest_versions(settings).get(c, 0) > at_kill.get(c, 0)
                for c in learning("l0") | learning("l1")
            ),
            90,
            "every cluster's model to advance after the learner's kill",
            all_logs,
        )
        for name in (*survivors, survivor):
            procs[name].send_signal(signal.SIGTERM)
        for name in (*survivors, survivor):
            assert procs[name].wait(timeout=60) == 0, logs[name].read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    out = [json.loads(r.value) for r in read_topic(settings, t.valuations, timeout_s=30)]
    counts = Counter((v["asset_id"], v["ts"]) for v in out)
    assert set(counts) == keys  # every event valued at least once
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates <= 0.01 * len(keys), duplicates

    # One clustering version throughout, so ids are comparable across processes and time.
    shared = [
        SharedClustering.from_json(r.value)
        for r in read_topic(settings, settings.clusterings_topic(), timeout_s=10)
    ]
    assert [s.version for s in shared] == [1]
    # Each asset keeps one cluster id after the clustering, whichever process values it: the
    # mid-stream part, valued by the victim before the kill and by a survivor after it.
    later = [v for v in out if day[v["ts"]] >= FIRST]
    ids: dict[str, set[int]] = {}
    for v in later:
        ids.setdefault(v["asset_id"], set()).add(v["cluster"])
    assert all(len(c) == 1 for c in ids.values()), {a: c for a, c in ids.items() if len(c) > 1}
    by_group: dict[int, set[int]] = {}
    for a, c in ids.items():
        by_group.setdefault(panel.truth[a], set()).update(c)
    assert all(len(c) == 1 for c in by_group.values()), by_group
    assert sorted(c for g in by_group.values() for c in g) == sorted(shared[0].ids)

    # No warming relapse: the windows were full before the kill, and the survivors rebuilt
    # the taken-over assets' windows from their partitions' records before the committed
    # offset, so the model values them from their first event in the new process.
    assert taken and {a for a, _ in keys} >= taken
    relapsed = [v for v in later if v["warming"]]
    assert not relapsed, f"{len(relapsed)} warming valuations: {relapsed[:3]}"
    takeovers = [line for v in survivors for line in logged(logs[v], "took over partitions")]
    assert takeovers and sum(line["records"] for line in takeovers) > 0
    moved = {int(p) for line in takeovers for p in line["partitions"]}
    assert moved >= {where[a] for a in taken}

    # Cluster-owned learning: every labelled model valuation of a cluster, from every input
    # partition, sent one sample to its learner (duplicates of re-valued events included) ...
    labelled: Counter[int] = Counter()
    partitions_of_cluster: dict[int, set[int]] = {}
    for v in out:
        if not v["warming"] and v["value"] is not None:
            labelled[v["cluster"]] += 1
            partitions_of_cluster.setdefault(v["cluster"], set()).add(where[v["asset_id"]])
    sent: Counter[int] = Counter()
    for r in read_topic(settings, samples_topic, timeout_s=10):
        block = decode_samples(r.value)
        sent[block.cluster] += len(block)
    for c in shared[0].ids:
        assert partitions_of_cluster[c] == set(range(PARTITIONS)), (c, partitions_of_cluster)
        assert 0.9 * labelled[c] <= sent[c] <= labelled[c] + 20, (c, sent, labelled)
    # ... and each cluster's model versions only went up, past the learner's kill (waited
    # for above): the survivor restored the cluster from the models topic and trained on.
    models: dict[int, list[int]] = {}
    for r in read_topic(settings, models_topic, timeout_s=10):
        model = decode_model(r.value)
        models.setdefault(model.cluster, []).append(model.version)
    for c in shared[0].ids:
        versions = models[c]
        assert versions == sorted(versions), (c, versions)
        assert versions[-1] > at_kill.get(c, 0)
    assert learning(survivor) >= set(shared[0].ids)  # it owns every cluster by the end
    restored = {
        line["cluster"]
        for line in logged(logs[survivor], "learning a cluster")
        if line["from"] == "models topic"
    }
    # The dead learner's published clusters continued from their snapshots, not afresh.
    assert {c for c in learning(busy) if at_kill.get(c, 0) > 0} <= restored, restored
