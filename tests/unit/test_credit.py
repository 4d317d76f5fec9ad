"""The credit portfolio generator: design sizes, determinism, the month-18 shock, sane values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamval.stream.contract.schema import parse_event
from streamval.stream.datasets import CreditPortfolio, CreditPortfolioParams, generate


@pytest.fixture(scope="module")
def book() -> CreditPortfolio:
    return generate()


@pytest.fixture(scope="module")
def unshocked() -> CreditPortfolio:
    return generate(CreditPortfolioParams(shock_month=None))


def test_paper_design_sizes_and_splits(book: CreditPortfolio) -> None:
    customers = book.customers
    assert len(customers) == 5000
    assert len(book.frame) == 5000 * 24
    assert book.frame.groupby("asset_id").size().eq(24).all()
    assert customers["split"].value_counts().to_dict() == {
        "train": 3000,
        "test": 1200,
        "validation": 800,
    }
    high_vol = customers.groupby("split")["high_volatility"].sum().to_dict()
    assert high_vol == {"train": 1000, "validation": 267, "test": 400}
    assert set(customers["group"]) == {0, 1, 2}
    assert set(customers["tier"]) == {"low", "mid", "high"}
    assert (customers["high_risk"] == (customers["tier"] == "high")).all()


def test_scaled_down_book_keeps_proportions() -> None:
    small = generate(n_customers=250)
    counts = small.customers["split"].value_counts()
    assert counts.to_dict() == {"train": 150, "test": 60, "validation": 40}
    train = small.customers[small.customers["split"] == "train"]
    assert train["high_volatility"].sum() == 50
    assert len(small.frame) == 250 * 24


def test_months_start_2022_and_shock_is_july_2023(book: CreditPortfolio) -> None:
    months = pd.to_datetime(sorted(book.frame["ts"].unique()), unit="ms", utc=True)
    assert months[0] == pd.Timestamp("2022-01-01", tz="UTC")
    assert months[-1] == pd.Timestamp("2023-12-01", tz="UTC")
    assert book.shock_ts_ms == int(pd.Timestamp("2023-07-01", tz="UTC").timestamp() * 1000)


def test_same_seed_same_book_other_seed_other_book() -> None:
    a = generate(n_customers=60)
    b = generate(n_customers=60)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    c = generate(CreditPortfolioParams(seed=7), n_customers=60)
    assert not np.allclose(a.frame["value"], c.frame["value"])


def test_values_finite_positive_and_features_in_range(book: CreditPortfolio) -> None:
    frame = book.frame
    assert np.isfinite(frame["value"]).all()
    assert (frame["value"] > 0).all()
    assert frame["repayment_ratio"].between(0, 1).all()
    assert frame["credit_score"].between(300, 850).all()


def test_shock_lowers_high_risk_scores_from_month_18_only(
    book: CreditPortfolio, unshocked: CreditPortfolio
) -> None:
    shocked_ids = book.customers.index[book.customers["shocked"]]
    assert book.customers["shocked"].equals(book.customers["high_risk"])
    assert len(shocked_ids) > 100
    frame, base = book.frame, unshocked.frame
    assert (frame[["asset_id", "ts", "month"]] == base[["asset_id", "ts", "month"]]).all().all()
    hit = frame["asset_id"].isin(shocked_ids)
    after = frame["month"] >= 18
    diff = frame["credit_score"] - base["credit_score"]
    # Nothing changes before month 18, nor for anybody outside the high-risk tier.
    assert (diff[~after] == 0).all()
    assert (
        (
            frame.loc[~hit, ["value", "credit_score", "repayment_ratio"]]
            == base.loc[~hit, ["value", "credit_score", "repayment_ratio"]]
        )
        .all()
        .all()
    )
    # High-risk scores drop at month 18 (about the 60-point shock) and stay lower.
    at18 = diff[hit & (frame["month"] == 18)]
    assert (at18 < 0).all()
    assert at18.mean() == pytest.approx(-60, abs=5)
    assert (diff[hit & after] < 0).mean() > 0.99
    # Their valuations follow.
    ratio = frame["value"] / base["value"]
    assert ratio[hit & after].mean() < 0.9
    assert (ratio[hit & ~after] == 1).all()


def test_latent_groups_have_different_dynamics_and_values(book: CreditPortfolio) -> None:
    frame = book.frame.join(book.customers[["group", "high_volatility"]], on="asset_id")
    normal = frame[~frame["high_volatility"] & (frame["month"] < 18)]
    score_moves = (
        normal.groupby("asset_id")["credit_score"].diff().abs().groupby(normal["group"]).mean()
    )
    assert score_moves[0] < score_moves[1] < score_moves[2]
    value_per_income = (normal["value"] / normal["income"]).groupby(normal["group"]).median()
    assert value_per_income.nunique() == 3
    assert value_per_income.max() / value_per_income.min() > 1.5


def test_high_volatility_series_move_more(book: CreditPortfolio) -> None:
    frame = book.frame.join(book.customers[["high_volatility"]], on="asset_id")
    moves = frame.groupby("asset_id")["credit_score"].diff().abs()
    by_vol = moves.groupby(frame["high_volatility"]).mean()
    assert by_vol[True] > 1.5 * by_vol[False]


def test_events_in_time_order_and_contract_valid() -> None:
    small = generate(n_customers=30)
    events = list(small.events())
    assert len(events) == 30 * 24
    keys = [(e.ts_ms, e.asset_id) for e in events]
    assert keys == sorted(keys)
    first = events[0]
    assert set(first.features) == {"repayment_ratio", "credit_score"}
    assert set(first.attributes) == {"age", "income", "tier"}
    assert parse_event(first.to_bytes()) == first
    assert "group" not in first.attributes


def test_split_view_keeps_only_its_customers() -> None:
    small = generate(n_customers=100)
    test = small.split("test")
    assert set(test.frame["asset_id"]) == set(test.customers.index)
    assert (test.customers["split"] == "test").all()
    with pytest.raises(ValueError, match="unknown split"):
        small.split("holdout")


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="shock_month"):
        CreditPortfolioParams(shock_month=24)
    with pytest.raises(ValueError, match="split_fractions"):
        CreditPortfolioParams(split_fractions=(0.5, 0.2, 0.2))


def test_documented_discount_rate() -> None:
    params = CreditPortfolioParams()
    assert params.monthly_discount_rate == pytest.approx(1.08 ** (1 / 12) - 1)
    # 36 months of 1 with no growth: the closed-form annuity (1 - 1.08^-3) / d, about 32.04.
    flat = CreditPortfolioParams(income_growth=(0.0, 0.0, 0.0))
    d = flat.monthly_discount_rate
    assert flat.annuity_factor(0) == pytest.approx((1 - 1.08**-3) / d)
    assert flat.annuity_factor(0) == pytest.approx(32.04, abs=0.01)
