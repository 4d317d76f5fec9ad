"""Tables for the online protocol: the four development data sets by name, any file, event lists.

Named data sets live under one data folder (`--data-dir`, or STREAMVAL_SHARED_DATA), laid out
as the shared data: `sp500_2015_2020/` (wide prices, sectors; shocks from its README and
`policy/fed_target_changes.csv`), `exchange_rate/` and `ett_h1/` (channel panels: each column an
asset, the other columns' previous values its features), and the generated credit book (no
folder; its event is the month-18 tightening).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from streamval.backtest.online import Panel
from streamval.backtest.realdata import load_sp500_panel
from streamval.errors import ConfigError, DataError
from streamval.stream.contract.schema import parse_timestamp
from streamval.stream.datasets import CreditPortfolioParams, EventTable, generate
from streamval.stream.datasets.readers import (
    parse_numbers,
    parse_times,
    read_frame,
    read_long_table,
    read_wide_prices,
)
from streamval.stream.replay.markers import (
    MARKET_SHOCKS,
    Marker,
    fed_changes,
    fed_csv_in,
    within,
)

NAMED = ("sp500_2015_2020", "exchange_rate", "ett_h1", "credit")

# The sp500 README's shocks not in MARKET_SHOCKS ("2018-12 selloff": its worst week, dated by
# Christmas Eve 2018, the low); the Fed's emergency cuts come from the policy file.
README_SHOCKS = (Marker(parse_timestamp("2018-12-24"), "2018 December selloff", "market-shock"),)


def data_dir(given: Path | None) -> Path:
    """The shared data folder: `given`, else STREAMVAL_SHARED_DATA; a clear error without one."""
    if given is not None:
        return given
    env = os.environ.get("STREAMVAL_SHARED_DATA")
    if env:
        return Path(env)
    raise ConfigError("named data sets need --data-dir (the shared data folder)")


def channel_panel(path: Path, date_col: str = "date") -> EventTable:
    """A wide table whose every column is an asset (a sensor channel, a currency), with the other
    columns' previous values as its features (column `<name>_prev`; its own left out)."""
    raw = read_frame(path)
    if date_col not in raw.columns:
        raise DataError(f"{path}: missing column {date_col!r}; columns: {list(raw.columns)[:5]}")
    ts = parse_times(raw[date_col], date_col, path)
    names = [str(c) for c in raw.columns if c != date_col]
    values = pd.DataFrame({n: parse_numbers(raw[n], n, path) for n in names}, index=ts)
    prev = values.shift(1)
    parts = []
    for name in names:
        part = pd.DataFrame({"asset_id": name, "ts": ts, "value": values[name].to_numpy()})
        for other in names:
            col = prev[other].to_numpy(dtype=float)
            part[f"{other}_prev"] = np.full(len(ts), np.nan) if other == name else col
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    frame = frame[frame["value"].notna()]
    return EventTable.from_frame(frame, features=[f"{n}_prev" for n in names])


def sp500_events(folder: Path) -> list[Marker]:
    """The README's shocks and every Fed target change (announcement dates)."""
    markers = list(MARKET_SHOCKS) + list(README_SHOCKS)
    fed = fed_csv_in(folder.parent)
    if fed is not None:
        markers += fed_changes(fed)
    return sorted(markers)


def read_events(path: Path) -> list[Marker]:
    """Dated events from a CSV: the Fed file's layout (announce_date, change_bp), or any table
    with a `date` (or `ts`) column and an optional `name` column."""
    raw = read_frame(path)
    if "change_bp" in raw.columns and "announce_date" in raw.columns:
        return fed_changes(path)
    column = next((c for c in ("date", "ts", "event_date") if c in raw.columns), None)
    if column is None:
        raise DataError(f"{path}: no date column (date, ts); columns: {list(raw.columns)}")
    ts = parse_times(raw[column], column, path)
    names = raw["name"].astype(str).tolist() if "name" in raw.columns else None
    return sorted(
        Marker(int(t), names[i] if names else f"event {i + 1}", "listed", source=path.name)
        for i, t in enumerate(ts.tolist())
    )


def named_panel(
    name: str, folder: Path, max_assets: int | None, customers: int | None = None
) -> Panel:
    """One of the four development data sets under `folder` (the shared data folder)."""
    if name == "sp500_2015_2020":
        sub = folder if (folder / "prices.csv").is_file() else folder / name
        table = load_sp500_panel(sub, max_assets)
        shown = "all 471" if max_assets is None else f"{len(table.assets)} (spread over sectors)"
        return Panel(
            name,
            table,
            sp500_events(sub),
            f"S&P 500 daily adjusted closes 2015-2020, {shown} stocks; features: the previous "
            "day's log return and 20-day volatility",
        )
    if name == "exchange_rate":
        table = channel_panel(folder / name / "exchange_rate.csv")
        return Panel(
            name,
            table,
            [],
            "eight daily exchange rates (positional dates: no real events can be dated), with "
            "the real one-row glitch of column 4; features: the other currencies' previous values",
        )
    if name == "ett_h1":
        table = channel_panel(folder / name / "ETTh1.csv")
        return Panel(
            name,
            table,
            [],
            "ETTh1, seven hourly transformer channels; features: the other channels' previous "
            "values",
        )
    if name == "credit":
        book = generate(CreditPortfolioParams(), n_customers=customers)
        shock = [] if book.shock_ts_ms is None else [book.shock_ts_ms]
        events = [Marker(ts, "month-18 policy tightening", "tightening") for ts in shock]
        return Panel(
            name,
            book.table,
            events,
            f"the generated credit book ({len(book.table.assets)} customers, 24 months, all "
            "customers in one stream)",
        )
    raise ConfigError(f"unknown data set {name!r}; expected one of {NAMED} or a file")


def file_panel(path: Path, *, wide: bool, channels: bool, group_attribute: str = "sector") -> Panel:
    """A long table, a wide price table (`wide`) or a channel table (`channels`) from a file."""
    if channels:
        table = channel_panel(path)
    elif wide:
        table = read_wide_prices(path)
    else:
        table = read_long_table(path)
    return Panel(path.stem, table, [], f"{path} ({len(table.assets)} assets)")


def restrict(panel: Panel, markers: list[Marker]) -> Panel:
    """The panel with the given events added, keeping those inside its time span."""
    ts = panel.table.frame["ts"]
    keep = within([*panel.events, *markers], int(ts.min()), int(ts.max()))
    return Panel(panel.name, panel.table, sorted(set(keep)), panel.description)
