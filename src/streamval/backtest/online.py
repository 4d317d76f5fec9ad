"""The online (prequential) protocol: predict, then learn, one pass in event-time order.

The standard protocol of the online-forecasting literature, run through the same `Engine` the
consumer runs: the table's distinct event times are the steps; each step's events go to one
`Engine.process` call (every event is valued before its value is learnt from, one step ahead).
The first `warmup` share of the steps is valued and learnt from but not scored, and the per-asset
normalisation (z-units: mean and std of the asset's warm-up values; features per column) is fitted
on those steps only, so nothing of the scored future leaks into the units. Training is `"sync"`
so that a run is deterministic. Scores: `backtest/online_scores.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from streamval.config import EngineSettings
from streamval.engine import Engine, set_torch_threads
from streamval.stream.datasets import EventTable
from streamval.stream.replay.markers import Marker


@dataclass
class OnlineConfig:
    """What the online protocol runs and how it is scored (one configuration for every table)."""

    warmup: float = 0.2  # share of the steps (distinct event times) valued but not scored
    season: int = 0  # seasonal-naive baseline's period in steps (24 for hourly data); 0 = off
    ewma_alpha: float = 0.3  # EWMA baseline: level_t = a * v_t + (1 - a) * level_{t-1}
    window: int = 20  # steps after each listed event that form its window
    alarm_within: int = 5  # an alarm within this many steps after a listed event is a hit
    rolling: int = 50  # steps of the plot's rolling MASE and coverage
    engine: EngineSettings = field(default_factory=EngineSettings)
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup = {self.warmup} must be within [0, 1)")
        if self.season < 0 or self.window < 1 or self.alarm_within < 0:
            raise ValueError("season >= 0, window >= 1 and alarm_within >= 0 are required")
        if not 0.0 < self.ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha = {self.ewma_alpha} must be within (0, 1]")


@dataclass
class Panel:
    """A table to run online, with the dated events its alarms and windows are scored against."""

    name: str
    table: EventTable
    events: list[Marker] = field(default_factory=list)
    description: str = ""


@dataclass
class OnlineRun:
    """One run's raw output: a row per event of the table (z-units), the alarms, the timing.

    `frame` columns: asset_id, ts, step, value, valuation, lower, upper (NaN without an interval),
    warming, adapting, cluster, scored (step after the warm-up). `alarms`: ts, step, cluster,
    detector. `steps`: the distinct event times, in order.
    """

    panel: Panel
    config: OnlineConfig
    frame: pd.DataFrame
    alarms: pd.DataFrame
    steps: np.ndarray
    warm_steps: int
    scale: pd.DataFrame  # per asset: mean, std (the z-units) and typical |one-step change|
    seconds: float


def warm_steps(n_steps: int, warmup: float) -> int:
    """Steps in the warm-up.

    >>> warm_steps(10, 0.2), warm_steps(10, 0.0)
    (2, 0)
    """
    return math.floor(warmup * n_steps)


def normalise(table: EventTable, until_ts: int | None) -> tuple[EventTable, pd.DataFrame]:
    """The table in z-units fitted on events with ts < `until_ts` (None: no normalisation).

    Values per asset, features per column; a zero or undefined std counts as 1, and an asset
    without warm-up values keeps its own units (mean 0, std 1). Returns the table and the
    per-asset `mean` and `std`.
    """
    frame = table.frame.copy()
    assets = pd.Index(table.assets, name="asset_id")
    scale = pd.DataFrame({"mean": 0.0, "std": 1.0}, index=assets)
    if until_ts is None:
        return table, scale
    warm = frame[frame["ts"] < until_ts]
    stats = warm.groupby("asset_id")["value"].agg(["mean", "std"])
    stats["std"] = stats["std"].where(stats["std"] > 0, 1.0)
    scale.update(stats.dropna(subset=["mean"]).fillna({"std": 1.0}))
    mean = frame["asset_id"].map(scale["mean"]).to_numpy(dtype=float)
    std = frame["asset_id"].map(scale["std"]).to_numpy(dtype=float)
    frame["value"] = (frame["value"].to_numpy(dtype=float) - mean) / std
    for name in table.features:
        col = warm[name].to_numpy(dtype=float)
        mu = float(np.nanmean(col)) if np.isfinite(col).any() else 0.0
        sd = float(np.nanstd(col)) if np.isfinite(col).sum() > 1 else 1.0
        frame[name] = (frame[name] - mu) / (sd if sd > 0 else 1.0)
    return table.with_frame(frame), scale


def _typical_moves(frame: pd.DataFrame, scored: np.ndarray) -> pd.Series:
    """Per asset: mean |one-step change| (z-units) over its warm-up events (all events when it
    has fewer than two there)."""
    change = frame.groupby("asset_id", sort=False)["value"].diff().abs()
    warm = change[~scored].groupby(frame["asset_id"][~scored]).mean()
    every = change.groupby(frame["asset_id"]).mean()
    return warm.reindex(every.index).fillna(every).rename("typical_move")


def run_online(panel: Panel, config: OnlineConfig) -> OnlineRun:
    """Stream the panel through a fresh `Engine` one step (event time) per `process` call."""
    raw_ts = panel.table.frame["ts"].to_numpy()
    steps = np.unique(raw_ts)
    n_warm = warm_steps(len(steps), config.warmup)
    until = int(steps[n_warm]) if 0 < n_warm < len(steps) else None
    table, scale = normalise(panel.table, until)
    events = list(table.events())
    frame = table.frame.loc[:, ["asset_id", "ts", "value"]].copy()
    step_of = np.searchsorted(steps, frame["ts"].to_numpy())
    frame["step"] = step_of
    n = len(events)
    valuation = np.full(n, np.nan)
    lower = np.full(n, np.nan)
    upper = np.full(n, np.nan)
    warming = np.ones(n, dtype=bool)
    adapting = np.zeros(n, dtype=bool)
    cluster = np.full(n, -1, dtype=np.int64)
    alarms: list[tuple[int, int, int, str]] = []
    settings = config.engine.model_copy(update={"training": "sync"})
    set_torch_threads(settings)
    engine = Engine(settings)
    bounds = np.flatnonzero(np.diff(step_of)) + 1
    starts = np.concatenate([[0], bounds]).astype(int)
    stops = np.concatenate([bounds, [n]]).astype(int)
    bar = tqdm(
        total=n, desc=f"{panel.name} online", unit="ev", disable=not config.progress, mininterval=2
    )
    t0 = time.perf_counter()
    try:
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            result = engine.process(events[start:stop])
            index: dict[str, int] = {}
            for i in range(start, stop):
                index.setdefault(events[i].asset_id, i)
            for v in result.valuations:
                at = index[v.asset_id]
                valuation[at] = v.valuation
                warming[at] = v.warming
                adapting[at] = v.adapting
                cluster[at] = v.cluster
                if v.lower is not None and v.upper is not None:
                    lower[at], upper[at] = v.lower, v.upper
            for alarm in result.drift:
                at_step = int(np.searchsorted(steps, alarm.ts_ms))
                alarms.append((alarm.ts_ms, at_step, alarm.cluster, alarm.detector))
            bar.update(stop - start)
    finally:
        seconds = time.perf_counter() - t0
        bar.close()
        engine.close()
    frame["valuation"] = valuation
    frame["lower"] = lower
    frame["upper"] = upper
    frame["warming"] = warming
    frame["adapting"] = adapting
    frame["cluster"] = cluster
    frame["scored"] = step_of >= n_warm
    scale = scale.join(_typical_moves(frame, frame["scored"].to_numpy()))
    return OnlineRun(
        panel=panel,
        config=config,
        frame=frame,
        alarms=pd.DataFrame(alarms, columns=["ts", "step", "cluster", "detector"]),
        steps=steps,
        warm_steps=n_warm,
        scale=scale,
        seconds=seconds,
    )


def events_in(markers: Sequence[Marker], steps: np.ndarray) -> list[tuple[Marker, int]]:
    """Each listed event inside the stream with its step: the first step at or after it.

    >>> m = [Marker(5, "a", "x"), Marker(50, "late", "x")]
    >>> [(e.name, s) for e, s in events_in(m, np.array([1, 4, 6, 9]))]
    [('a', 2)]
    """
    out = []
    for marker in sorted(markers):
        at = int(np.searchsorted(steps, marker.ts_ms))
        if marker.ts_ms >= steps[0] and at < len(steps):
            out.append((marker, at))
    return out
