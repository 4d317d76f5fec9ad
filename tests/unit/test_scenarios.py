"""Shock scenarios: selection, timing, shapes, ops, TOML, the library and the CLI shorthand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamval.errors import DataError
from streamval.stream.contract.schema import parse_timestamp
from streamval.stream.datasets import CreditPortfolioParams, EventTable, generate
from streamval.stream.replay.scenarios import (
    LIBRARY,
    Scenario,
    Selector,
    Shock,
    load_scenario,
    parse_shock_arg,
)

DAY = 86_400_000
T0 = parse_timestamp("2024-01-01")


def table(n_assets: int = 6, n_days: int = 10) -> EventTable:
    rows = []
    for d in range(n_days):
        for a in range(n_assets):
            rows.append(
                {
                    "asset_id": f"A{a}",
                    "ts": T0 + d * DAY,
                    "value": 100.0 + a + d * (a % 3 - 1),
                    "score": 600.0 + d,
                    "sector": "Fin" if a % 2 else "Tech",
                }
            )
    return EventTable.from_frame(pd.DataFrame(rows), features=["score"], attributes=["sector"])


def changed(before: EventTable, after: EventTable, column: str) -> pd.DataFrame:
    mask = ~np.isclose(before.frame[column], after.frame[column])
    return before.frame.loc[mask, ["asset_id", "ts"]]


def test_step_shift_hits_only_selected_assets_from_at() -> None:
    base = table()
    shock = Shock(
        at="2024-01-04",
        target="score",
        op="shift",
        amount=-50.0,
        select=Selector(where={"sector": "Fin"}),
    )
    out = shock.apply(base)
    hit = changed(base, out, "score")
    assert set(hit["asset_id"]) == {"A1", "A3", "A5"}
    assert hit["ts"].min() == T0 + 3 * DAY
    assert len(hit) == 3 * 7
    diff = out.frame["score"] - base.frame["score"]
    assert set(np.round(diff.unique(), 6)) == {0.0, -50.0}
    pd.testing.assert_series_equal(out.frame["value"], base.frame["value"])


def test_scale_by_step_index_and_explicit_assets() -> None:
    base = table()
    out = Shock(at=8, op="scale", amount=0.5, select=Selector(assets=("A0", "A4"))).apply(base)
    hit = changed(base, out, "value")
    assert set(hit["asset_id"]) == {"A0", "A4"}
    assert set(hit["ts"]) == {T0 + 8 * DAY, T0 + 9 * DAY}
    ratio = out.frame["value"] / base.frame["value"]
    assert (
        ratio[base.frame["asset_id"].isin(["A0", "A4"]) & (base.frame["ts"] >= T0 + 8 * DAY)]
        .eq(0.5)
        .all()
    )


def test_random_fraction_is_seeded() -> None:
    base = table(n_assets=40)
    picks = [Selector(fraction=0.25, seed=s).select(base) for s in (1, 1, 2)]
    assert len(picks[0]) == 10
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]
    within = Selector(where={"sector": "Tech"}, fraction=0.5, seed=3).select(base)
    assert len(within) == 10 and all(int(a[1:]) % 2 == 0 for a in within)


def test_ramp_by_steps_and_by_time_span() -> None:
    base = table(n_assets=1)
    steps = Shock(at=2, target="score", op="shift", amount=-40.0, shape="ramp", duration=4).apply(
        base
    )
    diff = (steps.frame["score"] - base.frame["score"]).round(6).tolist()
    assert diff == [0, 0, 0, -10, -20, -30, -40, -40, -40, -40]
    span = Shock(
        at="2024-01-03", target="score", op="shift", amount=-40.0, shape="ramp", duration="2d"
    ).apply(base)
    diff = (span.frame["score"] - base.frame["score"]).round(6).tolist()
    assert diff == [0, 0, 0, -20, -40, -40, -40, -40, -40, -40]


def test_volatility_multiplies_moves_from_at_and_keeps_values_positive() -> None:
    rng = np.random.default_rng(0)
    days = 60
    frame = pd.DataFrame(
        {
            "asset_id": "X",
            "ts": T0 + np.arange(days) * DAY,
            "value": 50 * np.exp(np.cumsum(rng.normal(0, 0.05, days))),
        }
    )
    base = EventTable.from_frame(frame)
    out = Shock(at=30, op="volatility", amount=3.0).apply(base)
    before, after = np.log(base.frame["value"]), np.log(out.frame["value"])
    np.testing.assert_allclose(after[:30], before[:30])
    np.testing.assert_allclose(np.diff(after)[29:], 3.0 * np.diff(before)[29:])
    assert (out.frame["value"] > 0).all()


def test_shocks_are_deterministic_and_leave_the_input_alone() -> None:
    base = table()
    copy = base.frame.copy()
    scenario = LIBRARY["market-crash"]
    a, b = scenario.apply(base), scenario.apply(base)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    pd.testing.assert_frame_equal(base.frame, copy)


def test_errors_name_the_problem() -> None:
    base = table()
    with pytest.raises(DataError, match="attribute 'tier'"):
        Shock(at=1, select=Selector(where={"tier": "high"})).apply(base)
    with pytest.raises(DataError, match="target 'credit_score'"):
        Shock(at=1, target="credit_score", op="shift").apply(base)
    with pytest.raises(DataError, match="step 99"):
        Shock(at=99).apply(base)
    with pytest.raises(DataError, match="needs a duration"):
        Shock(at=1, shape="ramp")
    with pytest.raises(DataError, match="op must be"):
        Shock(at=1, op="explode")  # type: ignore[arg-type]


def test_toml_scenario(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        """
name = "fin-crash"
description = "Financials fall"

[[shock]]
where = { sector = "Fin" }
at = "2024-01-06"
target = "value"
op = "scale"
amount = 0.8
shape = "ramp"
duration = "2d"

[[shock]]
assets = ["A0"]
at = 5
target = "score"
op = "shift"
amount = 10
"""
    )
    scenario = load_scenario(path)
    assert scenario.name == "fin-crash" and len(scenario.shocks) == 2
    base = table()
    out = scenario.apply(base)
    assert set(changed(base, out, "value")["asset_id"]) == {"A1", "A3", "A5"}
    assert changed(base, out, "value")["ts"].min() == T0 + 6 * DAY  # ramp: zero effect at `at`
    assert set(changed(base, out, "score")["asset_id"]) == {"A0"}


def test_bad_toml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[shock]]\nat = 1\nopp = "scale"\n')
    with pytest.raises(DataError, match=r"shock 1: unknown key\(s\) \['opp'\]"):
        load_scenario(path)
    path.write_text("name = \n")
    with pytest.raises(DataError, match="not valid TOML"):
        load_scenario(path)
    path.write_text('name = "x"\n')
    with pytest.raises(DataError, match=r"at least one \[\[shock\]\]"):
        load_scenario(path)


def test_library_policy_tightening_on_the_unshocked_credit_book() -> None:
    book = generate(CreditPortfolioParams(shock_month=None), n_customers=300)
    out = LIBRARY["policy-tightening"].apply(book.table)
    high = book.customers.index[book.customers["tier"] == "high"]
    assert len(high) > 10
    hit = changed(book.table, out, "credit_score")
    assert set(hit["asset_id"]) == set(high)
    months = book.frame.loc[hit.index, "month"]
    assert months.min() == 18
    diff = out.frame["credit_score"] - book.frame["credit_score"]
    assert np.allclose(diff[hit.index], -60)
    assert set(changed(book.table, out, "value")["asset_id"]) == set(high)


def test_cli_shorthand() -> None:
    assert parse_shock_arg("rate-shock") is LIBRARY["rate-shock"]
    moved = parse_shock_arg("market-crash@2020-03-16")
    assert {s.at for s in moved.shocks} == {"2020-03-16"}
    assert parse_shock_arg("policy-tightening@12").shocks[0].at == 12
    with pytest.raises(DataError, match="unknown shock 'nope'"):
        parse_shock_arg("nope")


def test_every_library_scenario_runs_on_prices() -> None:
    base = table()
    for name in ("market-crash", "rate-shock"):
        out = LIBRARY[name].apply(base)
        assert (out.frame["value"] <= base.frame["value"] * 1.5).all()
        assert isinstance(LIBRARY[name], Scenario)
        assert not changed(base, out, "value").empty
