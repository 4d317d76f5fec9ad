"""Offline throughput of the pure Engine: events/s in one process with one torch thread.

A synthetic stream of `--assets` assets (three dynamics groups, levels from 5 to 3,000, one
dynamic feature, two static attributes) goes through `Engine.process` in batches of `--batch`
events (a Kafka poll's worth), with the paper's model sizes (LSTM 100/50, seq_len 12). Writes
docs/results/engine_throughput.md.

    .venv/bin/python benchmarks/engine_throughput.py [--assets 10000] [--steps 20] [--batch 500]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from streamval.config import EngineSettings
from streamval.engine import Engine
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

REPO = Path(__file__).resolve().parents[1]


def stream(n_assets: int, steps: int, seed: int = 0) -> list[list[AssetEvent]]:
    """One list of events per time step (every asset once, in a shuffled order)."""
    panel = grouped_panel(THREE_GROUPS, max(1, n_assets // len(THREE_GROUPS)), steps, seed=seed)
    return list(panel.steps())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "results" / "engine_throughput.md"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    settings = EngineSettings(bootstrap_assets=min(1000, args.assets))  # paper model sizes
    steps = stream(args.assets, args.steps)
    engine = Engine(settings)
    per_step: list[tuple[float, int, int]] = []  # seconds, events, optimizer updates
    learn_s: list[float] = []  # seconds in the learning step, per time step
    warming = 0
    start = time.perf_counter()
    for events in steps:
        t0 = time.perf_counter()
        updates, learning = 0, 0.0
        for i in range(0, len(events), args.batch):
            # process(batch) == process(batch, learn=False) + learn(); split to time the learning.
            result = engine.process(events[i : i + args.batch], learn=False)
            t1 = time.perf_counter()
            updates += sum(engine.learn().values())
            learning += time.perf_counter() - t1
            warming += sum(v.warming for v in result.valuations)
        per_step.append((time.perf_counter() - t0, len(events), updates))
        learn_s.append(learning)
    total = time.perf_counter() - start
    n_events = sum(n for _, n, _ in per_step)
    # Steady state: once every window is full (seq_len + 1 steps) and the clustering is fitted.
    steady = per_step[settings.seq_len + 1 :]
    steady_rate = (
        sum(n for _, n, _ in steady) / sum(s for s, _, _ in steady) if steady else float("nan")
    )
    steady_learn = sum(learn_s[settings.seq_len + 1 :]) / max(sum(s for s, _, _ in steady), 1e-9)
    snaps = engine.snapshot()

    lines = [
        "# Engine throughput (offline, one process)",
        "",
        f"Measured by `benchmarks/engine_throughput.py` on {platform.machine()} with "
        f"{os.cpu_count()} CPU cores (shared with other jobs), Python {platform.python_version()}, "
        f"torch {torch.__version__} with 1 thread.",
        "",
        f"- stream: {len(steps[0]):,} assets x {args.steps} steps = {n_events:,} events, "
        f"batches of {args.batch} events per `Engine.process` call",
        f"- model: {settings.cell.upper()} {settings.hidden}, seq_len {settings.seq_len}, "
        f"batch_size {settings.batch_size}, "
        f"max {settings.max_updates_per_batch} updates per cluster per call, "
        f"K={settings.n_clusters} (bootstrap from {settings.bootstrap_assets} assets)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| overall throughput (incl. warm-up and clustering fit) | {n_events / total:,.0f} /s |",
        f"| steady-state throughput (windows full, clustering fitted) | {steady_rate:,.0f} /s |",
        f"| mean time per `process` call of {args.batch} events, steady state | "
        f"{1000 * args.batch / steady_rate:,.1f} ms |",
        f"| share of steady-state time in the learning step | {steady_learn:.0%} |",
        f"| optimizer updates (all clusters) | {sum(u for _, _, u in per_step):,} |",
        f"| warming valuations | {warming:,} |",
        f"| wall time | {total:,.1f} s |",
        "",
        "Clusters at the end: "
        + ", ".join(f"{s.cluster}: {s.assets:,} assets, {s.updates} updates" for s in snaps)
        + ".",
        "",
        "Per step (all assets once): "
        + ", ".join(f"{n / s:,.0f}" for s, n, _ in per_step)
        + " events/s.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
