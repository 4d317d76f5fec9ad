"""`streamval demo --quick` as a user runs it: broker, replay, engine, report, clean exit.

The subprocess test starts the demo with no cluster configured, so it starts (and must stop) its
own broker in a temporary home under this test's TMPDIR. The in-process test points the demo at
the session broker with --bootstrap-servers, so no broker of its own is started.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from streamval.cli import main
from streamval.demo import ALARM_DELAY_BOUND_MONTHS

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Quick mode: ~15 s broker start, ~35 s of valuing, ~5 s reading back on 2 cores.
DEMO_TIMEOUT_S = 240


def _broker_jvms(marker: str) -> list[int]:
    """Pids of live `kafka.Kafka` JVMs whose command line mentions `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if b"kafka.Kafka" in cmdline.split(b"\0") and marker.encode() in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def _check_report(out: Path) -> dict[str, Any]:
    """The report's files exist; every event was valued; the shock raised an alarm in time."""
    assert (out / "report.md").is_file()
    plot = out / "errors.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "errors.png" in report
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert summary["events"] == summary["customers"] * 24
    assert summary["valued"] == summary["events"]
    assert summary["all_valued"] is True
    assert summary["engine_is_paper_default"] is True

    shocked = summary["shocked_cluster"]
    assert shocked is not None
    assert str(shocked) in summary["shocked_by_cluster"]
    assert summary["shocked_by_cluster"][str(shocked)] == max(
        summary["shocked_by_cluster"].values()
    )
    in_shocked = [a for a in summary["alarms"] if a["cluster"] == shocked]
    assert in_shocked, f"no drift alarm in the shocked cluster {shocked}: {summary['alarms']}"
    first = min(
        (a for a in in_shocked if a["ts_ms"] >= summary["shock_ts_ms"]),
        key=lambda a: a["ts_ms"],
    )
    assert 0 <= first["delay_months"] <= ALARM_DELAY_BOUND_MONTHS
    assert summary["shock_detected"] is True
    assert summary["first_shock_alarm"]["ts_ms"] == first["ts_ms"]
    assert f"Drift alarm in cluster {shocked}" in report
    return summary


def test_quick_demo_with_its_own_broker(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["TMPDIR"] = str(tmp)  # the demo's broker home is created under it
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "streamval.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _check_report(out)
    home = summary["local_broker_home"]
    assert home and home.startswith(str(tmp))
    assert "metrics" in proc.stdout and "http://" in proc.stdout
    assert "valued 24,000 of 24,000 events" in proc.stdout
    assert _broker_jvms(home) == []
    assert _broker_jvms(str(tmp)) == []
    assert not Path(home).exists()


def test_quick_demo_on_a_configured_cluster(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A local broker home would be made here (tempfile caches TMPDIR, so patch its cache).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "report"
    # The CLI configures logging for its process: give pytest its handlers and levels back.
    root, kafka_log = logging.getLogger(), logging.getLogger("kafka")
    saved = (root.handlers[:], root.level, kafka_log.level)
    try:
        code = main(
            [
                "demo",
                "--quick",
                "--plain",
                "--out",
                str(out),
                "--bootstrap-servers",
                kafka_bootstrap,
            ]
        )
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        kafka_log.setLevel(saved[2])
    assert code == 0
    summary = _check_report(out)
    assert summary["local_broker_home"] is None
    assert summary["bootstrap"] == kafka_bootstrap
    assert not list(tmp_path.glob("streamval-demo-*"))  # no broker home was made
