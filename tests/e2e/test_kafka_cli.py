"""`streamval kafka up|status|down` as a user runs them, in separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamval.stream.kafka.broker import port_open

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def streamval(*args: str, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streamval.cli",
            *args,
            "--set",
            f"broker.home={json.dumps(str(home))}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def test_up_status_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    home = tmp_path / "broker"

    down_before = streamval("kafka", "status", home=home, env=env)
    assert down_before.returncode == 1 and "not running" in down_before.stdout

    up = streamval("kafka", "up", home=home, env=env)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip().splitlines()[0]
    host, port = bootstrap.split(":")
    try:
        assert port_open(host, int(port))
        assert "KAFKA_BOOTSTRAP_SERVERS=" in up.stderr

        again = streamval("kafka", "up", home=home, env=env)  # idempotent: same broker
        assert again.returncode == 0 and again.stdout.strip().splitlines()[0] == bootstrap

        status = streamval("kafka", "status", home=home, env=env)
        assert status.returncode == 0 and f"running at {bootstrap}" in status.stdout
        pid = int(status.stdout.split("pid ")[1].split(",")[0])

        # As `up` suggests, the user exports the address: status and down still act locally.
        exported = {**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        status = streamval("kafka", "status", home=home, env=exported)
        assert status.returncode == 0 and f"running at {bootstrap}" in status.stdout
        assert "is the local broker" in status.stdout
        again = streamval("kafka", "up", home=home, env=exported)
        assert again.returncode == 0 and again.stdout.strip().splitlines()[0] == bootstrap

        topics = streamval("kafka", "topics", home=home, env=env)
        assert topics.returncode == 0
        for name in ("asset-events", "asset-events.dlq", "valuations", "valuation-metrics"):
            assert f"* {name}  partitions=3" in topics.stdout
        for name in ("streamval.training-samples", "streamval.models"):  # the role split's
            assert f"* {name}  partitions=3" in topics.stdout
    finally:
        down = streamval(
            "kafka", "down", home=home, env={**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        )
    assert (
        down.returncode == 0 and "stopped" in down.stdout and "acting on the local" in down.stdout
    )
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not port_open(host, int(port))
    assert streamval("kafka", "status", home=home, env=env).returncode == 1

    # A restart reuses the stored data (no re-format) and the same port.
    up2 = streamval("kafka", "up", "--no-topics", home=home, env=env)
    try:
        assert up2.returncode == 0, up2.stderr
        assert up2.stdout.strip().splitlines()[0] == bootstrap
    finally:
        assert streamval("kafka", "down", "--purge", home=home, env=env).returncode == 0
    assert not home.exists()


def test_external_cluster_means_nothing_to_start(tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9092"}
    result = streamval("kafka", "up", home=tmp_path, env=env)
    assert result.returncode == 0 and "external cluster kafka.example:9092" in result.stdout
    assert not (tmp_path / "broker.json").exists()
