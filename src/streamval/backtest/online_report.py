"""Reports of online runs: Markdown, JSON and a plot per data set, and the side-by-side summary.

`run_online_backtest` is the entry point of `streamval backtest --online`: it runs each panel
under the online protocol (`backtest/online.py`), scores it (`backtest/online_scores.py`) and
writes `<name>.md`, `<name>.json` and `<name>.png` into the output folder; with more than one
panel also `online.md`, one table of every data set side by side. Every number is computed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamval.backtest.metrics import fmt, markdown_table
from streamval.backtest.online import OnlineConfig, Panel, events_in, run_online
from streamval.backtest.online_scores import ENGINE, EWMA, PERSISTENCE, SEASONAL, rolling, score
from streamval.backtest.plots import online_rolling

PER_ASSET_SHOWN = 25  # larger panels show a summary and the worst assets (all are in the JSON)


@dataclass
class OnlineResult:
    """One data set's scores and where its files were written."""

    name: str
    scores: dict[str, Any]
    markdown: Path


def _plain(x: Any) -> Any:
    """JSON-safe: NaN and infinities become null, floats rounded to 6 significant digits."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    return x


def dump_json(scores: dict[str, Any]) -> str:
    """The scores as JSON: NaN as null, floats to 6 significant digits, one line per top key.

    >>> print(dump_json({"a": 1 / 3, "b": float("nan")}), end="")
    {
    "a":0.333333,
    "b":null
    }
    """
    body = ",\n".join(
        f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in _plain(scores).items()
    )
    return "{\n" + body + "\n}\n"


def share(x: float | None) -> str:
    """A share as a percentage ('-' when missing).

    >>> share(0.8993), share(None)
    ('89.9%', '-')
    """
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _day(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts / 1000))


def _row(scores: dict[str, Any], method: str) -> dict[str, Any]:
    return next((r for r in scores["overall"] if r["method"] == method), {})


def losses(s: dict[str, Any], coverage_target: float) -> list[str]:
    """Plain statements of where the engine loses (empty when it loses nowhere measured)."""
    out = []
    eng, per = _row(s, ENGINE), _row(s, PERSISTENCE)
    if eng.get("mase", 0) > 1.0:
        out.append(f"MAE above persistence overall (MASE {fmt(eng['mase'])}).")
    if eng and per and eng["mse"] > per["mse"]:
        out.append(f"MSE above persistence overall ({fmt(eng['mse'] / per['mse'])}x).")
    for base, key in ((EWMA, "mae_vs_ewma"), (SEASONAL, "mae_vs_seasonal")):
        if eng.get(key) is not None and eng[key] > 1.0:
            out.append(f"MAE above the {base} baseline ({fmt(eng[key])}x).")
    for w in s["windows"]:
        m = w.get(f"{ENGINE} mase")
        if w["scored"] and m is not None and m > 1.0:
            out.append(f"MASE {fmt(m)} over the steps after {w['event']} ({_day(w['ts'])}).")
    worse = [r for r in s["per_asset"] if (r.get(f"{ENGINE} mase") or 0.0) > 1.0]
    if worse:
        out.append(f"MASE above 1 on {len(worse)} of {len(s['per_asset'])} assets.")
    cov = s["interval"]["coverage"]
    if cov is not None and abs(cov - coverage_target) > 0.02:
        out.append(f"interval coverage {share(cov)} (target {share(coverage_target)}).")
    a = s["alarms"]
    if a["listed"] and a["alarms"] and (a["precision"] or 0.0) < 0.5:
        out.append(
            f"{a['hits']} of {a['alarms']} alarms within {s['config']['alarm_within']} steps "
            "after a "
            "listed event."
        )
    away = s["adapting_share_away"]
    if away is not None and away >= 0.2:
        out.append(f"adapting for {share(away)} of the valuations away from the listed events.")
    return out


def _per_asset(s: dict[str, Any]) -> list[str]:
    rows = sorted(s["per_asset"], key=lambda r: -(r.get(f"{ENGINE} mase") or 0.0))
    methods = [r["method"] for r in s["overall"] if r["method"] != PERSISTENCE]
    headers = ["asset", "n", *[f"{m} MASE" for m in methods], "engine MSE / persistence"]
    body = [
        [r["asset_id"], r["n"], *[r.get(f"{m} mase") for m in methods], r["engine mse ratio"]]
        for r in rows
    ]
    lines = []
    if len(rows) > PER_ASSET_SHOWN:
        beats = sum(1 for r in rows if (r.get(f"{ENGINE} mase") or math.inf) < 1.0)
        lines.append(
            f"The engine's MASE is below 1 on {beats} of {len(rows)} assets; the "
            f"{PER_ASSET_SHOWN} worst are shown (every asset is in the JSON)."
        )
        body = body[:PER_ASSET_SHOWN]
    lines += ["", markdown_table(headers, body)]
    return lines


def markdown(s: dict[str, Any]) -> str:
    """The report of one data set, from its scores alone (so it can be rewritten from JSON)."""
    c = s["config"]
    changed = {k: v for k, v in c["engine"].items() if k != "training"}
    coverage_target = c["interval_coverage"]
    season = f"season {c['season']} steps" if c["season"] else "off"
    model_made = share(s["engine_share_model_made"])
    lines = [
        f"# Online backtest: {s['dataset']}",
        "",
        f"Data: {s['description']}. {s['assets']} assets, {s['steps']} steps (event times), "
        f"{s['events']} events.",
        "",
        "Protocol: prequential through `streamval.engine.Engine` (predict, then learn), one "
        "`Engine.process` call per event time in event-time order, one step ahead, sync "
        f"training. The first {c['warmup']:.0%} of the steps ({s['warm_steps']}) are valued "
        "but not scored; values and features are in z-units fitted on those steps only. "
        f"Scored: {s['scored_events']} events. Engine settings: "
        f"{changed if changed else 'defaults'}. Baselines: persistence (last value), EWMA "
        f"(alpha {c['ewma_alpha']}), seasonal naive "
        f"({season}).",
        "",
        f"Command: `{c['command']}`",
        "",
        f"Run time: {s['seconds']:.0f} s, {s['events_per_s']:.0f} events/s. Share of scored "
        f"valuations made by a model (not the warming fallback): {model_made}.",
        "",
        "## Errors (z-units), every method on the same events",
        "",
        markdown_table(
            ["method", "MSE", "MAE", "MASE (vs persistence)", "MAE / EWMA's", "MAE / seasonal's"],
            [
                [r["method"], r["mse"], r["mae"], r["mase"], r["mae_vs_ewma"], r["mae_vs_seasonal"]]
                for r in s["overall"]
            ],
        ),
        "",
        f"Intervals (target {coverage_target:.0%}): coverage "
        f"{share(s['interval']['coverage'])}, mean width {fmt(s['interval']['width'])} z, on "
        f"{share(s['interval']['with_interval'])} of the scored events.",
        "",
        f"Largest valuation move (from the nearer of the asset's last two values): "
        f"{fmt(s['worst_move']['moves'])} typical one-step moves "
        f"(asset {s['worst_move']['asset_id']}, {_day(s['worst_move']['ts'])}).",
        "",
        "## Drift alarms and adaptation",
        "",
    ]
    a = s["alarms"]
    lines.append(
        f"{a['alarms']} alarms after the warm-up ({s['alarms_in_warmup']} in it); "
        + (
            f"{a['hits']} within {c['alarm_within']} steps after one of {a['listed']} listed "
            f"events (precision {fmt(a['precision'])}, events caught {fmt(a['recall'])})."
            if a["listed"]
            else "no listed events to score them against."
        )
        + _large_moves_sentence(s, c["alarm_within"])
        + f" Adapting: {share(s['adapting_share'])} of the scored valuations, "
        f"{share(s['adapting_share_away'])} outside the {c['window']} steps after each listed "
        "event."
    )
    if s["windows"]:
        lines += [
            "",
            f"## The {c['window']} steps after each listed event",
            "",
            markdown_table(
                [
                    "event",
                    "date",
                    "step",
                    "scored",
                    "n",
                    "engine MASE",
                    "EWMA MASE",
                    "coverage",
                    "first alarm (steps after)",
                ],
                [
                    [
                        w["event"],
                        _day(w["ts"]),
                        w["step"],
                        "yes" if w["scored"] else "no (warm-up)",
                        w["n"],
                        w.get(f"{ENGINE} mase"),
                        w.get(f"{EWMA} mase"),
                        w.get("coverage"),
                        w["alarm_delay_steps"],
                    ]
                    for w in s["windows"]
                ],
            ),
        ]
    lines += ["", "## Per asset", "", *_per_asset(s), "", f"![rolling]({s['dataset']}.png)", ""]
    lost = losses(s, coverage_target)
    lines += ["## Where the engine loses", ""]
    lines += [f"- {x}" for x in lost] if lost else ["Nowhere measured here."]
    return "\n".join(lines) + "\n"


def write_run(panel: Panel, config: OnlineConfig, out: Path, command: str) -> OnlineResult:
    """Run one panel and write its Markdown, JSON and plot into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    run = run_online(panel, config)
    s = score(run)
    s["description"] = panel.description
    s["config"] = {
        "warmup": config.warmup,
        "season": config.season,
        "ewma_alpha": config.ewma_alpha,
        "window": config.window,
        "alarm_within": config.alarm_within,
        "engine": config.engine.model_dump(mode="json", exclude_defaults=True),
        "interval_coverage": config.engine.interval_coverage,
        "command": command,
    }
    s = _plain(s)
    online_rolling(
        rolling(run),
        events_in(panel.events, run.steps),
        run.alarms["ts"].tolist(),
        title=f"{panel.name}: engine against persistence",
        window=config.rolling,
        coverage_target=config.engine.interval_coverage,
        path=out / f"{panel.name}.png",
    )
    (out / f"{panel.name}.json").write_text(dump_json(s))
    md = out / f"{panel.name}.md"
    md.write_text(markdown(s))
    return OnlineResult(panel.name, s, md)


def summary(results: Sequence[dict[str, Any]], coverage_target: float, link: str = "") -> str:
    """One table of every data set side by side (each linked to `link` + its report), and
    where the engine loses on each."""
    headers = [
        "data set",
        "assets",
        "scored events",
        "engine MSE / persistence",
        "engine MASE",
        "EWMA MASE",
        "seasonal MASE",
        "engine MAE / EWMA's",
        "coverage",
        "alarm precision",
        "alarms on large moves (chance)",
        "adapting away",
        "worst move",
        "run time (s)",
        "events/s",
    ]
    rows = []
    for s in results:
        eng, per = _row(s, ENGINE), _row(s, PERSISTENCE)
        a = s["alarms"]
        rows.append(
            [
                f"[{s['dataset']}]({link}{s['dataset']}.md)",
                s["assets"],
                s["scored_events"],
                eng["mse"] / per["mse"] if per.get("mse") else None,
                eng["mase"],
                _row(s, EWMA).get("mase"),
                _row(s, SEASONAL).get("mase"),
                eng["mae_vs_ewma"],
                s["interval"]["coverage"],
                f"{a['hits']}/{a['alarms']}" if a["listed"] else "-",
                _large_moves_cell(s),
                s["adapting_share_away"],
                s["worst_move"]["moves"],
                round(s["seconds"]),
                round(s["events_per_s"]),
            ]
        )
    lines = [markdown_table(headers, rows), "", "Where the engine loses:", ""]
    for s in results:
        lost = losses(s, coverage_target)
        lines.append(f"- {s['dataset']}: " + (" ".join(lost) if lost else "nowhere measured."))
    return "\n".join(lines) + "\n"


def _large_moves_cell(s: dict[str, Any]) -> str:
    big = s.get("alarms_on_large_moves")
    if not big or not big["alarms"]:
        return "-"
    return f"{big['hits']}/{big['alarms']} ({fmt(big['chance'])})"


def _large_moves_sentence(s: dict[str, Any], within: int) -> str:
    """The alarms against the data's own largest common moves (absent in older result files)."""
    big = s.get("alarms_on_large_moves")
    if not big or not big["alarms"]:
        return ""
    return (
        f" Against the data's own shocks (the {share(big['share'])} of steps after the warm-up "
        f"with the largest common move, {big['listed']} steps): {big['hits']} of "
        f"{big['alarms']} alarms within {within} steps after one (precision "
        f"{fmt(big['precision'])}; alarms at random steps would get {fmt(big['chance'])}), "
        f"{fmt(big['recall'])} of those steps caught."
    )


def run_online_backtest(
    panels: Sequence[Panel], config: OnlineConfig, out: Path, command: str
) -> list[OnlineResult]:
    """Run and report every panel; with several, also `online.md`, the side-by-side table."""
    results = [write_run(panel, config, out, command) for panel in panels]
    if len(results) > 1:
        table = summary([r.scores for r in results], config.engine.interval_coverage)
        (out / "online.md").write_text(f"# Online backtest\n\nCommand: `{command}`\n\n{table}")
    return results
