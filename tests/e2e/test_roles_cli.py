"""`streamval run --role valuer` and `streamval run --role learner` as two processes: the
learner trains on the valuer's samples and publishes models, the valuer values every event and
serves the learner's models; the learner's /metrics serves its clusters' series, the valuer's
none."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.prom import free_port
from tests.integration.test_scaleout import T0, produce

from streamval.config import Settings
from streamval.consumers.learning import decode_model
from streamval.stream.datasets.synthetic import DAY_MS, THREE_GROUPS, grouped_panel
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def start(
    settings: Settings, role: str, log: Path, idle_polls: int, port: int
) -> subprocess.Popen[bytes]:
    t = settings.topics
    sets = {
        "topics.input": t.input,
        "topics.dlq": t.dlq,
        "topics.valuations": t.valuations,
        "topics.metrics": t.metrics,
        "topics.partitions": 3,
        "consumer.group_id": settings.consumer.group_id,
        "consumer.poll_timeout_ms": 250,
        "engine.n_clusters": 1,
        "engine.hidden": [8],
        "engine.seq_len": 6,
        "consumer.metrics_interval_s": 1.0,
        "monitoring.enabled": True,
        "monitoring.port": port,
    }
    cmd = [sys.executable, "-m", "streamval.cli", "run", "--role", role]
    cmd += ["--bootstrap-servers", str(settings.kafka.bootstrap_servers)]
    cmd += ["--exit-when-idle", str(idle_polls)]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    with log.open("ab") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Name -> labels -> value of what http://127.0.0.1:port/metrics serves now ({} if down)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def models_on_topic(settings: Settings) -> list[tuple[int, int]]:
    """(cluster, version) of every record on the models topic, in order."""
    out = []
    for record in read_topic(settings, settings.models_topic(), timeout_s=30):
        model = decode_model(record.value)
        out.append((model.cluster, model.version))
    return out


def test_a_valuer_and_a_learner_process_split_the_work(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings.model_copy(
        update={"topics": kafka_settings.topics.model_copy(update={"partitions": 3})}
    )
    t = settings.topics
    ensure_topics(
        settings,
        [
            t.input,
            t.dlq,
            t.valuations,
            t.metrics,
            settings.training_samples_topic(),
            settings.models_topic(),
        ],
    )
    panel = grouped_panel(THREE_GROUPS, 5, 50, seed=2, t0_ms=T0, attributes=False)
    split = T0 + 30 * DAY_MS
    first = [e for e in panel.events if e.ts_ms < split]
    second = [e for e in panel.events if e.ts_ms >= split]
    produce(settings, first)
    log = tmp_path / "roles.log"
    learner_port, valuer_port = free_port(), free_port()
    learner = start(settings, "learner", log, 60, learner_port)
    valuer = start(settings, "valuer", log, 60, valuer_port)
    learned: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    valuing: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    try:
        deadline = time.monotonic() + 120
        while not models_on_topic(settings):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            assert learner.poll() is None and valuer.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        time.sleep(3)  # the valuer serves the snapshot from its next loop iteration
        produce(settings, second)
        deadline = time.monotonic() + 120
        while not learned.get("streamval_cluster_mae"):  # the next snapshot interval
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
            learned, valuing = scrape(learner_port), scrape(valuer_port)
        assert valuer.wait(timeout=180) == 0, log.read_text()[-3000:]
        assert learner.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        for process in (valuer, learner):
            if process.poll() is None:
                process.kill()
                process.wait()
    out = [json.loads(r.value) for r in read_topic(settings, t.valuations, timeout_s=30)]
    keys = {(e.asset_id, e.ts_ms) for e in panel.events}
    assert {(v["asset_id"], v["ts"]) for v in out} == keys
    summary = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"role": "learner"' in line
    ]
    assert summary and summary[0]["trained"] > 0 and summary[0]["published"] > 0
    models = models_on_topic(settings)
    versions = [v for c, v in models if c == 0]
    assert len(versions) == summary[0]["published"] and versions == sorted(versions)
    later = [v for v in out if v["ts"] >= split + 6 * DAY_MS]
    assert later and all(v["model_version"] > 0 for v in later)
    assert {v["model_version"] for v in later} <= set(versions)
    # Per-cluster series from the cluster's owner: the learner serves them, the valuer does not
    # (its valuations by cluster are its own count); both serve their process series.
    assert learned["streamval_cluster_mae"][(("cluster", "0"), ("window", "total"))] > 0
    assert learned["streamval_cluster_error_samples"][(("cluster", "0"), ("window", "total"))] > 0
    assert learned["streamval_learner_samples_trained_total"][()] > 0
    assert learned["streamval_instance_info"]
    assert valuing["streamval_events_consumed_total"]
    cluster_series = {
        name for name, series in valuing.items() if any("cluster" in dict(k) for k in series)
    }
    published = {"streamval_valuations_published_total", "streamval_valuations_published_created"}
    assert cluster_series <= published, cluster_series
    # The metrics topic holds the learner's snapshots, keyed by cluster.
    snapshots = [
        (r.key, json.loads(r.value)) for r in read_topic(settings, t.metrics, timeout_s=30)
    ]
    assert [k for k, v in snapshots if v.get("kind") == "snapshot"]
    assert {k for k, v in snapshots if v.get("kind") == "snapshot"} == {b"0"}
