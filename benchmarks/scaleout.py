"""Events per second with 1, 2 and 4 `streamval run` processes in one consumer group.

    python -m benchmarks.scaleout [--assets 3000] [--steps 24] [--processes 1,2,4]
                                  [--roles all,split]

One broker (KAFKA_BOOTSTRAP_SERVERS, or a local one started here), one synthetic stream (three
dynamics groups; the paper's LSTM 100/50 over 12 steps) on a 6-input-partition topic, a backlog
per run on fresh topics and a fresh group. N processes start and own their partitions, then the
events are produced (far faster than they are consumed: a backlog); the rate is the valuations'
broker append times over the steady part (every window full). With `all` each process is
both valuer and learner (the single-process path): it learns from the partitions it owns, and
the member owning partition 0 fits the clustering for all. With `split` the N processes are
valuers (`--role valuer`) and one more process is the learner (`--role learner`): every
labelled sample goes to the learner over `<group>.training-samples`, the valuers serve the
models it publishes on `<group>.models`; reported besides are when the learner had trained
every sample (it may finish after the last valuation) and what it wrote to the models topic.
Also reported: how the processes split the events, samples trained and skipped (the overload
rule), and the cluster ids each true group gets across processes, on the backlog's last step
and on one step sent after it.

On a machine with few cores the processes, their trainers and the broker share them: the ratios
say how far this machine scales, not how far Kafka does. Writes docs/results/scaleout.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.throughput import (
    POLL,
    Service,
    broker,
    engine_settings,
    fresh_settings,
    git_commit,
    produce,
    service_env,
    start_service,
    stop_process,
    stop_service,
    stream,
)
from streamval.config import Settings

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "scaleout.md"
PARTITIONS = 6


def valuations(settings: Settings, n: int) -> list[dict[str, Any]]:
    """The n valuations, each with its broker append time (s) under "_t"."""
    from streamval.stream.kafka.reader import read_topic

    out = []
    for r in read_topic(settings, settings.topics.valuations, expected=n, timeout_s=1200):
        body = json.loads(r.value)
        body["_t"] = r.timestamp / 1000
        out.append(body)
    return out


def snapshots(settings: Settings) -> dict[tuple[str, int], dict[str, Any]]:
    """The last snapshot per (instance, cluster) on the metrics topic."""
    from streamval.stream.kafka.reader import read_topic

    out: dict[tuple[str, int], dict[str, Any]] = {}
    for r in read_topic(settings, settings.topics.metrics, expected=None, timeout_s=10):
        body = json.loads(r.value)
        if body.get("kind") == "snapshot":
            out[(str(body.get("instance", "")), int(body["cluster"]))] = body
    return out


def clustering_versions(services: list[Service]) -> list[int]:
    """The shared clustering version each process uses (its /metrics gauge)."""
    from urllib.request import urlopen

    out = []
    for service in services:
        with urlopen(service.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        match = re.search(r"^streamval_clustering_version (\S+)$", text, re.MULTILINE)
        out.append(int(float(match.group(1))) if match else 0)
    return out


def published_counts(services: list[Service]) -> list[int]:
    """Valuations each process has published (its /metrics counter, summed over clusters)."""
    from urllib.request import urlopen

    out = []
    for service in services:
        with urlopen(service.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        found = re.findall(
            r"^streamval_valuations_published_total(?:\{[^}]*\})? (\S+)$", text, re.M
        )
        out.append(int(sum(float(x) for x in found)))
    return out


def wait_same_clustering(services: list[Service], timeout_s: float = 120) -> list[int]:
    """Until every process uses the same clustering (a fit in flight may land after the
    backlog); the versions seen last."""
    deadline = time.monotonic() + timeout_s
    while True:
        versions = clustering_versions(services)
        if (len(set(versions)) == 1 and versions[0] > 0) or time.monotonic() > deadline:
            return versions
        time.sleep(0.5)


def start_learner(settings: Settings, log: Path) -> subprocess.Popen[str]:
    """`streamval run --role learner` for the group; its summary line goes to `log`."""
    env = service_env(settings, {"STREAMVAL_CONSUMER__ROLE": "learner"})
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streamval.cli", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            start_new_session=True,
        )


def stop_learner(proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    """SIGTERM, then the learner's summary ({"trained", "published"})."""
    stop_process(proc)
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{") and '"role": "learner"' in line:
            return dict(json.loads(line))
    raise RuntimeError(f"the learner left no summary: {log.read_text()[-2000:]}")


def topic_end(settings: Settings, topic: str) -> int:
    """Records written to `topic` so far (the sum of its partitions' end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        consumer.close()


def wait_learner_done(settings: Settings, t0: float, quiet_s: float = 15) -> tuple[float, int]:
    """Seconds from `t0` until the learner's last model (no new model for `quiet_s`), and the
    records on the models topic then."""
    topic = settings.models_topic()
    last, changed = topic_end(settings, topic), time.monotonic()
    while time.monotonic() - changed < quiet_s:
        time.sleep(1)
        now = topic_end(settings, topic)
        if now != last:
            last, changed = now, time.monotonic()
    return changed - t0, last


def ids_per_group(values: list[dict[str, Any]], truth: dict[str, int]) -> dict[int, list[int]]:
    """The cluster ids the model-made valuations gave each true group."""
    ids: dict[int, set[int]] = defaultdict(set)
    for v in values:
        if not v.get("warming") and v.get("cluster") is not None:
            ids[truth[v["asset_id"]]].add(int(v["cluster"]))
    return {g: sorted(c) for g, c in sorted(ids.items())}


def run(
    bootstrap: str,
    events: list[Any],
    truth: dict[str, int],
    n: int,
    *,
    probe: list[Any],
    steady: int,
    roles: str = "all",
) -> dict[str, Any]:
    """N processes over a backlog of `events` on fresh topics, then one more step (`probe`)
    once every process uses the same clustering; `roles="split"`: N valuers and a learner."""
    settings = fresh_settings(bootstrap, partitions=PARTITIONS)
    role = {"all": {}, "split": {"STREAMVAL_CONSUMER__ROLE": "valuer"}}[roles]
    learner_log = Path(tempfile.mkdtemp(prefix="scaleout-")) / "learner.log"
    learner = start_learner(settings, learner_log) if roles == "split" else None
    services = [
        start_service(settings, {"STREAMVAL_CONSUMER__CLIENT_ID": f"scaleout-{i}", **role})
        for i in range(n)
    ]
    learned_s, models = None, 0
    summary: dict[str, Any] = {}
    try:
        for service in services:  # every member owns its partitions before the events come
            service.wait_ready()
        t0 = time.monotonic()
        produce(settings, events)  # far faster than the processes consume: a backlog
        values = valuations(settings, len(events))
        wall = time.monotonic() - t0
        if learner is not None:
            learned_s, models = wait_learner_done(settings, t0)
        versions = wait_same_clustering(services)
        produce(settings, probe)
        probe_ts = probe[0].ts_ms
        probed = [v for v in valuations(settings, len(events) + len(probe)) if v["ts"] == probe_ts]
        time.sleep(2)  # a counter moves once its batch's delivery has returned
        per_process = published_counts(services)
    finally:
        for service in services:
            stop_service(service)
        if learner is not None:
            summary = stop_learner(learner, learner_log)
    snaps = snapshots(settings)
    by_ts = sorted(values, key=lambda v: v["ts"])
    times = sorted(v["_t"] for v in by_ts[steady:])
    rate = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
    last_ts = by_ts[-1]["ts"]
    trained = sum(int(s.get("trained_samples", 0)) for s in snaps.values())
    return {
        "roles": roles,
        "processes": n,
        "rate": rate,
        "wall_s": wall,
        "learned_s": learned_s,
        "models": models,
        "split": sorted(per_process, reverse=True),
        "trained": int(summary["trained"]) if summary else trained,
        "skipped": sum(int(s.get("skipped_samples", 0)) for s in snaps.values()),
        "ids_last": ids_per_group([v for v in by_ts if v["ts"] == last_ts], truth),
        "ids_probe": ids_per_group(probed, truth),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    parser.add_argument("--assets", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--roles", default="all,split", help="all, split or both (all,split)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    everything = stream(args.assets, args.steps + 1)
    events, probe = everything[: -args.assets], everything[-args.assets :]
    from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

    panel = grouped_panel(THREE_GROUPS, max(1, args.assets // len(THREE_GROUPS)), 1, seed=0)
    truth = dict(panel.truth)
    settings0 = engine_settings()
    steady = (settings0.seq_len + 1) * args.assets
    counts = [int(p) for p in args.processes.split(",") if p]
    t_start = time.perf_counter()
    modes = [m for m in args.roles.split(",") if m]
    if not set(modes) <= {"all", "split"}:
        parser.error(f"--roles: all and/or split, not {args.roles!r}")
    results = []
    with broker() as bootstrap:
        for mode in modes:
            for n in counts:
                print(f"{mode}: {n} process(es) ...", file=sys.stderr)
                results.append(
                    run(bootstrap, events, truth, n, probe=probe, steady=steady, roles=mode)
                )
    base = results[0]["rate"]
    where = (
        "the cluster at KAFKA_BOOTSTRAP_SERVERS"
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        else "a local single-node broker (KRaft)"
    )
    lines = [
        "# Scale-out: processes in one consumer group",
        "",
        f"Measured by `python -m benchmarks.scaleout` in {time.perf_counter() - t_start:,.0f} s "
        f"on {platform.machine()} with {os.cpu_count()} CPU cores shared by the broker, the "
        f"processes and other jobs; torch {torch.__version__} with 1 thread per process; "
        f"{where}; commit {git_commit()}; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"- stream: {args.assets:,} assets x {args.steps} steps = {len(events):,} events, a "
        f"backlog on an input topic of {PARTITIONS} partitions, polls of {POLL} events",
        f"- model: the defaults of `streamval run` ({settings0.cell.upper()} {settings0.hidden}, "
        f"seq_len {settings0.seq_len}); `all`: each process values and learns; `split`: the "
        "processes are valuers and one more process is the learner of every cluster",
        f"- rate: valuations per second over the events after the first {settings0.seq_len + 1} "
        "steps, from the broker's append times",
        "",
        "| roles | valuing processes | events/s | vs 1 process, all | valuations per process "
        "| samples trained | skipped (overload) | all learned after (s) | cluster ids per true "
        "group: last backlog step | one step after the backlog | clustering version per "
        "process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        last = "; ".join(f"{g}: {c}" for g, c in r["ids_last"].items())
        after = "; ".join(f"{g}: {c}" for g, c in r["ids_probe"].items())
        learned = (
            f"{r['learned_s']:.0f} (valued in {r['wall_s']:.0f}; {r['models']:,} models)"
            if r["learned_s"] is not None
            else "-"
        )
        lines.append(
            f"| {r['roles']} | {r['processes']} | {r['rate']:,.0f} | {r['rate'] / base:.2f} | "
            f"{', '.join(f'{x:,}' for x in r['split'])} | {r['trained']:,} | {r['skipped']:,} | "
            f"{learned} | {last} | {after} | {', '.join(str(v) for v in r['versions'])} |"
        )
    lines += [
        "",
        f"This machine has {os.cpu_count()} cores: one process already uses about one for "
        "valuing and one for its trainer, so more processes here share the same cores and the "
        "ratios above are the machine's limit, not Kafka's. docs/ARCHITECTURE.md (Scale-out) "
        "estimates N machines.",
        "",
        "`samples trained` counts the pooled expert's too: once the first clustering splits the "
        "bootstrap cluster, it learns every cluster's samples once more (in `split` at the "
        "learner, which therefore trains about twice the clusters' samples).",
        "",
        "Cluster ids: until the owner's first fit lands (it needs `min_history` values of "
        "`bootstrap_assets` assets, then a fit of a few seconds), every process values with the "
        "provisional cluster 0. A process whose share of the backlog is small can value all of "
        "it before then, so the last backlog step may show 0 beside the fitted ids. The step "
        "sent after the backlog, once every process uses the same clustering version, is the "
        "check that one id means one segment whichever process values the asset.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
