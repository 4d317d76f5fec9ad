"""Clustering report: do the clusters mean something, and do they hold still?

    python -m benchmarks.clustering [--quick] [--only credit|sp500]

Every stream goes through `Engine.process` one event time at a time (synchronous training, the
linear cell: the clustering does not depend on the cell except through drift-triggered re-fits),
with re-fits forced on a schedule after warm-up on top of those drift alarms trigger, so churn
per re-fit is measured many times. Per stream: the adjusted Rand index (ARI) of the assets'
current clusters against known groups at given steps, churn at each re-fit (share of the live
assets whose cluster changed), and the share of assets that kept one cluster from warm-up on.

    synthetic   the issue's three-group stream (segment, score level, volatility 1/2/5%, drift vs
                mean reversion) and harder ones that differ in only some of those, two seeds
                each; the same with hysteresis and shrinkage off (ablation)
    credit      the generated credit book's latent groups (never in the events)
    sp500       the S&P 500 panel against GICS sectors, from prices alone (the sector attribute
                is withheld from the engine), K = 11 (the number of sectors) and K = "auto",
                the first `--sp500-days` trading days (380 by default: 2015 to mid-2016, with
                the August 2015 selloff and the December 2015 hike)
    auto K      the issue's stream with n_clusters = "auto"

Writes docs/results/clustering.md; `--only credit` (a few minutes: the book and three other draws
of its generator) or `--only sp500` runs one part and writes docs/results/clustering-credit.md or
clustering-sp500.md instead. Separate from
`benchmarks.run` (whose full report takes about 20 minutes): this one takes 15-30 minutes on two
shared cores, most of it the S&P 500 panel (`--quick`: a few minutes).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import adjusted_rand_score

from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.credit import CreditPortfolioParams, generate
from streamval.stream.datasets.sp500 import load_sp500
from streamval.stream.datasets.synthetic import HARD_THREE_GROUPS, Group, grouped_panel

REPO = Path(__file__).resolve().parents[1]
BASE = EngineSettings(training="sync", cell="linear", hidden=[])
# Hysteresis and shrinkage off: moves at the first check, re-fits take their own labels.
ABLATION = {"switch_margin": 0.0, "switch_checks": 1, "profile_pseudo_count": 0.0}


@dataclass
class Outcome:
    """What one stream did to the clustering."""

    name: str
    ari: dict[int, float]  # step -> ARI against the known groups
    churn: list[tuple[int, float]]  # (step, churn) per re-fit after warm-up
    kept: float  # share of the assets known at warm-up that kept one cluster from there on
    clusters: int
    seconds: float
    notes: dict[str, str] = field(default_factory=dict)


def run_stream(
    name: str,
    events: Iterable[AssetEvent],
    truth: Mapping[str, object],
    settings: EngineSettings,
    *,
    warm_up: int,
    refit_every: int,
    strip_attributes: bool = False,
) -> Outcome:
    """Feed the stream step by step; re-fit every `refit_every` steps after `warm_up`."""
    engine = Engine(settings)
    t0 = time.perf_counter()
    ari: dict[int, float] = {}
    churn: list[tuple[int, float]] = []
    first: dict[str, int] = {}
    moved: set[str] = set()
    seen_refits = 0
    step = 0
    for step, (_, batch) in enumerate(groupby(events, key=lambda e: e.ts_ms), start=1):
        chunk = [replace(e, attributes={}) if strip_attributes else e for e in batch]
        engine.process(chunk)
        if step > warm_up and (step - warm_up) % refit_every == 0:
            engine.refit()
        history = engine.churn_history
        for _, c in history[seen_refits:]:
            if step >= warm_up:
                churn.append((step, c))
        seen_refits = len(history)
        clusters = engine.assignments()
        if engine.fitted:
            ids = [a for a in clusters if a in truth]
            ari[step] = float(
                adjusted_rand_score([str(truth[a]) for a in ids], [clusters[a] for a in ids])
            )
        if step == warm_up:
            first = dict(clusters)
        elif step > warm_up:
            moved |= {a for a, c in first.items() if clusters.get(a, c) != c}
    engine.close()
    kept = 1.0 - len(moved) / len(first) if first else float("nan")
    return Outcome(name, ari, churn, kept, len(engine.clusters), time.perf_counter() - t0, notes={})


def synthetic(quick: bool) -> list[tuple[str, Outcome, Outcome]]:
    """The issue's stream and harder ones, with the defaults and with the ablation."""
    cases: dict[str, tuple[Sequence[Group], dict[str, Any]]] = {
        "issue: segment + score + volatility + dynamics": (HARD_THREE_GROUPS, {}),
        "+ 8 noise attributes": (HARD_THREE_GROUPS, {"noise_attributes": 8}),
        "+ 30% of the assets arrive at step 20": (
            HARD_THREE_GROUPS,
            {"late_share": 0.3, "late_from": 20},
        ),
        "+ group 2 crashes -5%/day from step 25": (
            HARD_THREE_GROUPS,
            {"shift_group": 2, "shift_at": 25, "shift": -0.05},
        ),
        "segment only, 4 noise attributes": (
            tuple(Group(vol=0.02, feature_sd=1.0, attributes={"segment": s}) for s in "abc"),
            {"noise_attributes": 4},
        ),
        "score level only": (
            tuple(Group(vol=0.02, volume=m, feature_sd=0.5) for m in (0.0, 1.0, 2.0)),
            {},
        ),
        "volatility only, 4 noise attributes": (
            tuple(Group(vol=v, feature_sd=1.0) for v in (0.01, 0.02, 0.05)),
            {"noise_attributes": 4},
        ),
        "dynamics only (drift up / reversion / drift down)": (
            (
                Group(vol=0.02, drift=0.004),
                Group(vol=0.02, reversion=0.3),
                Group(vol=0.02, drift=-0.004),
            ),
            {},
        ),
    }
    seeds = (0,) if quick else (0, 1)
    out = []
    for name, (groups, kwargs) in cases.items():
        for seed in seeds:
            panel = grouped_panel(groups, 100, 40, seed=seed, feature="score", **kwargs)
            label = f"{name} (seed {seed})"
            ours = run_stream(label, panel.events, panel.truth, BASE, warm_up=15, refit_every=5)
            off = run_stream(
                label,
                panel.events,
                panel.truth,
                BASE.model_copy(update=ABLATION),
                warm_up=15,
                refit_every=5,
            )
            out.append((label, ours, off))
    return out


def credit(quick: bool, seed: int | None = None) -> Outcome:
    """The credit book's latent groups; `seed`: another draw of the same generator."""
    params = CreditPortfolioParams() if seed is None else CreditPortfolioParams(seed=seed)
    book = generate(params, n_customers=1000 if quick else 3000)
    truth = {str(k): int(v) for k, v in book.customers["group"].items()}
    drawn = "" if seed is None else f" (generator seed {seed})"
    return run_stream(
        f"credit book, {len(truth)} customers{drawn}",
        book.events(),
        truth,
        BASE,
        warm_up=15,
        refit_every=1,
    )


def sp500(data_dir: Path, n_days: int) -> list[Outcome]:
    table = load_sp500(data_dir)
    sectors = pd.read_csv(data_dir / "sectors.csv").set_index("ticker")["gics_sector"]
    events = list(table.events())
    days = sorted({e.ts_ms for e in events})[:n_days]
    events = [e for e in events if e.ts_ms <= days[-1]]
    truth = {str(t): str(s) for t, s in sectors.items()}
    out = []
    for label, k in (("K = 11", 11), ('K = "auto" (2..11)', "auto")):
        settings = BASE.model_copy(update={"n_clusters": k, "max_clusters": 11})
        outcome = run_stream(
            f"S&P 500 vs GICS sectors, {label}",
            events,
            truth,
            settings,
            warm_up=60,
            refit_every=63,  # a quarter of trading days
            strip_attributes=True,
        )
        outcome.notes["days"] = str(len(days))
        out.append(outcome)
    return out


def auto_k(quick: bool) -> list[Outcome]:
    """The issue's stream with n_clusters = "auto" (the true K is 3)."""
    out = []
    for seed in (0,) if quick else (0, 1, 2):
        panel = grouped_panel(HARD_THREE_GROUPS, 100, 40, seed=seed, feature="score")
        settings = BASE.model_copy(update={"n_clusters": "auto"})
        out.append(
            run_stream(
                f"issue stream, seed {seed}",
                panel.events,
                panel.truth,
                settings,
                warm_up=15,
                refit_every=5,
            )
        )
    return out


def _fmt(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.3f}"


def _churn_cell(o: Outcome) -> str:
    if not o.churn:
        return "no re-fit"
    c = np.array([c for _, c in o.churn])
    return f"{100 * c.mean():.2f}% / {100 * c.max():.2f}% ({len(c)})"


def write(
    path: Path,
    *,
    syn: list[tuple[str, Outcome, Outcome]],
    cred: Outcome,
    sp: list[Outcome],
    auto: list[Outcome],
    args: argparse.Namespace,
    seconds: float,
) -> None:
    lines = [
        "# Clustering: do the clusters mean something and hold still?",
        "",
        f"Generated by `python -m benchmarks.clustering{' --quick' if args.quick else ''}` "
        f"(S&P 500: {sp[0].notes.get('days', '?') if sp else '?'} trading days) "
        f'in {seconds:.0f} s. Engine defaults except `training = "sync"` and the linear cell '
        "(the clustering does not depend on the cell except through drift-triggered re-fits). "
        "Re-fits are forced on a schedule after warm-up, besides those drift alarms trigger. "
        "ARI: adjusted Rand index of the assets' current clusters against the known groups. "
        "Churn: share of the live assets whose cluster changed at a re-fit (mean / max (count)). "
        "Kept: share of the assets known at warm-up that kept one cluster from there on "
        "(re-fits and online switches).",
        "",
        "## Generated streams (100 assets per group, 40 daily steps)",
        "",
        "Targets: ARI >= 0.9 by step 15, churn below 2% per re-fit after warm-up (step 15, "
        "re-fits every 5 steps). *Off*: hysteresis and shrinkage off "
        f"(`{ABLATION}`), block weights still on.",
        "",
        "| stream | ARI@15 | ARI@25 | ARI@40 | churn per re-fit | kept | ARI@15 off | "
        "ARI@40 off | churn off | kept off |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, o, off in syn:
        lines.append(
            f"| {label} | {_fmt(o.ari.get(15, float('nan')))} | {_fmt(o.ari.get(25, float('nan')))}"
            f" | {_fmt(o.ari.get(40, float('nan')))} | {_churn_cell(o)} | {100 * o.kept:.1f}% | "
            f"{_fmt(off.ari.get(15, float('nan')))} | {_fmt(off.ari.get(40, float('nan')))} | "
            f"{_churn_cell(off)} | {100 * off.kept:.1f}% |"
        )
    lines += [
        "",
        "## Credit book: latent groups",
        "",
        f"{cred.name}, 24 months, policy shock at month 18; re-fit every month from month 16. "
        f"Churn per re-fit {_churn_cell(cred)}; kept from month 15: {100 * cred.kept:.1f}%.",
        "",
        "| month | " + " | ".join(str(m) for m in sorted(cred.ari)) + " |",
        "|---|" + "---|" * len(cred.ari),
        "| ARI | " + " | ".join(_fmt(cred.ari[m]) for m in sorted(cred.ari)) + " |",
        "",
        "## S&P 500 panel: GICS sectors (no target)",
        "",
        f"471 stocks, the first {sp[0].notes.get('days', '?') if sp else '?'} trading days from "
        "2015-01-05, prices only: the sector "
        "attribute is withheld, so the clusters come from the return statistics and the "
        "`log_return` / `volatility_20d` features. Warm-up 60 trading days, then a re-fit every "
        "63 (a quarter).",
        "",
        "| run | clusters | ARI at day 60 | ARI mean after | ARI last | churn per re-fit | kept |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in sp:
        after = [v for s, v in o.ari.items() if s > 60]
        lines.append(
            f"| {o.name} | {o.clusters} | {_fmt(o.ari.get(60, float('nan')))} | "
            f"{_fmt(float(np.mean(after)) if after else float('nan'))} | "
            f"{_fmt(o.ari[max(o.ari)] if o.ari else float('nan'))} | {_churn_cell(o)} | "
            f"{100 * o.kept:.1f}% |"
        )
    lines += [
        "",
        "Churn over time (S&P 500, K = 11), by quarter of trading days: re-fits (scheduled and "
        "drift-triggered) and their mean churn.",
        "",
        "| trading days | re-fits | mean churn | ARI at the end |",
        "|---|---|---|---|",
    ]
    if sp:
        o = sp[0]
        last = max(o.ari) if o.ari else 0
        for start in range(0, last + 1, 63):
            inside = [c for d, c in o.churn if start < d <= start + 63]
            end = max((d for d in o.ari if d <= start + 63), default=None)
            lines.append(
                f"| {start + 1}-{start + 63} | {len(inside)} | "
                f"{f'{100 * float(np.mean(inside)):.1f}%' if inside else '-'} | "
                f"{_fmt(o.ari[end]) if end is not None else 'n/a'} |"
            )
    lines += [
        "",
        '## K = "auto" on the issue stream (true K = 3)',
        "",
        "| stream | clusters | ARI@15 | ARI@40 | churn per re-fit |",
        "|---|---|---|---|---|",
    ]
    for o in auto:
        lines.append(
            f"| {o.name} | {o.clusters} | {_fmt(o.ari.get(15, float('nan')))} | "
            f"{_fmt(o.ari.get(40, float('nan')))} | {_churn_cell(o)} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_part(path: Path, part: str, outcomes: list[Outcome], seconds: float) -> None:
    """The report of one part (`--only`): the credit book's or the S&P 500 panel's table."""
    lines = [
        f"# Clustering: {'credit book' if part == 'credit' else 'S&P 500 panel'} only",
        "",
        f"Generated by `python -m benchmarks.clustering --only {part}` in {seconds:.0f} s, with "
        "the settings of the full report (`clustering.md`): engine defaults except `training = "
        '"sync"` and the linear cell; ARI, churn and kept as defined there.',
        "",
    ]
    if part == "credit":
        cred, *others = outcomes
        lines += [
            f"{cred.name}, 24 months, policy shock at month 18; re-fit every month from month "
            f"16. Churn per re-fit {_churn_cell(cred)}; kept from month 15: "
            f"{100 * cred.kept:.1f}%.",
            "",
            "| month | " + " | ".join(str(m) for m in sorted(cred.ari)) + " |",
            "|---|" + "---|" * len(cred.ari),
            "| ARI | " + " | ".join(_fmt(cred.ari[m]) for m in sorted(cred.ari)) + " |",
            "",
            "Other draws of the same generator (no target: how much the book above is one draw).",
            "",
            "| book | ARI@13 | ARI@15 | ARI@24 | churn per re-fit | kept |",
            "|---|---|---|---|---|---|",
        ]
        for o in others:
            lines.append(
                f"| {o.name} | {_fmt(o.ari.get(13, float('nan')))} | "
                f"{_fmt(o.ari.get(15, float('nan')))} | {_fmt(o.ari.get(24, float('nan')))} | "
                f"{_churn_cell(o)} | {100 * o.kept:.1f}% |"
            )
    else:
        lines += [
            "| run | clusters | ARI at day 60 | ARI mean after | ARI last | churn per re-fit | "
            "kept |",
            "|---|---|---|---|---|---|---|",
        ]
        for o in outcomes:
            after = [v for s, v in o.ari.items() if s > 60]
            lines.append(
                f"| {o.name} ({o.notes.get('days', '?')} days) | {o.clusters} | "
                f"{_fmt(o.ari.get(60, float('nan')))} | "
                f"{_fmt(float(np.mean(after)) if after else float('nan'))} | "
                f"{_fmt(o.ari[max(o.ari)] if o.ari else float('nan'))} | {_churn_cell(o)} | "
                f"{100 * o.kept:.1f}% |"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clustering", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "clustering.md")
    parser.add_argument(
        "--sp500-days", type=int, default=380, help="trading days of the S&P 500 panel to stream"
    )
    parser.add_argument(
        "--only", choices=("credit", "sp500"), help="run one part, into clustering-PART.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shared = Path(os.environ.get("STREAMVAL_SHARED_DATA", REPO.parent / "shared" / "data"))
    t0 = time.perf_counter()
    if args.only:
        outcomes = (
            [credit(args.quick), *(credit(args.quick, seed) for seed in (1, 2, 3))]
            if args.only == "credit"
            else sp500(shared / "sp500_2015_2020", 120 if args.quick else args.sp500_days)
        )
        out = args.out.with_name(f"clustering-{args.only}.md")
        write_part(out, args.only, outcomes, time.perf_counter() - t0)
        print(out.read_text())
        return 0
    syn = synthetic(args.quick)
    print("synthetic done", round(time.perf_counter() - t0), flush=True)
    cred = credit(args.quick)
    print("credit done", round(time.perf_counter() - t0), flush=True)
    auto = auto_k(args.quick)
    print("auto K done", round(time.perf_counter() - t0), flush=True)
    sp = sp500(shared / "sp500_2015_2020", 120 if args.quick else args.sp500_days)
    write(
        args.out, syn=syn, cred=cred, sp=sp, auto=auto, args=args, seconds=time.perf_counter() - t0
    )
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
