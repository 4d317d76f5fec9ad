"""Baselines: exact behaviour of persistence, DCF, comparables, KNN analogues and fusion weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamval.backtest.fusion import LSTMKNNFusion, best_alpha, stack_weights
from streamval.backtest.methods import EngineValuer, engine_variants
from streamval.config import EngineSettings
from streamval.models.baselines import (
    IncomeMethod,
    KNNAnalogues,
    MarketMethod,
    Persistence,
    Valuer,
)
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.credit import annuity_factor


def test_persistence_is_the_last_value_and_refuses_like_the_engine() -> None:
    p = Persistence()
    out = p.process(
        [
            AssetEvent("a", 1, 10.0),
            AssetEvent("b", 1, 30.0),
            AssetEvent("a", 2, 12.0),
            AssetEvent("a", 2, 12.0),  # duplicate
            AssetEvent("a", 1, 9.0),  # late
            AssetEvent("a", 3, None),
            AssetEvent("c", 3, 5.0),
        ]
    )
    assert [v.valuation for v in out.valuations] == [
        0.0,
        10.0,
        10.0,
        12.0,
        12.0,
    ]  # c: median of 10, 30, 12
    assert [v.warming for v in out.valuations] == [True, True, False, False, True]
    assert out.duplicates == [3]
    assert out.late == [4]


def test_every_method_satisfies_the_valuer_protocol() -> None:
    settings = EngineSettings(hidden=[4], n_clusters=1)
    engine = EngineValuer("HC+LSTM", settings)
    for valuer in (
        Persistence(),
        IncomeMethod(),
        MarketMethod(),
        KNNAnalogues(),
        engine,
        LSTMKNNFusion(engine, KNNAnalogues()),
    ):
        assert isinstance(valuer, Valuer)


def test_engine_variants_change_one_setting_each() -> None:
    base = EngineSettings()
    v = engine_variants(base)
    assert v["HC+LSTM"] == base
    assert v["single LSTM"].n_clusters == 1
    assert v["HC+linear"].cell == "linear"
    assert v["KMeans+LSTM"].clustering == "kmeans"
    assert v["HC+LSTM fixed lr"].lr_boost == 1.0


def test_dcf_formula() -> None:
    rate, months = 0.08, 36
    d = 1.08 ** (1 / 12) - 1
    assert annuity_factor(rate, months) == pytest.approx(sum((1 + d) ** -k for k in range(1, 37)))
    dcf = IncomeMethod(annual_rate=rate, horizon_months=months, debt_service_share=0.3, memory=0.5)
    events = [
        AssetEvent("a", 1, None, {"repayment_ratio": 0.9}, {"income": 60_000.0}),
        AssetEvent("a", 2, None, {"repayment_ratio": 0.7}, {}),
    ]
    first = dcf.process(events[:1]).valuations[0].valuation
    assert first == pytest.approx(60_000 / 12 * 0.3 * 0.9 * annuity_factor(rate, months))
    # The income attribute is static: an event without it keeps no value -> warming fallback.
    second = dcf.process(events[1:]).valuations[0]
    assert second.warming


def test_dcf_collection_rate_is_an_ewma_of_repayment() -> None:
    dcf = IncomeMethod(annual_rate=0.0, horizon_months=1, debt_service_share=1.0, memory=0.5)
    attrs = {"income": 12.0}
    vals = [
        dcf.process([AssetEvent("a", t, None, {"repayment_ratio": r}, attrs)])
        .valuations[0]
        .valuation
        for t, r in enumerate((1.0, 0.0, 0.0))
    ]
    assert vals == pytest.approx([1.0, 0.5, 0.25])


def test_market_method_uses_the_median_multiple_of_earlier_peers() -> None:
    m = MarketMethod(group_attribute="tier", basis_attribute="income", window=4)
    t1 = [
        AssetEvent("a", 1, 100.0, {}, {"tier": "x", "income": 10.0}),  # multiple 10
        AssetEvent("b", 1, 200.0, {}, {"tier": "x", "income": 10.0}),  # 20
        AssetEvent("c", 1, 900.0, {}, {"tier": "x", "income": 10.0}),  # 90
        AssetEvent("d", 1, 50.0, {}, {"tier": "y", "income": 10.0}),  # 5
    ]
    out = m.process(t1)
    # Same-time multiples are held back: nothing is valued from peers at ts 1.
    assert all(v.warming for v in out.valuations)
    assert m.median_multiple("x") is None
    out = m.process(
        [
            AssetEvent("e", 2, None, {}, {"tier": "x", "income": 3.0}),
            AssetEvent("f", 2, None, {}, {"tier": "y", "income": 3.0}),
            AssetEvent("g", 2, None, {}, {"tier": "z", "income": 3.0}),  # no peers: all-median
        ]
    )
    assert m.median_multiple("x") == 20.0
    assert [v.valuation for v in out.valuations] == [60.0, 15.0, 3.0 * np.median([10, 20, 90, 5])]
    assert not any(v.warming for v in out.valuations)


def test_market_method_window_keeps_the_newest_multiples() -> None:
    m = MarketMethod(group_attribute="g", basis_attribute="u", window=2)
    for t, value in enumerate((1.0, 2.0, 3.0, 4.0)):
        m.process([AssetEvent(f"a{t}", t, value, {}, {"g": "x", "u": 1.0})])
    m.process([AssetEvent("z", 10, None, {}, {"g": "x", "u": 1.0})])
    assert m.median_multiple("x") == 3.5


def test_knn_predicts_the_change_that_followed_analogues() -> None:
    knn = KNNAnalogues(k=2, lags=2, memory=100)
    # Two assets alternate +10 % / -10 % relative moves; analogues of "after a rise" fell.
    out = None
    for t in range(12):
        out = knn.process(
            [
                AssetEvent("a", t, 100.0 * (1.1 if t % 2 == 0 else 1.0)),
                AssetEvent("b", t, 50.0 * (1.1 if t % 2 == 0 else 1.0)),
            ]
        )
    assert out is not None
    v = out.valuations[0]
    assert not v.warming
    # At t=11 (odd) the last value was the risen one: the analogues say it falls back.
    assert v.valuation == pytest.approx(100.0, rel=1e-6)


def test_fusion_weights_alpha_and_stacking() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=500)
    lstm = truth + rng.normal(scale=0.1, size=500)  # good
    knn = truth + rng.normal(scale=1.0, size=500)  # poor
    alpha = best_alpha(lstm, knn, truth)
    assert 0.9 <= alpha <= 1.0
    w = stack_weights(lstm, knn, truth)
    assert w[0] > 0.9 and abs(w[1]) < 0.1
    # An exact linear combination is recovered.
    assert stack_weights(lstm, knn, 0.25 * lstm + 0.75 * knn) == pytest.approx(
        [0.25, 0.75], abs=1e-5
    )
    assert best_alpha(lstm, knn, 0.25 * lstm + 0.75 * knn) == 0.25


def test_fusion_freezes_its_weights_and_values_every_component() -> None:
    settings = EngineSettings(hidden=[4], n_clusters=1, seq_len=3, batch_size=8)
    fusion = LSTMKNNFusion(EngineValuer("HC+LSTM", settings), KNNAnalogues(k=2, lags=2))
    rng = np.random.default_rng(1)
    prices = np.full(4, 100.0)
    for t in range(30):
        prices *= np.exp(rng.normal(scale=0.01, size=4))
        events = [AssetEvent(a, t, float(p)) for a, p in zip("abcd", prices, strict=True)]
        if t == 20:
            fusion.freeze_weights()
            frozen = (fusion.alpha, fusion.weights.copy())
        out = fusion.process(events)
        assert set(fusion.components) == {"lstm", "knn", "late", "stack"}
        assert all(len(v) == len(events) for v in fusion.components.values())
        assert all(math.isfinite(v.valuation) for v in out.valuations)
    assert (fusion.alpha, fusion.weights.tolist()) == (frozen[0], frozen[1].tolist())
    assert 0.0 <= fusion.alpha <= 1.0
