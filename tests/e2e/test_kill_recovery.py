"""`kill -9` of `streamval run` loses no valuation and no learning beyond the last checkpoint:
after a restart every input event has a valuation, and the restarted engine resumes from the
checkpointed state (its model versions continue instead of starting over). In exactly-once mode
the restarted process, with the same --instance-id, fences the dead one's transaction at once:
read_committed readers see exactly one valuation per event. Unusable checkpoints stop
`streamval run` with the problem named and run no code."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tests.integration.streams import regime_change

from streamval.config import EngineSettings, Settings
from streamval.consumers.checkpoint import CHECKPOINT_FILE, CheckpointMeta, CheckpointStore
from streamval.engine import Engine
from streamval.stream.kafka.clients import make_producer
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T0 = 1_600_000_000_000
ENGINE = EngineSettings(hidden=[16, 8], seq_len=6, bootstrap_assets=12, min_history=8)


def start_engine(
    settings: Settings,
    ckpt: Path | None,
    log: Path,
    instance_id: str | None,
    *extra: str,
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
    if instance_id is None:
        # A dynamic member that restarts waits for the dead one's session to expire: 10 s
        # here instead of kafka-python's default 45 s keeps the test short.
        sets["kafka.consumer"] = {"session_timeout_ms": 10_000}
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
        "--bootstrap-servers",
        str(settings.kafka.bootstrap_servers),
        *extra,
    ]
    if ckpt is not None:
        cmd += ["--checkpoint-dir", str(ckpt)]
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
        while not (ckpt / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        send(second[:100])  # some events in flight when the process dies
        time.sleep(0.5)
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=30)
    before = CheckpointStore(ckpt).load()
    assert before is not None
    versions_before = _model_versions(before.state)

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
    versions_after = _model_versions(after.state)
    assert versions_before and all(versions_after[c] >= v for c, v in versions_before.items())
    assert os.path.getsize(ckpt / CHECKPOINT_FILE) > 0


def _model_versions(state: dict) -> dict[int, int]:
    """Model version (optimizer updates) per cluster of a checkpointed engine state."""
    engine = Engine(ENGINE)
    engine.load_state_dict(state)
    return {snap.cluster: snap.model_version for snap in engine.snapshot()}


def test_exactly_once_kill_9_then_restart_fences_and_goes_on(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Issue 10 item 6: the transactional id comes from --instance-id, so the restarted process
    fences the dead one's open transaction and continues; read_committed readers see each event
    valued exactly once."""
    settings = kafka_settings
    ensure_topics(settings)
    events = regime_change(40, t0_ms=T0, shift_step=1000)
    producer = make_producer(settings)
    for e in events[: len(events) // 2]:
        producer.send(settings.topics.input, key=e.asset_id.encode(), value=e.to_bytes())
    producer.flush()
    log = tmp_path / "engine.log"
    engine = start_engine(settings, None, log, "eos-1", "--exactly-once")
    try:
        assert len(valuation_keys(settings, len(events) // 4)) >= len(events) // 4
        for e in events[len(events) // 2 :]:
            producer.send(settings.topics.input, key=e.asset_id.encode(), value=e.to_bytes())
        producer.flush()
        time.sleep(0.3)  # mid-transaction
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=30)
    producer.close()
    engine = start_engine(settings, None, log, "eos-1", "--exactly-once")
    try:
        records = read_topic(
            settings, settings.topics.valuations, expected=len(events), timeout_s=120
        )
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=60) == 0, log.read_text()[-3000:]
    keys = Counter((b["asset_id"], b["ts"]) for b in (json.loads(m.value) for m in records))
    assert keys == Counter((e.asset_id, e.ts_ms) for e in events), log.read_text()[-3000:]


class Payload:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/streamval-pwned-e2e"


def run_cli(settings: Settings, ckpt: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    t = settings.topics
    cmd = [
        sys.executable,
        "-m",
        "streamval.cli",
        "run",
        "--bootstrap-servers",
        str(settings.kafka.bootstrap_servers),
        "--checkpoint-dir",
        str(ckpt),
        "--exit-when-idle",
        "2",
        "--set",
        f"topics.input={t.input}",
        "--set",
        f"consumer.group_id={settings.consumer.group_id}",
        "--set",
        "monitoring.enabled=false",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def test_a_crafted_checkpoint_stops_streamval_run_and_runs_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(kafka_settings)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    Path(MARKER).unlink(missing_ok=True)
    for name in (CHECKPOINT_FILE, "checkpoint.pt"):
        (ckpt / name).write_bytes(pickle.dumps(Payload()))
        result = run_cli(kafka_settings, ckpt)
        assert result.returncode == 2, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("streamval: error: ") and "checkpoint" in last
        assert "--discard-checkpoint" in last and "Traceback" not in result.stderr
        (ckpt / name).unlink()
    assert not Path(MARKER).exists()


def test_a_valid_checkpoint_carrying_a_pickle_payload_runs_no_code(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """A checkpoint in the right format, checksum and metadata correct, whose engine state holds
    a pickle payload as an array of bytes wherever the engine keeps arrays: the engine must
    treat it as numbers (or refuse it), never unpickle it."""
    settings = kafka_settings
    ensure_topics(settings)
    engine = Engine(ENGINE)
    engine.process(regime_change(20, t0_ms=T0, shift_step=1000))
    payload = np.frombuffer(pickle.dumps(Payload()), dtype=np.uint8)

    def poison(node: object) -> object:
        if isinstance(node, dict):
            return {k: poison(v) for k, v in node.items()}
        if isinstance(node, list):
            return [poison(v) for v in node]
        if isinstance(node, np.ndarray) or type(node).__name__ == "Tensor":
            return payload.copy()
        if isinstance(node, str) and len(node) > 8:
            return pickle.dumps(Payload()).decode("latin-1")
        return node

    ckpt = tmp_path / "ckpt"
    meta = CheckpointMeta(
        settings.consumer.group_id, settings.topics.input, settings.topics.partitions
    )
    CheckpointStore(ckpt).save(poison(engine.state_dict()), meta)  # type: ignore[arg-type]
    Path(MARKER).unlink(missing_ok=True)
    result = run_cli(settings, ckpt)
    assert not Path(MARKER).exists(), "a checkpoint ran code"
    assert result.returncode == 2 and "checkpoint" in result.stderr.strip().splitlines()[-1]


def test_a_broker_unreachable_at_start_is_one_clear_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamval.cli", "run", "--bootstrap-servers", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("streamval: error:")]
    assert "cannot reach the Kafka cluster at 127.0.0.1:1" in line and "broker runs" in line
