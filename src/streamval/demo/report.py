"""The demo report, built from what the engine published: the valuations and metrics topics.

After the service has stopped, `read_json` consumes both topics back from the beginning (no
consumer group, so nothing is committed). `analyse` turns them into a `Summary`:

* every valuation (one per replayed event) with its cluster, lr and error at valuation time;
* per cluster and month: the mean relative absolute error |value - valuation| / |value| (the
  credit book's values span two orders of magnitude, so an absolute MAE would be dominated by the
  richest customers) and the mean learning rate;
* the drift alarms (`kind: "drift"` on the metrics topic) with their delay after the shock;
* which cluster holds the shocked (high-risk) customers: the cluster their valuations carried at
  the shock month, counted from the valuations topic.

The only facts taken from the data set rather than from the topics are the shock time and which
customers it hits (the engine never sees either). `write_report` writes `report.md`,
`summary.json` (the machine-readable form, read by the tests) and `errors.png`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamval.config import EngineSettings, Settings
from streamval.stream.kafka.reader import read_topic

__all__ = [
    "ALARM_DELAY_BOUND_MONTHS",
    "DemoFacts",
    "Summary",
    "analyse",
    "read_json",
    "write_report",
]

# An alarm counts as detecting the shock if it fires in the shock month or in the next two: with
# monthly events the detector needs the shocked errors of one month, and ADWIN's confidence
# bound may need a second month when a cluster holds few shocked customers.
ALARM_DELAY_BOUND_MONTHS = 2
# Months either side of the shock compared in the "before / after" error columns.
_WINDOW_MONTHS = 3
# Reading a topic back stops after this long without reaching its end offsets: reading 120,000
# small messages takes seconds, so a minute means the cluster is unreachable.
READ_TIMEOUT_S = 60.0
PLOT_FILE = "errors.png"


@dataclass(frozen=True)
class DemoFacts:
    """What the report needs to know besides the topics: the run and the data set's shock."""

    customers: int
    events: int
    shock_ts_ms: int | None
    month_ts_ms: tuple[int, ...]
    shocked_assets: frozenset[str]
    engine: EngineSettings
    bootstrap: str
    local_broker_home: str | None
    metrics_url: str | None
    quick: bool
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Alarm:
    """A drift alarm read back from the metrics topic."""

    cluster: int
    ts_ms: int
    when: str
    month: int
    delay_months: int | None
    error_before: float
    error_after: float
    lr: float


@dataclass(frozen=True)
class ClusterSummary:
    """One cluster over the whole run."""

    cluster: int
    events: int
    assets_at_shock: int
    shocked_at_shock: int
    error_before: float | None
    error_after: float | None
    alarms: int


@dataclass
class Summary:
    """The outcome of the demo, as written to summary.json."""

    customers: int
    events: int
    valued: int
    all_valued: bool
    shock_ts_ms: int | None
    shock_time: str | None
    shock_month: int | None
    shocked_customers: int
    shocked_by_cluster: dict[int, int]
    shocked_cluster: int | None
    alarms: list[Alarm]
    alarm_delay_bound_months: int
    shock_detected: bool
    first_shock_alarm: Alarm | None
    clusters: list[ClusterSummary]
    engine: dict[str, Any]
    engine_is_paper_default: bool
    bootstrap: str
    local_broker_home: str | None
    metrics_url: str | None
    quick: bool
    seconds: dict[str, float]
    monthly: pd.DataFrame = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("monthly")
        out["shocked_by_cluster"] = {str(k): v for k, v in self.shocked_by_cluster.items()}
        return out


def read_json(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every JSON message of `topic`, from the beginning to the current end, in offset order."""
    return [json.loads(r.value) for r in read_topic(settings, topic, timeout_s=READ_TIMEOUT_S)]


def analyse(
    valuations: list[dict[str, Any]], metrics: list[dict[str, Any]], facts: DemoFacts
) -> Summary:
    """Turn the published valuations and metrics into the demo's `Summary`."""
    frame = _valuation_frame(valuations)
    months = np.asarray(facts.month_ts_ms, dtype=np.int64)
    shock = facts.shock_ts_ms
    shock_month = _month_index(months, shock) if shock is not None else None
    monthly = _monthly(frame)

    shocked_by_cluster: dict[int, int] = {}
    assets_at_shock: dict[int, int] = {}
    if shock is not None:
        at_shock = frame[frame["ts"] == shock]
        assets_at_shock = {int(k): int(v) for k, v in at_shock["cluster"].value_counts().items()}
        hit = at_shock[at_shock["asset_id"].isin(facts.shocked_assets)]
        shocked_by_cluster = dict(Counter(int(c) for c in hit["cluster"]).most_common())
    shocked_cluster = next(iter(shocked_by_cluster), None)

    alarms = [_alarm(m, months, shock_month) for m in metrics if m.get("kind") == "drift"]
    alarms.sort(key=lambda a: (a.ts_ms, a.cluster))
    detecting = [
        a
        for a in alarms
        if a.cluster == shocked_cluster
        and a.delay_months is not None
        and 0 <= a.delay_months <= ALARM_DELAY_BOUND_MONTHS
    ]
    alarm_counts = Counter(a.cluster for a in alarms)
    clusters = [
        ClusterSummary(
            cluster=cid,
            events=int((frame["cluster"] == cid).sum()),
            assets_at_shock=assets_at_shock.get(cid, 0),
            shocked_at_shock=shocked_by_cluster.get(cid, 0),
            error_before=_window_error(monthly, cid, months, shock_month, before=True),
            error_after=_window_error(monthly, cid, months, shock_month, before=False),
            alarms=alarm_counts.get(cid, 0),
        )
        for cid in sorted(int(c) for c in frame["cluster"].unique())
    ]
    valued = int(frame.drop_duplicates(["asset_id", "ts"]).shape[0])
    engine = facts.engine.model_dump(mode="json")
    return Summary(
        customers=facts.customers,
        events=facts.events,
        valued=valued,
        all_valued=valued == facts.events,
        shock_ts_ms=shock,
        shock_time=_iso(shock) if shock is not None else None,
        shock_month=shock_month,
        shocked_customers=len(facts.shocked_assets),
        shocked_by_cluster=shocked_by_cluster,
        shocked_cluster=shocked_cluster,
        alarms=alarms,
        alarm_delay_bound_months=ALARM_DELAY_BOUND_MONTHS,
        shock_detected=bool(detecting),
        first_shock_alarm=detecting[0] if detecting else None,
        clusters=clusters,
        engine=engine,
        engine_is_paper_default=engine == EngineSettings().model_dump(mode="json"),
        bootstrap=facts.bootstrap,
        local_broker_home=facts.local_broker_home,
        metrics_url=facts.metrics_url,
        quick=facts.quick,
        seconds=dict(facts.seconds),
        monthly=monthly,
    )


def write_report(summary: Summary, out: Path) -> Path:
    """Write report.md, summary.json and the plot into `out`; return the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    _plot(summary, out / PLOT_FILE)
    (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    report = out / "report.md"
    report.write_text(_markdown(summary))
    return report


# -- analysis ------------------------------------------------------------------------------------


def _valuation_frame(valuations: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["asset_id", "ts", "cluster", "valuation", "value", "error", "lr", "warming"]
    frame = pd.DataFrame.from_records(valuations, columns=columns)
    frame["cluster"] = frame["cluster"].astype(int)
    value = frame["value"].astype(float)
    error = frame["error"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["rel_error"] = np.where(value.abs() > 0, error.abs() / value.abs(), np.nan)
    return frame


def _monthly(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cluster and event time: events, mean relative absolute error, mean lr.

    Each asset's first valuation is left out of the error: with no value known yet it is the
    cluster's median value, a guess about the level, not a valuation of a change.
    """
    frame = frame.assign(rel_error=frame["rel_error"].where(frame["asset_id"].duplicated()))
    grouped = frame.groupby(["cluster", "ts"])
    monthly = grouped.agg(
        events=("asset_id", "size"), rel_error=("rel_error", "mean"), lr=("lr", "mean")
    )
    return monthly.reset_index()


def _month_index(months: np.ndarray, ts_ms: int) -> int:
    """Index of the month holding `ts_ms` (the last month starting at or before it)."""
    return int(np.searchsorted(months, ts_ms, side="right")) - 1


def _alarm(message: dict[str, Any], months: np.ndarray, shock_month: int | None) -> Alarm:
    ts = int(message["ts"])
    month = _month_index(months, ts)
    return Alarm(
        cluster=int(message["cluster"]),
        ts_ms=ts,
        when=_iso(ts),
        month=month,
        delay_months=None if shock_month is None else month - shock_month,
        error_before=float(message.get("error_before", math.nan)),
        error_after=float(message.get("error_after", math.nan)),
        lr=float(message.get("lr", math.nan)),
    )


def _window_error(
    monthly: pd.DataFrame, cluster: int, months: np.ndarray, shock_month: int | None, before: bool
) -> float | None:
    """Mean monthly relative error of `cluster` in the months just before or from the shock."""
    if shock_month is None:
        return None
    lo, hi = (
        (shock_month - _WINDOW_MONTHS, shock_month)
        if before
        else (shock_month, shock_month + _WINDOW_MONTHS)
    )
    stamps = months[max(lo, 0) : max(hi, 0)]
    rows = monthly[(monthly["cluster"] == cluster) & monthly["ts"].isin(stamps)]
    value = rows["rel_error"].mean()
    return None if pd.isna(value) else float(value)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


# -- output --------------------------------------------------------------------------------------


def _plot(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_lr) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    monthly = summary.monthly
    for i, cluster in enumerate(sorted(monthly["cluster"].unique())):
        rows = monthly[monthly["cluster"] == cluster].sort_values("ts")
        when = pd.to_datetime(rows["ts"], unit="ms")
        color = colors[i % len(colors)]
        label = f"cluster {cluster}"
        if cluster == summary.shocked_cluster:
            label += " (most shocked customers)"
        ax_err.plot(when, rows["rel_error"], marker="o", ms=3, color=color, label=label)
        ax_lr.step(when, rows["lr"], where="post", color=color, label=label)
        for alarm in (a for a in summary.alarms if a.cluster == cluster):
            at = pd.to_datetime(alarm.ts_ms, unit="ms")
            for ax in (ax_err, ax_lr):
                ax.axvline(at, color=color, ls=":", lw=1.2)
            level = rows.loc[rows["ts"] == alarm.ts_ms, "rel_error"]
            y = float(level.iloc[0]) if len(level) else float(rows["rel_error"].max())
            ax_err.plot([at], [y], marker="v", ms=11, color=color, mec="black", ls="none")
    if summary.shock_ts_ms is not None:
        shock = pd.to_datetime(summary.shock_ts_ms, unit="ms")
        for ax in (ax_err, ax_lr):
            ax.axvline(shock, color="black", ls="--", lw=1.5)
        ax_err.annotate(
            "policy tightening",
            (shock, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize=9,
        )
    ax_err.set_ylabel("mean |value - valuation| / value")
    ax_err.set_title("Per-cluster valuation error by month (▼ and dotted: drift alarm)")
    ax_err.legend(fontsize=8)
    ax_lr.set_ylabel("mean learning rate")
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("event time (month)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _markdown(s: Summary) -> str:
    lines = ["# streamval demo report", ""]
    lines += _run_section(s) + _shock_section(s) + _cluster_section(s)
    lines += [
        "## Plot",
        "",
        f"![per-cluster error and learning rate]({PLOT_FILE})",
        "",
        "Top: mean relative absolute error |value - valuation| / value per cluster and month, as "
        "published on the valuations topic (each customer's first valuation, made before any "
        "value of it was known, left out). Bottom: the mean learning rate those valuations "
        "carried. Dashed: the policy tightening. Dotted lines and triangles: drift alarms, in "
        "the colour of their cluster. Each customer is `warming` for its first "
        f"{s.engine['seq_len']} months (valued by persistence, its last value) until its window "
        "is full; the cluster models value it after that.",
        "",
    ]
    return "\n".join(lines)


def _run_section(s: Summary) -> list[str]:
    broker = (
        f"a local Kafka broker started for the demo (temporary home `{s.local_broker_home}`, "
        "stopped at the end)"
        if s.local_broker_home
        else f"the Kafka cluster at `{s.bootstrap}`"
    )
    if s.engine_is_paper_default:
        engine = (
            "the paper's defaults: hierarchical clustering (Ward, K="
            f"{s.engine['n_clusters']}), LSTM {s.engine['hidden']} over {s.engine['seq_len']} "
            f"steps, Adam lr {s.engine['lr']}, drift detector {s.engine['detector']}, lr boost "
            f"x{s.engine['lr_boost']}"
        )
    else:
        changed = {
            k: v
            for k, v in s.engine.items()
            if v != EngineSettings().model_dump(mode="json").get(k)
        }
        engine = f"smaller than the paper's defaults for speed; changed: `{json.dumps(changed)}`"
    valued = (
        f"All {s.events:,} events were valued"
        if s.all_valued
        else f"**Only {s.valued:,} of {s.events:,} events were valued**"
    )
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in s.seconds.items())
    lines = [
        "## Run",
        "",
        f"- Data: the credit portfolio of the reference paper, {s.customers:,} customers x 24 "
        f"months = {s.events:,} events{' (quick mode)' if s.quick else ''}.",
        f"- Kafka: {broker}.",
        f"- Engine: {engine}.",
        f"- {valued} (counted on the valuations topic).",
        f"- Durations: {seconds}.",
    ]
    if s.metrics_url:
        lines.append(f"- Prometheus metrics were served at {s.metrics_url}/metrics while it ran.")
    return [*lines, ""]


def _shock_section(s: Summary) -> list[str]:
    lines = ["## The shock and the drift alarms", ""]
    if s.shock_ts_ms is None:
        return [*lines, "This book has no shock.", ""]
    spread = ", ".join(f"cluster {c}: {n}" for c, n in s.shocked_by_cluster.items())
    lines.append(
        f"A policy tightening on {s.shock_time} (month {s.shock_month}) lowers the credit scores "
        f"of the {s.shocked_customers:,} high-risk customers. At the shock their valuations were "
        f"in {spread}; **cluster {s.shocked_cluster}** holds the most of them."
    )
    lines.append("")
    if not s.alarms:
        lines.append(
            "**No drift alarm fired** in any cluster during the run: the detector did not see a "
            "significant rise in any cluster's error."
        )
    else:
        for a in s.alarms:
            if a.delay_months is None or a.delay_months < 0:
                rel = f"{-(a.delay_months or 0)} month(s) before the shock (a false alarm)"
            elif a.delay_months == 0:
                rel = "in the shock month"
            else:
                rel = f"{a.delay_months} month(s) after the shock"
            lines.append(
                f"- Drift alarm in cluster {a.cluster} at {a.when} (month {a.month}), {rel}: "
                f"scale-free error level {a.error_before:.3f} -> {a.error_after:.3f}, "
                f"learning rate raised to {a.lr:.2e}."
            )
        lines.append("")
        if s.shock_detected and s.first_shock_alarm is not None:
            a = s.first_shock_alarm
            lines.append(
                f"The shock was detected in cluster {a.cluster}, the cluster of the shocked "
                f"customers, {a.delay_months} month(s) after it (bound: "
                f"{s.alarm_delay_bound_months} months)."
            )
        else:
            lines.append(
                f"**No alarm fired in cluster {s.shocked_cluster}** (the cluster of the shocked "
                f"customers) within {s.alarm_delay_bound_months} months of the shock."
            )
    quiet = [
        c.cluster
        for c in s.clusters
        if c.shocked_at_shock and not any(a.cluster == c.cluster for a in s.alarms)
    ]
    if quiet and s.alarms:
        lines.append(
            f"Cluster(s) {', '.join(map(str, quiet))} also held shocked customers but raised no "
            "alarm: there they are a minority, and their errors did not move the cluster's error "
            "level enough for the detector."
        )
    return [*lines, ""]


def _cluster_section(s: Summary) -> list[str]:
    w = _WINDOW_MONTHS
    lines = [
        "## Clusters",
        "",
        f"Error: mean relative absolute error over the {w} months before the shock and the {w} "
        "months from it.",
        "",
        "| cluster | events valued | customers at shock | shocked customers | error before "
        "| error after | drift alarms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in s.clusters:
        lines.append(
            f"| {c.cluster} | {c.events:,} | {c.assets_at_shock:,} | {c.shocked_at_shock:,} | "
            f"{_pct(c.error_before)} | {_pct(c.error_after)} | {c.alarms} |"
        )
    return [*lines, ""]
