"""`streamval backtest --quick --dataset all` end to end: all tables, the plots, finite numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_backtest_writes_the_full_report(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamval.cli",
            "backtest",
            "--quick",
            "--dataset",
            "all",
            "--data-dir",
            str(shared_data / "sp500_2015_2020"),
            "--out",
            str(out),
            "--no-progress",
            "--jobs",
            "1",
            # Smaller than --quick's own 12 assets and 500 customers: this checks the report's
            # shape, and the suite's time is budgeted.
            "--max-assets",
            "6",
            "--customers",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for heading in (
        "### Table 1: methods",
        "### Table 2: clustering grid",
        "### Table 3: LSTM grid",
        "### Table 4: the month-18 policy tightening",
        "## Real data: S&P 500",
        "### Around real shocks",
    ):
        assert heading in report
    for method in (
        "persistence",
        "HC+LSTM",
        "single LSTM",
        "HC+linear",
        "KMeans+LSTM",
        "HC+LSTM fixed lr",
        "income (DCF)",
        "market (comparables)",
        "LSTM-KNN late fusion",
        "LSTM-KNN stacking",
    ):
        assert f"| {method} |" in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 5
    for image in images:
        assert (out / image).stat().st_size > 1000
    # Table 1 rows: MSE, MAE, R2 and scaled MSE of every method are finite numbers.
    table1 = report.split("### Table 1")[1].split("###")[0]
    assert "| method | MSE | MAE | R2 | scaled MSE |" in table1
    for line in table1.splitlines()[4:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for cell in cells[1:5]:
            assert float(cell) == float(cell) and abs(float(cell)) < 1e6, line
    assert "nan" not in report.lower().replace("financ", "")
