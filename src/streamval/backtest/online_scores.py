"""Scores of an online run: the engine against persistence, EWMA and seasonal-naive baselines.

All errors are in the run's z-units (per asset, fitted on the warm-up). Every method is scored
on the same events: after the warm-up, where the asset has a previous value, the engine a
valuation and (with a season) the seasonal baseline a value. MASE = MAE / persistence's MAE on
those events (below 1 beats persistence); `mae_vs_ewma` and `mae_vs_seasonal` are the same ratio
against the other baselines. Alarms are scored against the listed events: a hit is an alarm at
most `alarm_within` steps after one. They are also scored against the largest common moves of
the data itself (`large_moves`: the top 1 % of steps), beside the precision random alarms would
get. Adaptation "away" is the share of scored valuations made
while adapting outside every event's window (the `window` steps from the event on).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from streamval.backtest.metrics import mase
from streamval.backtest.online import OnlineRun, events_in

ENGINE = "engine"
PERSISTENCE = "persistence"
EWMA = "EWMA"
SEASONAL = "seasonal naive"
# The share of steps after the warm-up that count as large common moves (`large_moves`).
LARGE_MOVE_SHARE = 0.01


def baselines(frame: pd.DataFrame, ewma_alpha: float, season: int) -> pd.DataFrame:
    """Per event, each baseline's forecast from the asset's earlier values only."""
    by_asset = frame.groupby("asset_id", sort=False)["value"]
    out = pd.DataFrame(index=frame.index)
    out[PERSISTENCE] = by_asset.shift(1)
    out[EWMA] = by_asset.transform(lambda s: s.ewm(alpha=ewma_alpha, adjust=False).mean().shift(1))
    if season:
        out[SEASONAL] = by_asset.shift(season)
    return out


def forecasts(run: OnlineRun) -> tuple[pd.DataFrame, np.ndarray]:
    """Every method's forecast per event (columns: methods) and the mask of scored events."""
    frame = run.frame
    out = baselines(frame, run.config.ewma_alpha, run.config.season)
    out.insert(0, ENGINE, frame["valuation"])
    mask = frame["scored"].to_numpy() & out.notna().all(axis=1).to_numpy()
    return out, mask


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(b) else math.nan


def method_rows(values: np.ndarray, preds: pd.DataFrame) -> list[dict[str, Any]]:
    """MSE, MAE, MASE and the MAE ratios to EWMA and seasonal for every method."""
    errors = {m: values - preds[m].to_numpy(dtype=float) for m in preds.columns}
    base_mae = {m: float(np.mean(np.abs(e))) if len(e) else math.nan for m, e in errors.items()}
    rows = []
    for method, e in errors.items():
        mae = base_mae[method]
        rows.append(
            {
                "method": method,
                "n": len(e),
                "mse": float(np.mean(e**2)) if len(e) else math.nan,
                "mae": mae,
                "mase": mase(e, errors[PERSISTENCE]) if len(e) else math.nan,
                "mae_vs_ewma": _ratio(mae, base_mae[EWMA]),
                "mae_vs_seasonal": _ratio(mae, base_mae.get(SEASONAL, math.nan)),
            }
        )
    return rows


def coverage(frame: pd.DataFrame) -> dict[str, float]:
    """Share of values inside the engine's interval, mean width, share of events with one."""
    lo, hi = frame["lower"].to_numpy(dtype=float), frame["upper"].to_numpy(dtype=float)
    has = np.isfinite(lo) & np.isfinite(hi)
    v = frame["value"].to_numpy(dtype=float)[has]
    return {
        "coverage": float(np.mean((v >= lo[has]) & (v <= hi[has]))) if has.any() else math.nan,
        "width": float(np.mean(hi[has] - lo[has])) if has.any() else math.nan,
        "with_interval": float(np.mean(has)) if len(has) else math.nan,
    }


def alarm_scores(
    alarm_steps: np.ndarray, event_steps: list[int], warm: int, within: int
) -> dict[str, float]:
    """Alarms after the warm-up against the listed events' steps.

    `precision`: share of alarms at most `within` steps after a listed event; `recall`: share of
    listed events (after the warm-up) with such an alarm.

    >>> alarm_scores(np.array([1, 11, 13, 40]), [10, 30], warm=5, within=5)
    {'alarms': 3, 'hits': 2, 'precision': 0.6666666666666666, 'recall': 0.5, 'listed': 2}
    """
    a = np.asarray(alarm_steps, dtype=np.int64)
    a = a[a >= warm]
    listed = [e for e in event_steps if e >= warm]
    ev = np.asarray(event_steps, dtype=np.int64)
    hit = np.array([bool(np.any((x - ev >= 0) & (x - ev <= within))) for x in a], dtype=bool)
    caught = [bool(np.any((a - e >= 0) & (a - e <= within))) for e in listed]
    return {
        "alarms": len(a),
        "hits": int(hit.sum()),
        "precision": float(hit.mean()) if len(a) else math.nan,
        "recall": float(np.mean(caught)) if listed else math.nan,
        "listed": len(listed),
    }


def large_moves(run: OnlineRun, share: float = LARGE_MOVE_SHARE) -> list[int]:
    """The steps after the warm-up whose common move is among the largest `share` of them (at
    least one): the mean, over the assets that reported, of the one-step change in each asset's
    typical moves. What a shock is for the detector (a crash or a tightening moves many assets
    at once), measured from the data alone, so alarms can be scored where no list is complete."""
    f = run.frame
    typical = f["asset_id"].map(run.scale["typical_move"]).to_numpy(dtype=float)
    change = f.groupby("asset_id", sort=False)["value"].diff().to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        moves = pd.Series(change / typical).replace([np.inf, -np.inf], np.nan)
    common = moves.groupby(f["step"].to_numpy()).mean().dropna()
    common = common[common.index >= run.warm_steps].abs()
    if common.empty:
        return []
    n = max(1, round(share * len(common)))
    return sorted(int(i) for i in common.nlargest(n).index)


def chance_precision(n_steps: int, marked: list[int], warm: int, within: int) -> float:
    """The precision of alarms placed at random steps after the warm-up: the share of those steps
    at most `within` steps after a marked one.

    >>> chance_precision(20, [10], warm=0, within=1)
    0.1
    """
    steps = np.arange(warm, n_steps)
    if not len(steps):
        return math.nan
    return float(near_events(steps, marked, within + 1).mean())


def near_events(steps: np.ndarray, event_steps: list[int], window: int) -> np.ndarray:
    """Mask of `steps` inside some event's window [event, event + window).

    >>> near_events(np.array([0, 3, 4, 9]), [3], 2).tolist()
    [False, True, True, False]
    """
    near = np.zeros(len(steps), dtype=bool)
    for e in event_steps:
        near |= (steps >= e) & (steps < e + window)
    return near


def worst_move(run: OnlineRun, mask: np.ndarray) -> dict[str, Any]:
    """The scored valuation furthest from the nearer of the asset's last two values, in typical
    one-step moves (the asset's mean |change| over the warm-up). The nearer of two, so that
    valuing through a one-row spike (back at the clean level) is not counted as a move."""
    f = run.frame[mask]
    if f.empty:
        return {"moves": math.nan, "asset_id": None, "ts": None}
    by_asset = run.frame.groupby("asset_id", sort=False)["value"]
    last = by_asset.shift(1)[mask].to_numpy(dtype=float)
    before = by_asset.shift(2)[mask].to_numpy(dtype=float)
    before = np.where(np.isnan(before), last, before)
    typ = f["asset_id"].map(run.scale["typical_move"]).to_numpy(dtype=float)
    v = f["valuation"].to_numpy(dtype=float)
    move = np.minimum(np.abs(v - last), np.abs(v - before))
    ratio = np.where(typ > 0, move / np.where(typ > 0, typ, 1.0), 0.0)
    at = int(np.argmax(ratio))
    return {
        "moves": float(ratio[at]),
        "asset_id": str(f["asset_id"].iloc[at]),
        "ts": int(f["ts"].iloc[at]),
    }


def score(run: OnlineRun) -> dict[str, Any]:
    """Every number of the report (plain JSON types), plus the per-asset and window tables."""
    cfg = run.config
    preds, mask = forecasts(run)
    f = run.frame[mask]
    values = f["value"].to_numpy(dtype=float)
    scored_preds = preds[mask]
    overall = method_rows(values, scored_preds)
    per_asset = []
    for asset, idx in f.groupby("asset_id", sort=True).groups.items():
        rows = method_rows(f.loc[idx, "value"].to_numpy(float), scored_preds.loc[idx])
        entry: dict[str, Any] = {"asset_id": str(asset), "n": rows[0]["n"]}
        for r in rows:
            entry[f"{r['method']} mase"] = r["mase"]
        entry["engine mse ratio"] = _ratio(rows[0]["mse"], rows[1]["mse"])
        entry["coverage"] = coverage(f.loc[idx])["coverage"]
        per_asset.append(entry)
    listed = events_in(run.panel.events, run.steps)
    event_steps = [s for _, s in listed]
    steps = f["step"].to_numpy()
    alarm_steps = run.alarms["step"].to_numpy() if not run.alarms.empty else np.array([])
    near = near_events(steps, event_steps, cfg.window)
    large = large_moves(run)
    adapting = f["adapting"].to_numpy(dtype=bool)
    windows = []
    for marker, at in listed:
        in_window = (steps >= at) & (steps < at + cfg.window)
        after = alarm_steps[alarm_steps >= at]
        row: dict[str, Any] = {
            "event": marker.name,
            "ts": marker.ts_ms,
            "step": at,
            "scored": bool(at >= run.warm_steps),
            "n": int(in_window.sum()),
            "alarm_delay_steps": int(after.min() - at) if len(after) else None,
        }
        if in_window.any():
            for r in method_rows(values[in_window], scored_preds[in_window]):
                row[f"{r['method']} mase"] = r["mase"]
            row.update(coverage(f[in_window]))
        windows.append(row)
    n_events = len(run.frame)
    return {
        "dataset": run.panel.name,
        "assets": int(run.frame["asset_id"].nunique()),
        "clusters": int(run.frame.loc[run.frame["cluster"] >= 0, "cluster"].nunique()),
        "steps": len(run.steps),
        "warm_steps": run.warm_steps,
        "events": n_events,
        "scored_events": int(mask.sum()),
        "engine_share_model_made": float(1.0 - f["warming"].mean()) if len(f) else math.nan,
        "seconds": run.seconds,
        "events_per_s": n_events / run.seconds if run.seconds > 0 else math.nan,
        "overall": overall,
        "interval": coverage(f),
        "alarms": alarm_scores(alarm_steps, event_steps, run.warm_steps, cfg.alarm_within),
        "alarms_in_warmup": int((alarm_steps < run.warm_steps).sum()),
        "alarms_on_large_moves": {
            **alarm_scores(alarm_steps, large, run.warm_steps, cfg.alarm_within),
            "share": LARGE_MOVE_SHARE,
            "chance": chance_precision(len(run.steps), large, run.warm_steps, cfg.alarm_within),
        },
        "adapting_share": float(adapting.mean()) if len(adapting) else math.nan,
        "adapting_share_away": float(adapting[~near].mean()) if (~near).any() else math.nan,
        "worst_move": worst_move(run, mask),
        "windows": windows,
        "per_asset": per_asset,
    }


def rolling(run: OnlineRun) -> pd.DataFrame:
    """Per scored step: rolling (over `config.rolling` steps) engine MASE and coverage."""
    preds, mask = forecasts(run)
    f = run.frame[mask]
    lo, hi = f["lower"].to_numpy(float), f["upper"].to_numpy(float)
    v = f["value"].to_numpy(float)
    has = np.isfinite(lo) & np.isfinite(hi)
    per_step = (
        pd.DataFrame(
            {
                "step": f["step"].to_numpy(),
                "ts": f["ts"].to_numpy(),
                "engine": np.abs(v - preds[ENGINE][mask].to_numpy(float)),
                "persistence": np.abs(v - preds[PERSISTENCE][mask].to_numpy(float)),
                "inside": has & (v >= np.where(has, lo, 0.0)) & (v <= np.where(has, hi, 0.0)),
                "has": has,
            }
        )
        .groupby("step")
        .agg({"ts": "first", "engine": "sum", "persistence": "sum", "inside": "sum", "has": "sum"})
    )
    r = per_step[["engine", "persistence", "inside", "has"]].rolling(run.config.rolling, 1).sum()
    return pd.DataFrame(
        {
            "ts": per_step["ts"],
            "mase": r["engine"] / r["persistence"].where(r["persistence"] > 0),
            "coverage": r["inside"] / r["has"].where(r["has"] > 0),
        }
    )
