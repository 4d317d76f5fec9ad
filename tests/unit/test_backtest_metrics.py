"""Backtest helpers: metrics, recovery time, tables, asset picking, feature lagging."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from streamval.backtest.credit import scaled_mse
from streamval.backtest.metrics import (
    fmt,
    increase,
    markdown_table,
    mase,
    pct,
    previous_values,
    recovery_events,
    scores,
)
from streamval.backtest.realdata import pick_assets
from streamval.backtest.report import _verdict


def test_scores_match_definitions() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    yhat = np.array([1.5, 2.0, 2.5, 4.0])
    s = scores(y, yhat)
    assert s["mse"] == pytest.approx(0.125)
    assert s["mae"] == pytest.approx(0.25)
    assert s["r2"] == pytest.approx(1 - 0.5 / 5.0)
    assert math.isnan(scores(np.array([]), np.array([]))["mse"])


def test_mase_and_increase() -> None:
    assert mase(np.array([1.0, 1.0]), np.array([2.0, -2.0])) == 0.5
    assert math.isnan(mase(np.array([1.0]), np.array([0.0])))
    assert increase(0.043, 0.068) == pytest.approx(0.5814, abs=1e-4)
    assert math.isnan(increase(0.0, 1.0))


def test_recovery_events() -> None:
    pre = [1.0] * 10
    post = [4.0] * 5 + [1.05] * 10
    e = np.array(pre + post)
    assert recovery_events(e, 10, window=3) == 8  # first all-recovered window ends at 5 + 3
    assert recovery_events(np.array(pre + [1.0] * 5), 10, window=3) == 3  # no damage
    assert recovery_events(np.array(pre + [2.0] * 5), 10, window=3) is None
    assert recovery_events(e, 0, window=3) is None


def test_table_formatting() -> None:
    table = markdown_table(["m", "x", "y"], [["a", 0.123456, None], ["b", 3, float("nan")]])
    assert table.splitlines() == [
        "| m | x | y |",
        "|---|---|---|",
        "| a | 0.1235 | - |",
        "| b | 3 | - |",
    ]
    assert fmt(1234567.0) == "1.235e+06"
    assert pct(-0.5) == "-50.0%"


def test_previous_values_follow_stream_order_per_asset() -> None:
    frame = pd.DataFrame(
        {
            "phase": ["s"] * 4,
            "asset_id": ["a", "b", "a", "b"],
            "pos": [0, 1, 2, 3],
            "value": [1.0, 10.0, 2.0, 20.0],
        }
    )
    prev = previous_values(frame)
    assert np.isnan(prev[0]) and np.isnan(prev[1])
    assert prev[2:].tolist() == [1.0, 10.0]


def test_pick_assets_spreads_over_groups() -> None:
    sectors = pd.Series({"A": "x", "B": "x", "C": "x", "D": "y", "E": "z", "F": "z"})
    assert pick_assets(sectors, 4) == ["A", "B", "D", "E"]
    assert pick_assets(sectors, None) == sorted(sectors.index)


def test_scaled_mse_divides_each_customers_errors_by_its_own_early_changes() -> None:
    months = (0, 10, 20, 30)
    test = pd.DataFrame(
        {
            "asset_id": ["a"] * 4 + ["b"] * 4 + ["flat"] * 4,
            "ts": [0, 10, 20, 30] * 3,
            # a moves 1 a month, b 2 a month: b's error of 1 counts as a's error of 0.5
            "value": [0.0, 1, 2, 3, 0, 2, 4, 6, 5, 5, 5, 6],
            "valuation": [np.nan, 0, 2.5, 3, np.nan, 0, 4, 7, np.nan, 5, 5, 9],
        }
    )
    out = scaled_mse(test, months, score_from=2, shock=3)
    # scored: a 0.25, 0; b 0, 0.25; the flat customer (no early change) is left out
    assert out["scaled"] == pytest.approx(0.125)
    assert out["scaled_before"] == pytest.approx(0.125)
    assert out["scaled_after"] == pytest.approx(0.125)
    assert out["scaled_persistence"] == pytest.approx(1.0)


def test_a_verdict_counts_values_equal_as_shown_as_ties() -> None:
    table = pd.DataFrame(
        {
            "method": ["HC+LSTM", "fixed lr", "single", "other"],
            "mse": [0.0022741, 0.00227406, 0.002263, math.nan],
        }
    )
    (line,) = _verdict(table, "HC+LSTM", "mse", label="test MSE")
    assert "lower test MSE for single (0.002263)" in line and "fixed lr" not in line
    (best,) = _verdict(table[table["method"] != "single"], "HC+LSTM", "mse")
    assert best.startswith("**HC+LSTM has the lowest MSE")
