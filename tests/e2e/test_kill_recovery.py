"""`kill -9` of `streamval run` loses no valuation and no learning beyond the last checkpoint:
after a restart every input event has a valuation, and the restarted engine resumes from the
checkpointed state (its model versions continue instead of starting over)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.integration.streams import regime_change

from streamval.config import EngineSettings, Settings
from streamval.consumers.checkpoint import CheckpointStore
from streamval.engine import Engine
from streamval.stream.kafka.clients import make_producer
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T0 = 1_600_000_000_000
ENGINE = EngineSettings(hidden=[16, 8], seq_len=6, bootstrap_assets=12, min_history=8)


def start_engine(
    settings: Settings, ckpt: Path, log: Path, instance_id: str | None
) -> subprocess.Popen[bytes]:
    t = settings.topics
    sets: dict[str, object] = {
        "topics.input": t.input,
        "topics.dlq": t.dlq,
        "topics.valuations": t.valuations,
        "topics.metrics": t.metrics,
        "consumer.group_id": settings.consumer.group_id,
    }
    engine = ENGINE.model_dump(include={"hidden", "seq_len", "bootstrap_assets", "min_history"})
    sets.update({f"engine.{k}": v for k, v in engine.items()})
    args = [f"{k}={json.dumps(v)}" for k, v in sets.items()] + [
        "consumer.max_poll_records=50",
        "consumer.checkpoint_interval_s=1",
        "monitoring.enabled=false",
    ]
    cmd = [
        sys.executable,
        "-m",
        "streamval.cli",
        "run",
        "--checkpoint-dir",
        str(ckpt),
        "--bootstrap-servers",
        str(settings.kafka.bootstrap_servers),
    ]
    for kv in args:
        cmd += ["--set", kv]
    if instance_id is not None:
        cmd += ["--instance-id", instance_id]
    with log.open("ab") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def valuation_keys(
    settings: Settings, expected: int, timeout_s: float = 90
) -> set[tuple[str, int]]:
    records = read_topic(
        settings, settings.topics.valuations, expected=expected, timeout_s=timeout_s
    )
    return {(body["asset_id"], body["ts"]) for body in (json.loads(m.value) for m in records)}


# Static membership (KIP-345): the restarted member takes over its old assignment at once
# instead of waiting for the dead member's session to expire (45 s by default).
@pytest.mark.parametrize("instance_id", [None, "engine-1"], ids=["dynamic", "static"])
def test_kill_9_then_restart(
    kafka_settings: Settings, tmp_path: Path, instance_id: str | None
) -> None:
    settings = kafka_settings
    ensure_topics(settings)
    events = regime_change(60, t0_ms=T0, shift_step=1000)
    first, second = events[: len(events) // 2], events[len(events) // 2 :]
    producer = make_producer(settings)

    def send(batch: list) -> None:
        for e in batch:
            producer.send(settings.topics.input, key=e.asset_id.encode(), value=e.to_bytes())
        producer.flush()

    ckpt = tmp_path / "ckpt"
    log = tmp_path / "engine.log"
    send(first)
    engine = start_engine(settings, ckpt, log, instance_id)
    try:
        assert len(valuation_keys(settings, len(first))) == len(first), log.read_text()[-2000:]
        deadline = time.monotonic() + 30
        while not (ckpt / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        send(second[:100])  # some events in flight when the process dies
        time.sleep(0.5)
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=30)
    before = CheckpointStore(ckpt).load()
    assert before is not None
    versions_before = _model_versions(before.engine)

    send(second[100:])
    producer.close()
    engine = start_engine(settings, ckpt, log, instance_id)
    restarted = time.monotonic()
    try:
        keys = valuation_keys(settings, len(events))
        took = time.monotonic() - restarted
        print(f"{instance_id or 'dynamic'} membership: all valued {took:.1f} s after the restart")
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=60) == 0, log.read_text()[-2000:]
    assert keys == {(e.asset_id, e.ts_ms) for e in events}  # no valuation lost
    after = CheckpointStore(ckpt).load()
    assert after is not None
    versions_after = _model_versions(after.engine)
    assert versions_before and all(versions_after[c] >= v for c, v in versions_before.items())
    assert os.path.getsize(ckpt / "checkpoint.pt") > 0


def _model_versions(state: dict) -> dict[int, int]:
    """Model version (optimizer updates) per cluster of a checkpointed engine state."""
    engine = Engine(ENGINE)
    engine.load_state_dict(state)
    return {snap.cluster: snap.model_version for snap in engine.snapshot()}
