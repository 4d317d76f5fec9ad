"""The shipped Prometheus configuration, alert rules and dashboard PromQL pass promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from tests.integration.prom import (
    ALERTS_TEST_YML,
    ALERTS_YML,
    PROMETHEUS_YML,
    alert_queries,
    dashboard_queries,
    promtool,
)

pytestmark = pytest.mark.prometheus


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool; a missing binary fails the test (FileNotFoundError), never skips it."""
    return subprocess.run(
        [promtool(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_check_config() -> None:
    proc = run_promtool("check", "config", PROMETHEUS_YML)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_check_rules() -> None:
    proc = run_promtool("check", "rules", ALERTS_YML)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(alert_queries())} rules found" in proc.stdout


def test_alert_rule_unit_tests_pass() -> None:
    proc = run_promtool("test", "rules", ALERTS_TEST_YML)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    alerts = {q.source.removeprefix("alert ") for q in alert_queries()}
    cases = [
        case
        for test in yaml.safe_load(ALERTS_TEST_YML.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"


def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation makes `promtool test rules` fail, so the passing run means something."""
    wrong = {
        "rule_files": [str(ALERTS_YML)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'up{job="streamval-engine", instance="engine:9108"}',
                        "values": "1 1 1 1 1",
                    }
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "4m",
                        "alertname": "StreamvalEngineDown",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "critical", "job": "streamval-engine"}}
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong_test.yml"
    path.write_text(yaml.safe_dump(wrong))
    proc = run_promtool("test", "rules", path)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every panel and annotation query, variables substituted, is valid PromQL.

    promtool has no PromQL checker of its own, so each query becomes a recording rule.
    """
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"streamval:dashboard_query_{i}", "expr": q.promql}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = run_promtool("check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(queries)} rules found" in proc.stdout


def test_dashboard_promql_check_can_fail(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "rate(up[1m]"}]}]}
        )
    )
    assert run_promtool("check", "rules", path).returncode != 0
