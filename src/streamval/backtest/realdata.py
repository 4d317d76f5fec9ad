"""Streaming (prequential) valuation of a real panel: one-step-ahead value of every asset.

Used for the S&P 500 2015-2020 prices and for any long or wide table given to `streamval
backtest`. Errors are scale-free so that a 10 USD and a 3,000 USD stock weigh the same: the
relative error e = (value - valuation) / previous value of the asset (a return error). Tables:
MSE of e (in %^2), MAE of e (in %), MASE = MAE / MAE of persistence on the same events (below 1
beats persistence); per sector (the `group` attribute); and in windows around real shocks.

Features are used as the events carry them: the wide-table reader already derives price
features (`log_return`, `volatility_20d`) from prices up to the previous close, so an event's
features never reveal its value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from streamval.backtest.methods import method_suite
from streamval.backtest.metrics import mase, previous_values
from streamval.backtest.protocols import Run, streaming_protocol
from streamval.config import EngineSettings
from streamval.models.baselines import MarketMethod, Valuer
from streamval.stream.contract.schema import parse_timestamp
from streamval.stream.datasets import EventTable, load_sp500
from streamval.stream.replay.markers import (
    MARKET_SHOCKS,
    Marker,
    fed_changes,
    fed_csv_in,
    within,
)


@dataclass
class PanelConfig:
    """What the real-data backtest runs."""

    max_assets: int | None = 60
    batch_size: int = 64
    score_after_events: int = 21  # per asset: the first 21 events warm every method up
    window_before: int = 5  # trading days (events) of each shock window
    window_after: int = 20
    group_attribute: str = "sector"
    engine: EngineSettings = field(default_factory=EngineSettings)
    progress: bool = True

    @classmethod
    def quick(cls) -> PanelConfig:
        return cls(max_assets=12, engine=EngineSettings(bootstrap_assets=10))


@dataclass
class PanelResults:
    """Everything the report needs from a real-data backtest."""

    name: str
    config: PanelConfig
    assets: list[str]
    n_events: int
    overall: pd.DataFrame
    by_group: pd.DataFrame
    shocks: pd.DataFrame
    frames: dict[str, pd.DataFrame]
    alarms: pd.DataFrame
    markers: list[Marker]
    seconds: dict[str, float]


def pick_assets(sectors: pd.Series, n: int | None) -> list[str]:
    """`n` assets spread evenly over the groups: round-robin over groups, alphabetical within.

    >>> pick_assets(pd.Series({"A": "x", "B": "x", "C": "y", "D": "z"}), 3)
    ['A', 'C', 'D']
    """
    by_group = {str(g): sorted(s.index) for g, s in sectors.fillna("").groupby(sectors.fillna(""))}
    order: list[str] = []
    for depth in range(max((len(v) for v in by_group.values()), default=0)):
        order.extend(by_group[g][depth] for g in sorted(by_group) if depth < len(by_group[g]))
    return sorted(order if n is None else order[:n])


def load_sp500_panel(data_dir: str | Path, max_assets: int | None) -> EventTable:
    """The S&P 500 prices of `max_assets` tickers spread over the sectors (all when None)."""
    data_dir = Path(data_dir)
    tickers = [c for c in pd.read_csv(data_dir / "prices.csv", nrows=0).columns if c != "Date"]
    sectors = pd.Series(np.nan, index=tickers, dtype=object)
    sectors_csv = data_dir / "sectors.csv"
    if sectors_csv.is_file():
        known = pd.read_csv(sectors_csv).set_index("ticker")["gics_sector"]
        sectors.update(known[known.index.isin(tickers)])
    return load_sp500(data_dir, tickers=pick_assets(sectors, max_assets))


def sp500_markers(data_dir: Path) -> list[Marker]:
    """The real shocks the report studies: the 2015-08-24 selloff, the first Fed hike since 2006
    (effective date, from `../policy/fed_target_changes.csv` beside the data when present) and
    the 2020-03-16 COVID crash."""
    wanted = {"2015 market selloff", "COVID-19 crash"}
    markers = [m for m in MARKET_SHOCKS if m.name in wanted]
    fed = fed_csv_in(data_dir.parent)
    if fed is not None:
        hikes = fed_changes(fed, tightening_only=True, date_column="fred_effective_date")
        since_2015 = [m for m in hikes if m.ts_ms >= parse_timestamp("2015-01-01")]
        if since_2015:
            markers.append(Marker(since_2015[0].ts_ms, "first Fed hike since 2006", "policy"))
    return sorted(markers)


def methods_for(base: EngineSettings, group_attribute: str) -> list[Valuer]:
    """The methods of the real-data tables: no income method (prices carry no cash flows);
    market peers are the group (sector), multiples are gross returns."""
    return method_suite(
        base, MarketMethod(group_attribute=group_attribute, basis_attribute=None), income=False
    )


def _score_frame(frame: pd.DataFrame, groups: dict[str, str], skip: int) -> pd.DataFrame:
    """Scored rows of one method: relative error vs the asset's previous value, after each
    asset's first `skip` events, with the asset's group ("(none)" without one)."""
    f = frame.copy()
    f["rel"] = (f["value"] - f["valuation"]) / previous_values(f)
    f["group"] = f["asset_id"].map(groups).fillna("(none)")
    seen = f.sort_values(["phase", "pos"], kind="stable").groupby("asset_id").cumcount()
    keep = (seen.reindex(f.index) >= skip) & np.isfinite(f["rel"].to_numpy(dtype=float))
    return f[keep]


def run_panel(
    table: EventTable, name: str, config: PanelConfig, markers: Sequence[Marker] = ()
) -> PanelResults:
    """Every method over the panel under the streaming protocol, and the tables."""
    events = list(table.events())
    groups: dict[str, str] = {}
    if config.group_attribute in table.attributes:
        first = table.frame.drop_duplicates("asset_id")
        groups = {
            str(a): str(g)
            for a, g in zip(first["asset_id"], first[config.group_attribute], strict=True)
            if isinstance(g, str)
        }
    frames: dict[str, pd.DataFrame] = {}
    seconds: dict[str, float] = {}
    alarms = pd.DataFrame()
    for valuer in methods_for(config.engine, config.group_attribute):
        run: Run = streaming_protocol(
            valuer, events, batch_size=config.batch_size, progress=config.progress
        )
        for method, frame in run.frames.items():
            frames[method] = _score_frame(frame, groups, config.score_after_events)
            seconds[method] = run.seconds["stream"]
        if valuer.name == "LSTM-KNN late fusion":
            alarms = run.alarms
    base = frames["persistence"]
    overall_rows, group_rows = [], []
    for method, f in frames.items():
        e = f["rel"].to_numpy(dtype=float)
        overall_rows.append(
            {
                "method": method,
                "mse_pct2": float(np.mean((100 * e) ** 2)),
                "mae_pct": float(np.mean(np.abs(100 * e))),
                "mase": mase(e, base["rel"].to_numpy(dtype=float)),
                "model_share": float(1.0 - f["warming"].mean()),
                "seconds": seconds[method],
            }
        )
        for group, g in f.groupby("group"):
            b = base[base["group"] == group]["rel"].to_numpy(dtype=float)
            group_rows.append(
                {"method": method, "group": group, "mase": mase(g["rel"].to_numpy(dtype=float), b)}
            )
    shocks = shock_windows(frames, markers, config, alarms)
    return PanelResults(
        name=name,
        config=config,
        assets=table.assets,
        n_events=len(events),
        overall=pd.DataFrame(overall_rows),
        by_group=pd.DataFrame(group_rows).pivot(index="group", columns="method", values="mase"),
        shocks=shocks,
        frames=frames,
        alarms=alarms,
        markers=list(markers),
        seconds=seconds,
    )


def shock_windows(
    frames: dict[str, pd.DataFrame],
    markers: Sequence[Marker],
    config: PanelConfig,
    alarms: pd.DataFrame,
) -> pd.DataFrame:
    """Per shock and method: MAE and MASE in [-before, +after] trading days; HC+LSTM alarm delay."""
    base = frames["persistence"]
    days = np.sort(base["ts"].unique())
    rows = []
    for marker in markers:
        at = int(np.searchsorted(days, marker.ts_ms))
        if at >= len(days):
            continue
        lo = days[max(0, at - config.window_before)]
        hi = days[min(len(days) - 1, at + config.window_after)]
        first_alarm = alarms[alarms["ts"] >= days[at]]["ts"].min() if not alarms.empty else math.nan
        delay = (
            int(np.searchsorted(days, first_alarm)) - at
            if isinstance(first_alarm, int | np.integer | float) and math.isfinite(first_alarm)
            else None
        )
        b = base[(base["ts"] >= lo) & (base["ts"] <= hi)]["rel"].to_numpy(dtype=float)
        for method, f in frames.items():
            e = f[(f["ts"] >= lo) & (f["ts"] <= hi)]["rel"].to_numpy(dtype=float)
            rows.append(
                {
                    "shock": marker.name,
                    "date": time.strftime("%Y-%m-%d", time.gmtime(marker.ts_ms / 1000)),
                    "method": method,
                    "mae_pct": float(np.mean(np.abs(100 * e))) if len(e) else math.nan,
                    "mase": mase(e, b),
                    "alarm_delay_days": delay,
                }
            )
    return pd.DataFrame(rows)


def run_sp500(data_dir: str | Path, config: PanelConfig) -> PanelResults:
    """The S&P 500 panel under the streaming protocol, with its real shocks."""
    table = load_sp500_panel(data_dir, config.max_assets)
    return run_panel(
        table,
        "S&P 500 2015-2020",
        config,
        within(
            sp500_markers(Path(data_dir)),
            int(table.frame["ts"].min()),
            int(table.frame["ts"].max()),
        ),
    )
