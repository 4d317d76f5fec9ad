"""The monitoring stack for real: Prometheus scrapes `streamval run` (a separate process) while it
consumes a replay (`streamval replay`, another process) through the real broker. Every dashboard
panel query returns data, every alert expression's inputs exist, the live exposition passes
`promtool check metrics`, and the drift alert fires for the cluster of the shocked assets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import TopicPartition
from tests.integration.prom import (
    PrometheusServer,
    Query,
    alert_queries,
    dashboard_queries,
    free_port,
    promtool,
)
from tests.integration.streams import regime_change, to_long_table

from streamval.config import Settings
from streamval.stream.datasets.synthetic import DAY_MS
from streamval.stream.kafka.clients import make_consumer, make_producer
from streamval.stream.kafka.reader import end_offsets, read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus, pytest.mark.slow]

T0 = 1_433_116_800_000  # 2015-06-01: the stream crosses the 2015-08-24 selloff marker
SHIFT_STEP = 70
STEPS = 110
# The engine values ~2,000 events in seconds: a minute without a new valuation means it is stuck.
STALL_S = 60
ENGINE_SETTINGS = [
    "engine.hidden=[16, 8]",
    "engine.seq_len=6",
    "engine.bootstrap_assets=12",
    "engine.min_history=8",
    "engine.batch_size=32",
    "engine.shock_calibration=40",  # 110-step stream, shift at step 70 (default: 250 steps)
    "consumer.max_poll_records=100",
    "consumer.metrics_interval_s=1",
    "consumer.checkpoint_interval_s=2",
]


def cli(settings: Settings, *args: str) -> list[str]:
    t = settings.topics
    topics = [
        f"topics.input={json.dumps(t.input)}",
        f"topics.dlq={json.dumps(t.dlq)}",
        f"topics.valuations={json.dumps(t.valuations)}",
        f"topics.metrics={json.dumps(t.metrics)}",
        f"consumer.group_id={json.dumps(settings.consumer.group_id)}",
    ]
    sets = [x for kv in [*topics, *ENGINE_SETTINGS] for x in ("--set", kv)]
    return [
        sys.executable,
        "-m",
        "streamval.cli",
        *args,
        *sets,
        "--bootstrap-servers",
        str(settings.kafka.bootstrap_servers),
        "--log-format",
        "json",
    ]


def selectors(expr: str) -> list[str]:
    """The metric selectors an alert expression reads (its inputs)."""
    import re

    names = re.findall(r"\b(streamval_[a-z_]+|up)(\{[^}]*\})?", expr)
    return sorted({name + labels for name, labels in names})


@pytest.fixture
def engine_process(
    kafka_settings: Settings, tmp_path: Path
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    log = (tmp_path / "engine.log").open("w")
    proc = subprocess.Popen(
        cli(
            kafka_settings,
            "run",
            "--metrics-port",
            str(port),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
        ),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # {"metrics": url} once serving
        assert first["metrics"].endswith(f":{port}")
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
        assert proc.stdout is not None
        proc.stdout.close()
        assert code == 0, (tmp_path / "engine.log").read_text()[-3000:]


def test_dashboard_and_alerts_against_the_real_engine(
    kafka_settings: Settings, engine_process: tuple[int, subprocess.Popen[str]], tmp_path: Path
) -> None:
    settings = kafka_settings
    engine_port, _ = engine_process
    replay_port = free_port()
    events = regime_change(STEPS, t0_ms=T0, shift_step=SHIFT_STEP)
    table = tmp_path / "events.csv"
    to_long_table(events).to_csv(table, index=False)
    ensure_topics(settings)

    # A few malformed messages so the dead-letter panel has data.
    producer = make_producer(settings)
    for raw in (b"{broken", b'{"asset_id": "A0"}', b"[1]"):
        producer.send(settings.topics.input, key=b"junk", value=raw)
    producer.flush()
    producer.close()

    with PrometheusServer(
        {
            "streamval-engine": [f"127.0.0.1:{engine_port}"],
            "streamval-replay": [f"127.0.0.1:{replay_port}"],
        }
    ) as prom:
        # The replay keeps serving its metrics (--linger) while the checks below run, as a
        # replay job in the compose stack does until Prometheus has scraped its markers.
        replay_log = tmp_path / "replay.log"
        with replay_log.open("w") as replay_stderr:
            replay = subprocess.Popen(
                cli(
                    settings,
                    "replay",
                    "--long",
                    str(table),
                    "--features",
                    "volume",
                    "--attributes",
                    "group",
                    "--markers",
                    "--rate",
                    "1500",
                    "--metrics-port",
                    str(replay_port),
                    "--linger",
                    "300",
                ),
                stdout=subprocess.PIPE,
                stderr=replay_stderr,
                text=True,
            )

        def diagnose() -> str:
            return (
                f"replay exit code: {replay.poll()}\n"
                f"group offsets: {group_offsets(settings)}\n"
                f"replay log:\n{replay_log.read_text()[-2000:]}\n"
                f"engine log:\n{(tmp_path / 'engine.log').read_text()[-6000:]}"
            )

        try:
            check_everything(prom, settings, engine_port, len(events), diagnose)
        finally:
            replay.terminate()
            out, _ = replay.communicate(timeout=30)
        assert f"replayed {len(events)} events" in out, replay_log.read_text()[-3000:]


def topic_records(settings: Settings, topic: str) -> int:
    """Records in `topic` (sum of its end offsets; no transactions, so one offset per record)."""
    return sum(end_offsets(settings, topic).values())


def group_offsets(settings: Settings) -> dict[int, tuple[int | None, int]]:
    """partition -> (the engine group's committed offset, end offset) of the input topic."""
    consumer = make_consumer(settings)  # not subscribed: reads the group's offsets, never joins
    try:
        partitions = [
            TopicPartition(settings.topics.input, p)
            for p in sorted(consumer.partitions_for_topic(settings.topics.input) or ())
        ]
        ends = consumer.end_offsets(partitions)
        return {tp.partition: (consumer.committed(tp), ends[tp]) for tp in partitions}
    finally:
        consumer.close(autocommit=False)


def check_everything(
    prom: PrometheusServer,
    settings: Settings,
    engine_port: int,
    n: int,
    diagnose: Callable[[], str],
) -> None:
    # The engine has valued everything once the valuations topic holds one record per valid
    # event (Kafka is the ground truth: a per-cluster counter of Prometheus is no oracle, as a
    # re-fit that retires a cluster removes its series). A slow machine only makes this slower:
    # fail when the engine stops making progress, not on a clock.
    count, progress = -1, time.monotonic()
    while time.monotonic() - progress < STALL_S:
        valued = topic_records(settings, settings.topics.valuations)
        if valued >= n:
            break
        if valued > count:
            count, progress = valued, time.monotonic()
        time.sleep(1)
    assert valued == n, f"{valued} valuations of {n}, no progress for {STALL_S} s\n{diagnose()}"
    # ... and Prometheus has scraped the engine after its last batch: no lag left anywhere.
    partitions = settings.topics.partitions
    lag = 'streamval_consumer_lag_messages{job="streamval-engine"}'
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = prom.query(f"count({lag}) == {partitions} and sum({lag}) == 0")
        if result:
            break
        time.sleep(1)
    assert result, f"lag in Prometheus: {prom.query(lag)}\n{diagnose()}"

    # Panels are instant queries; annotations are evaluated by Grafana over the dashboard's
    # time range, so they are checked over the last ten minutes.
    # The engine runs in the default role (`all`): the Learners row reads series only a
    # `--role learner` process exports (test_dashboard_queries scrapes one).
    queries = [q for q in dashboard_queries() if "streamval_learner_" not in q.promql]
    panels = [q for q in queries if not q.source.startswith("annotation")]
    empty = prom.queries_without_data(panels, timeout_s=30)
    end = time.time()
    empty += [
        q
        for q in queries
        if q.source.startswith("annotation")
        and not prom.api(
            "query_range", query=q.promql, start=str(end - 600), end=str(end), step="1"
        )["result"]
    ]
    assert not empty, "no data for:\n" + "\n".join(f"{q.source}: {q.promql}" for q in empty)

    inputs = [
        Query(f"{q.source} input {s}", s)
        for q in alert_queries()
        for s in selectors(q.promql)
        if "learner" not in s  # the learner alerts' inputs: as the Learners row above
    ]
    assert len(inputs) >= len(alert_queries())
    missing = prom.queries_without_data(inputs, timeout_s=10)
    assert not missing, "alert inputs without data:\n" + "\n".join(q.promql for q in missing)
    for q in alert_queries():
        prom.query(q.promql)  # evaluates without error

    # The stream splits into clusters (near its end), so the pooled expert starts, and says so.
    pooled = 'streamval_pooled_model_samples{kind="trained"}'
    assert prom.queries_without_data([Query("pooled expert", pooled)], timeout_s=30) == [], (
        f"{prom.query('streamval_pooled_model_samples')}\n{diagnose()}"
    )

    # The drift alert fires for the cluster that holds the shocked group A.
    shocked = shocked_clusters(settings)
    firing = prom.wait_for_alert("StreamvalClusterDrift", timeout_s=30)
    assert {a["labels"]["cluster"] for a in firing} & shocked, (firing, shocked)

    # The live exposition of the engine passes promtool's lint, and the engine is ready.
    base = f"http://127.0.0.1:{engine_port}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        exposition = response.read()
    check = subprocess.run(
        [promtool(), "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
        assert response.status == 200


def shocked_clusters(settings: Settings) -> set[str]:
    """Clusters of group A's valuations after the shift, read back from the valuations topic."""
    out: set[str] = set()
    for m in read_topic(settings, settings.topics.valuations, timeout_s=20):
        body = json.loads(m.value)
        if body["asset_id"].startswith("A") and body["ts"] >= T0 + SHIFT_STEP * DAY_MS:
            out.add(str(body["cluster"]))
    return out
