"""Figures of the backtest report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from streamval.stream.replay.markers import Marker

KEY_METHODS = (
    "persistence",
    "HC+LSTM",
    "single LSTM",
    "HC+LSTM fixed lr",
    "KMeans+LSTM",
    "HC+linear",
    "LSTM-KNN stacking",
)


def credit_shock(
    tests: dict[str, pd.DataFrame],
    *,
    month_ts: tuple[int, ...],
    shock_ts: int,
    std: float,
    from_month: int,
    window: int,
    path: Path,
) -> Path:
    """Rolling normalised squared error of the test stream around the shock, and HC+LSTM's lr."""
    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    start = month_ts[from_month]
    shock_pos = None
    for name in KEY_METHODS:
        test = tests.get(name)
        if test is None:
            continue
        f = test[(test["ts"] >= start) & test["value"].notna()].sort_values("pos")
        sq = ((f["value"] - f["valuation"]).to_numpy(dtype=float) / std) ** 2
        rolling = pd.Series(sq).rolling(window, min_periods=window).mean()
        ax.plot(np.arange(len(sq)), rolling, label=name, lw=1.2)
        shock_pos = int(np.argmax(f["ts"].to_numpy() >= shock_ts))
        if name == "HC+LSTM":
            ax_lr.plot(np.arange(len(sq)), f["lr"].to_numpy(dtype=float), lw=0.8)
    if shock_pos is not None:
        for a in (ax, ax_lr):
            a.axvline(shock_pos, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_ylabel(f"rolling MSE ({window} events, z-units)")
    ax.set_title("Credit book, test customers: error around the month-18 policy tightening")
    ax.legend(fontsize=8, ncol=2)
    ax_lr.set_ylabel("HC+LSTM lr")
    ax_lr.set_xlabel("test events from month 12 (stream order)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def methods_bar(table: pd.DataFrame, paper: dict[str, float], path: Path) -> Path:
    """Test MSE per method (ours) beside the paper's reported MSE where it has one."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["mse"], width=0.4, label="ours (generated book)")
    ax.bar(
        x + 0.2,
        [paper.get(m, np.nan) for m in table["method"]],
        width=0.4,
        label="paper (private data)",
    )
    ax.set_xticks(x, table["method"], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("test MSE (normalised)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def panel_shock(
    frames: dict[str, pd.DataFrame], marker: Marker, before: int, after: int, path: Path
) -> Path | None:
    """Daily cross-sectional MAE (%) per method around a shock; HC+LSTM's lr per cluster."""
    base = frames["persistence"]
    days = np.sort(base["ts"].unique())
    at = int(np.searchsorted(days, marker.ts_ms))
    if at >= len(days):
        return None
    lo, hi = days[max(0, at - before)], days[min(len(days) - 1, at + after)]
    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name in KEY_METHODS:
        f = frames.get(name)
        if f is None:
            continue
        w = f[(f["ts"] >= lo) & (f["ts"] <= hi)]
        daily = w.groupby("ts")["rel"].apply(lambda e: float(np.mean(np.abs(100 * e))))
        ax.plot(pd.to_datetime(daily.index, unit="ms"), daily.to_numpy(), label=name, lw=1.2)
        if name == "HC+LSTM":
            for cluster, c in w.groupby("cluster"):
                lr = c.groupby("ts")["lr"].mean()
                ax_lr.plot(
                    pd.to_datetime(lr.index, unit="ms"),
                    lr.to_numpy(),
                    lw=1,
                    label=f"cluster {cluster}",
                )
    when = pd.to_datetime(marker.ts_ms, unit="ms")
    for a in (ax, ax_lr):
        a.axvline(when, color="k", ls="--", lw=1)
    ax.set_ylabel("MAE of one-day-ahead value (%)")
    ax.set_title(f"S&P 500: {marker.name} ({when.date()})")
    ax.legend(fontsize=8, ncol=2)
    ax_lr.set_ylabel("HC+LSTM lr")
    ax_lr.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def online_rolling(
    rolling: pd.DataFrame,
    events: list[tuple[Marker, int]],
    alarms: list[int],
    *,
    title: str,
    window: int,
    coverage_target: float,
    path: Path,
) -> Path:
    """Online run: rolling engine MASE against persistence and rolling interval coverage over
    event time, with the listed events (dashed) and the drift alarms (ticks) marked."""
    fig, (ax, ax_cov) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    when = pd.to_datetime(rolling["ts"].to_numpy(), unit="ms")
    ax.plot(when, rolling["mase"].to_numpy(dtype=float), lw=1, label="engine")
    ax.axhline(1.0, color="grey", lw=1, label="persistence")
    ax_cov.plot(when, rolling["coverage"].to_numpy(dtype=float), lw=1, color="tab:green")
    ax_cov.axhline(coverage_target, color="grey", lw=1, ls=":")
    for i, (marker, _) in enumerate(events):
        for a in (ax, ax_cov):
            a.axvline(
                pd.to_datetime(marker.ts_ms, unit="ms"),
                color="k",
                ls="--",
                lw=0.8,
                label="listed event" if i == 0 and a is ax else None,
            )
    if alarms:
        ax.plot(
            pd.to_datetime(np.asarray(alarms), unit="ms"),
            np.full(len(alarms), float(np.nanmin(rolling["mase"])) if len(rolling) else 1.0),
            "|",
            color="tab:red",
            ms=10,
            label="drift alarm",
        )
    ax.set_ylabel(f"MASE, rolling {window} steps")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax_cov.set_ylabel(f"coverage, rolling {window}")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
