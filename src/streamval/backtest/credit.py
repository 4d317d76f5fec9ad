"""The four tables on the paper-design credit book (`streamval.stream.datasets.credit`).

Scaling: values are z-scores with the mean and standard deviation of the *train* split's values
(all months), so MSE is in units of the train variance (an MSE of 0.05 means 5 % of it) and MAE
in train standard deviations. R2 is scale-free. Scored events: the labelled events of months
`score_from_month` (12) to 23, the months in which every sequence learner with 12 steps has a
full window; earlier months are valued by every engine variant with its warming fallback (the
last value).

1. methods      paper protocol on the full book: test MSE / MAE / R2, training seconds
2. clustering   K x metric x linkage: silhouette of the engine's profile space (train
                customers), agreement with the book's latent groups (ARI), downstream
                validation MSE of HC+LSTM with that clustering (grid book)
3. LSTM grid    hidden x steps x L2: train and validation MSE and their ratio (grid book)
4. shock        test MSE in the 6 months before vs from month 18, recovery events, drift delay
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score, silhouette_score

from streamval.backtest.methods import EngineValuer, method_suite
from streamval.backtest.metrics import increase, recovery_events, scores
from streamval.backtest.protocols import Run, paper_protocol, stream
from streamval.config import EngineSettings
from streamval.models.baselines import MarketMethod, Valuer
from streamval.models.clustering import Linkage, Metric
from streamval.models.profiles import ProfileSpace
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.credit import CreditPortfolio, generate

ENGINE_METHODS = ("HC+LSTM", "single LSTM", "HC+linear", "KMeans+LSTM", "HC+LSTM fixed lr")


def full_cluster_grid() -> list[tuple[int, Metric, Linkage]]:
    """K in 2..5 x (ward+euclidean, average and complete with euclidean, manhattan, cosine)."""
    combos: list[tuple[Metric, Linkage]] = [("euclidean", "ward")]
    for linkage in ("average", "complete"):
        for metric in ("euclidean", "manhattan", "cosine"):
            combos.append((metric, linkage))
    return [(k, m, link) for k in (2, 3, 4, 5) for m, link in combos]


def full_lstm_grid() -> list[tuple[int, int, float]]:
    """hidden {50, 100, 150} x steps {6, 12, 18, 24} x L2 {0, 0.001, 0.01}."""
    hidden, steps, l2s = (50, 100, 150), (6, 12, 18, 24), (0.0, 0.001, 0.01)
    return [(h, s, l2) for h in hidden for s in steps for l2 in l2s]


@dataclass
class CreditConfig:
    """What the credit backtest runs; `quick()` is the small version for CI."""

    customers: int = 5000
    grid_customers: int = 1000
    batch_size: int = 64
    score_from_month: int = 12
    learn_on_test: bool = True
    recovery_window: int = 200
    cluster_grid: list[tuple[int, Metric, Linkage]] = field(default_factory=full_cluster_grid)
    lstm_grid: list[tuple[int, int, float]] = field(default_factory=full_lstm_grid)
    engine: EngineSettings = field(default_factory=EngineSettings)
    jobs: int = 1
    progress: bool = True

    @classmethod
    def quick(cls) -> CreditConfig:
        return cls(
            customers=500,
            grid_customers=250,
            recovery_window=50,
            cluster_grid=[
                (2, "euclidean", "ward"),
                (3, "euclidean", "ward"),
                (3, "cosine", "average"),
                (3, "manhattan", "complete"),
            ],
            lstm_grid=[(50, 6, 0.0), (50, 12, 0.0), (100, 12, 0.001), (100, 24, 0.0)],
            engine=EngineSettings(bootstrap_assets=20),
        )


@dataclass
class CreditResults:
    """Everything the report needs from the credit backtest."""

    config: CreditConfig
    mean: float
    std: float
    methods: pd.DataFrame  # table 1
    clustering: pd.DataFrame  # table 2
    lstm: pd.DataFrame  # table 3
    shock: pd.DataFrame  # table 4
    test_frames: dict[str, pd.DataFrame]
    shock_ts: int | None
    month_ts: tuple[int, ...]
    seconds: float


def methods_for(base: EngineSettings) -> list[Valuer]:
    """Every method of table 1 (market peers: the risk tier, multiples of income)."""
    return method_suite(
        base, MarketMethod(group_attribute="tier", basis_attribute="income"), income=True
    )


def _splits(book: CreditPortfolio, names: Sequence[str]) -> list[tuple[str, list[AssetEvent]]]:
    return [(name, list(book.split(name).events())) for name in names]


def _months(frame: pd.DataFrame, month_ts: Sequence[int]) -> np.ndarray:
    index = np.searchsorted(np.asarray(month_ts), frame["ts"].to_numpy(), side="right") - 1
    return np.asarray(index)


def _normalised_scores(
    frame: pd.DataFrame, month_ts: Sequence[int], lo: int, hi: int, *, mean: float, std: float
) -> dict[str, float]:
    month = _months(frame, month_ts)
    keep = (month >= lo) & (month < hi) & frame["value"].notna().to_numpy()
    y = (frame["value"].to_numpy(dtype=float)[keep] - mean) / std
    yhat = (frame["valuation"].to_numpy(dtype=float)[keep] - mean) / std
    return scores(y, yhat)


def scaled_mse(
    test: pd.DataFrame, month_ts: Sequence[int], score_from: int, shock: int | None
) -> dict[str, float]:
    """Scaled MSE of the scored months, of the 6 before the shock and the 6 from it, and of
    persistence over the scored months: errors over each customer's RMS monthly change in the
    months before `score_from` (the mean square of M5's RMSSE terms)."""
    f = test.assign(month=_months(test, month_ts)).sort_values(["asset_id", "month"])
    change = f["value"] - f.groupby("asset_id")["value"].shift(1)
    early = f["month"] < score_from
    scale = np.sqrt((change[early] ** 2).groupby(f["asset_id"][early]).mean())
    unit = f["asset_id"].map(scale.where(scale > 0))  # a flat customer has no scale: left out
    scored = (f["month"] >= score_from).to_numpy()
    err = (((f["value"] - f["valuation"]) / unit) ** 2)[scored]
    month = f["month"][scored]
    out = {
        "scaled": float(err.mean()),
        "scaled_before": math.nan,
        "scaled_after": math.nan,
        "scaled_persistence": float(((change / unit) ** 2)[scored].mean()),
    }
    if shock is not None:
        width = min(shock - score_from, int(month.max()) + 1 - shock)
        out["scaled_before"] = float(err[(month >= shock - width) & (month < shock)].mean())
        out["scaled_after"] = float(err[(month >= shock) & (month < shock + width)].mean())
    return out


def run_methods(config: CreditConfig, book: CreditPortfolio) -> tuple[dict[str, Run], float, float]:
    """Table 1's runs: the paper protocol for every method on the full book."""
    splits = _splits(book, ("train", "validation", "test"))
    train_values = book.split("train").frame["value"].to_numpy(dtype=float)
    mean, std = float(np.nanmean(train_values)), float(np.nanstd(train_values))
    runs: dict[str, Run] = {}
    for valuer in methods_for(config.engine):
        runs[valuer.name] = paper_protocol(
            valuer,
            splits,
            batch_size=config.batch_size,
            learn_on_test=config.learn_on_test,
            progress=config.progress,
        )
    return runs, mean, std


def methods_table(
    runs: dict[str, Run], config: CreditConfig, book: CreditPortfolio, mean: float, std: float
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    rows: list[dict[str, Any]] = []
    tests: dict[str, pd.DataFrame] = {}
    months = book.month_ts_ms
    for run in runs.values():
        for name, frame in run.frames.items():
            test = frame[frame["phase"] == "test"].reset_index(drop=True)
            tests[name] = test
            s = _normalised_scores(
                test, months, config.score_from_month, len(months), mean=mean, std=std
            )
            month = _months(test, months)
            scored = test[month >= config.score_from_month]
            rows.append(
                {
                    "method": name,
                    "mse": s["mse"],
                    "mae": s["mae"],
                    "r2": s["r2"],
                    "scaled_mse": scaled_mse(
                        test, months, config.score_from_month, book.params.shock_month
                    )["scaled"],
                    "train_s": run.seconds.get("train", math.nan),
                    "model_share": float(1.0 - scored["warming"].mean())
                    if len(scored)
                    else math.nan,
                    "n": int(s["n"]),
                }
            )
    return pd.DataFrame(rows), tests


def around_month(
    test: pd.DataFrame,
    month_ts: Sequence[int],
    month: int,
    score_from: int,
    *,
    mean: float,
    std: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Scores of the months before `month` and from it, as many of each as the scored months
    allow (Table 4's windows). On a book without the shock, the same months are its control."""
    width = min(month - score_from, len(month_ts) - month)
    before = _normalised_scores(test, month_ts, month - width, month, mean=mean, std=std)
    after = _normalised_scores(test, month_ts, month, month + width, mean=mean, std=std)
    return before, after


def shock_table(
    runs: dict[str, Run],
    tests: dict[str, pd.DataFrame],
    config: CreditConfig,
    book: CreditPortfolio,
    *,
    mean: float,
    std: float,
) -> pd.DataFrame:
    """Table 4: before/after month 18 on the test customers, recovery, drift-alarm delay."""
    months = book.month_ts_ms
    shock = book.params.shock_month
    if shock is None:
        return pd.DataFrame()
    width = min(shock - config.score_from_month, len(months) - shock)
    shocked = set(book.customers.index[book.customers["shocked"]])
    rows = []
    owner = {name: run for run in runs.values() for name in run.frames}
    for name, test in tests.items():
        before, after = around_month(
            test, months, shock, config.score_from_month, mean=mean, std=std
        )
        hit = test[test["asset_id"].isin(shocked)]
        before_hit = _normalised_scores(hit, months, shock - width, shock, mean=mean, std=std)
        after_hit = _normalised_scores(hit, months, shock, shock + width, mean=mean, std=std)
        month = _months(test, months)
        keep = (month >= shock - width) & test["value"].notna().to_numpy()
        ordered = test[keep].sort_values("pos")
        sq = ((ordered["value"] - ordered["valuation"]).to_numpy(dtype=float) / std) ** 2
        first = np.flatnonzero(_months(ordered, months) >= shock)
        shock_index = int(first[0]) if len(first) else -1
        recovered = recovery_events(sq, shock_index, config.recovery_window)
        delay: float | str = "n/a"
        run = owner[name]
        if name in ENGINE_METHODS and not run.alarms.empty:
            a = run.alarms
            alarms = a[(a["phase"] == "test") & (a["ts"] >= (book.shock_ts_ms or 0))]
            shock_pos = int(test.loc[month >= shock, "pos"].min())
            delay = int(alarms["pos"].min() - shock_pos) if len(alarms) else "none"
        elif name in ENGINE_METHODS:
            delay = "none"
        rows.append(
            {
                "method": name,
                "mse_before": before["mse"],
                "mse_after": after["mse"],
                "increase": increase(before["mse"], after["mse"]),
                "shocked_before": before_hit["mse"],
                "shocked_after": after_hit["mse"],
                "shocked_increase": increase(before_hit["mse"], after_hit["mse"]),
                "recovery": recovered
                if recovered is not None
                else f"> {len(sq) - max(shock_index, 0)}",
                "alarm_delay": delay,
            }
        )
    return pd.DataFrame(rows)


def _set_threads() -> None:
    torch.set_num_threads(1)


def _grid_engine(settings: EngineSettings, linkage: Linkage, metric: Metric) -> EngineValuer:
    return EngineValuer(
        "HC+LSTM", settings.model_copy(update={"linkage": linkage, "metric": metric})
    )


def _grid_run(job: tuple[EngineSettings, str, str, int, int, int]) -> dict[str, Any]:
    """One grid cell: stream train then validation customers of the grid book; MSEs and profiles."""
    settings, linkage, metric, customers, batch_size, score_from = job
    _set_threads()
    book = generate(n_customers=customers)
    train_values = book.split("train").frame["value"].to_numpy(dtype=float)
    mean, std = float(np.nanmean(train_values)), float(np.nanstd(train_values))
    valuer = _grid_engine(settings, linkage, metric)  # type: ignore[arg-type]
    months = book.month_ts_ms
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for phase in ("train", "validation"):
        frames, _, _ = stream(
            valuer,
            list(book.split(phase).events()),
            phase=phase,
            batch_size=batch_size,
            progress=False,
        )
        frame = frames[valuer.name]
        out[phase] = _normalised_scores(frame, months, score_from, len(months), mean=mean, std=std)[
            "mse"
        ]
        if phase == "train":
            out["profiles"] = valuer.engine.profile_inputs()
            scored = frame[_months(frame, months) >= score_from]
            out["model_share"] = float(1.0 - scored["warming"].mean())
    out["seconds"] = time.perf_counter() - t0
    return out


def _map(jobs: list[Any], workers: int, progress: bool, desc: str) -> list[dict[str, Any]]:
    from tqdm import tqdm

    if workers <= 1:
        return [_grid_run(j) for j in tqdm(jobs, desc=desc, disable=not progress)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_set_threads) as pool:
        mapped = pool.map(_grid_run, jobs)
        return list(tqdm(mapped, total=len(jobs), desc=desc, disable=not progress))


def clustering_table(config: CreditConfig) -> pd.DataFrame:
    """Table 2: silhouette and ARI on the engine's profile space, downstream validation MSE."""
    jobs = [
        (
            config.engine.model_copy(update={"n_clusters": k}),
            linkage,
            metric,
            config.grid_customers,
            config.batch_size,
            config.score_from_month,
        )
        for k, metric, linkage in config.cluster_grid
    ]
    results = _map(jobs, config.jobs, config.progress, "clustering grid")
    ids, inputs = results[0]["profiles"]
    x = ProfileSpace().fit(inputs)
    grid_book = generate(n_customers=config.grid_customers)
    groups = grid_book.customers.loc[list(ids), "group"].to_numpy()
    rows = []
    for (k, metric, linkage), res in zip(config.cluster_grid, results, strict=True):
        model = AgglomerativeClustering(n_clusters=k, linkage=linkage, metric=metric)
        labels = model.fit_predict(x)
        sil = (
            float(silhouette_score(x, labels, metric=metric)) if len(set(labels)) > 1 else math.nan
        )
        rows.append(
            {
                "k": k,
                "metric": metric,
                "linkage": linkage,
                "silhouette": sil,
                "ari": float(adjusted_rand_score(groups, labels)),
                "sizes": "/".join(str(int(n)) for n in sorted(np.bincount(labels), reverse=True)),
                "val_mse": res["validation"],
                "seconds": res["seconds"],
            }
        )
    return pd.DataFrame(rows)


def lstm_table(config: CreditConfig) -> pd.DataFrame:
    """Table 3: hidden x steps x L2 with the train / validation MSE ratio."""
    jobs = [
        (
            config.engine.model_copy(
                update={"hidden": [h, max(1, h // 2)], "seq_len": steps, "weight_decay": l2}
            ),
            "ward",
            "euclidean",
            config.grid_customers,
            config.batch_size,
            config.score_from_month,
        )
        for h, steps, l2 in config.lstm_grid
    ]
    results = _map(jobs, config.jobs, config.progress, "LSTM grid")
    rows = []
    for (h, steps, l2), res in zip(config.lstm_grid, results, strict=True):
        rows.append(
            {
                "hidden": f"{h}/{max(1, h // 2)}",
                "steps": steps,
                "l2": l2,
                "train_mse": res["train"],
                "val_mse": res["validation"],
                "ratio": res["train"] / res["validation"] if res["validation"] > 0 else math.nan,
                "model_share": res["model_share"],
                "seconds": res["seconds"],
            }
        )
    return pd.DataFrame(rows)


def run_credit(config: CreditConfig) -> CreditResults:
    """All four credit tables."""
    t0 = time.perf_counter()
    book = generate(n_customers=config.customers)
    runs, mean, std = run_methods(config, book)
    methods, tests = methods_table(runs, config, book, mean, std)
    shock = shock_table(runs, tests, config, book, mean=mean, std=std)
    clustering = clustering_table(config)
    lstm = lstm_table(config)
    return CreditResults(
        config=config,
        mean=mean,
        std=std,
        methods=methods,
        clustering=clustering,
        lstm=lstm,
        shock=shock,
        test_frames=tests,
        shock_ts=book.shock_ts_ms,
        month_ts=book.month_ts_ms,
        seconds=time.perf_counter() - t0,
    )
