"""Throughput, latency and memory of the valuation service, measured side by side in one run.

    python -m benchmarks.throughput [--assets 2000] [--steps 30] [--quick]

One broker (KAFKA_BOOTSTRAP_SERVERS, or a local one started here), one synthetic stream for every
measurement (three dynamics groups, levels from 5 to 3,000, one dynamic feature, two static
attributes; the paper's LSTM 100/50 over 12 steps), each system on fresh topics:

    (a) passthrough   kafka-python consumes the input topic and produces every record to an
                      output topic (no parsing, no model): the ceiling of the Kafka client here
    (b) end to end    `streamval run` (a subprocess, as a user runs it) consuming the backlog;
                      events/s from the broker's append times of its valuations; every labelled
                      event learned from (the service's snapshots report skipped samples)
    (c) naive         predict, then one Adam step, per event, same LSTM (the peers' way)
    (d) engine        `Engine.process` in batches of a poll, in process, background training
                      (the service's mode) and synchronous training (the backtest's)

Then receipt-to-valuation latency of `streamval run` at paced offered loads, the CPU each
`streamval run` measurement used (machine, service, this process, the rest, from /proc), the
network's own CPU per sample (forward and training step, no Kafka: the floor under any engine on
this machine), the engine's state per asset at 10k and 100k assets (array bytes and RSS growth,
each in a fresh subprocess; RSS at 1M assets too unless --quick), and where the time goes (the
engine's phases, and a profile of the service's loop). Writes docs/results/throughput.md.
Numbers are ratios measured in the same run on a shared machine; nothing here is asserted by a
test.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamval.config import BrokerSettings, EngineSettings, Settings, load_settings
from streamval.engine import Engine
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import THREE_GROUPS, grouped_panel

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "results" / "throughput.md"
POLL = 500  # consumer.max_poll_records: the batch the engine gets from one poll


# -- the stream -----------------------------------------------------------------------------------


def stream(n_assets: int, steps: int, seed: int = 0) -> list[AssetEvent]:
    """Every asset once per step, in a shuffled order within a step; event time advances."""
    panel = grouped_panel(THREE_GROUPS, max(1, n_assets // len(THREE_GROUPS)), steps, seed=seed)
    return [e for step in panel.steps() for e in step]


def engine_settings(**overrides: Any) -> EngineSettings:
    """The paper's model sizes and every default, as `streamval run` has them."""
    return EngineSettings(**overrides)


# -- the broker and topics ------------------------------------------------------------------------


@contextmanager
def broker() -> Iterator[str]:
    """Bootstrap servers: KAFKA_BOOTSTRAP_SERVERS, or a local broker for the benchmark's life."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    from streamval.stream.kafka.broker import LocalBroker

    with tempfile.TemporaryDirectory(prefix="streamval-bench-kafka-") as home:
        local = LocalBroker(BrokerSettings(home=Path(home)), die_with_parent=True)
        local.start()
        try:
            yield local.bootstrap
        finally:
            local.stop()


def fresh_settings(bootstrap: str, partitions: int = 3) -> Settings:
    """Settings on fresh topics (valuations with broker append times) and a fresh group."""
    from streamval.stream.kafka.topics import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        environ={},
        overrides={
            "kafka.bootstrap_servers": bootstrap,
            "topics.input": f"bench-events-{suffix}",
            "topics.dlq": f"bench-events-{suffix}.dlq",
            "topics.valuations": f"bench-valuations-{suffix}",
            "topics.metrics": f"bench-metrics-{suffix}",
            "topics.partitions": partitions,
            "consumer.group_id": f"bench-{suffix}",
            "monitoring.enabled": False,
        },
    )
    t = settings.topics
    ensure_topics(settings, [t.valuations], configs={"message.timestamp.type": "LogAppendTime"})
    ensure_topics(settings, [t.input, t.dlq, t.metrics])
    return settings


def produce(settings: Settings, events: Sequence[AssetEvent], rate: float | None = None) -> None:
    """The events into the input topic, keyed by asset, as fast as possible or paced at `rate`."""
    from streamval.stream.kafka.clients import make_producer

    producer = make_producer(settings)
    topic = settings.topics.input
    t0 = time.monotonic()
    for i, event in enumerate(events):
        if rate is not None and i % 50 == 0:
            ahead = t0 + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        producer.send(topic, key=event.asset_id.encode(), value=event.to_bytes())
    producer.flush()
    producer.close()


def record_times(settings: Settings, topic: str, n: int, key: str = "ts") -> dict[Any, float]:
    """(asset_id, ts) -> the record's timestamp (s), for the n records of a topic."""
    from streamval.stream.kafka.reader import read_topic

    out: dict[Any, float] = {}
    for r in read_topic(settings, topic, expected=n, timeout_s=600):
        body = json.loads(r.value)
        out[(body["asset_id"], body[key])] = r.timestamp / 1000
    return out


# -- (a) passthrough ------------------------------------------------------------------------------


def passthrough(settings: Settings, n: int) -> float:
    """Events/s of consume -> produce with kafka-python, the service's client settings."""
    from streamval.stream.kafka.clients import make_consumer, make_producer

    consumer = make_consumer(settings)
    producer = make_producer(settings)
    consumer.subscribe([settings.topics.input])
    out_topic = settings.topics.valuations
    seen = 0
    t0: float | None = None
    while seen < n:
        batches = consumer.poll(timeout_ms=500, max_records=POLL)
        for records in batches.values():
            if t0 is None:
                t0 = time.perf_counter()
            for r in records:
                producer.send(out_topic, key=r.key, value=r.value)
            seen += len(records)
        if batches:
            producer.flush()
            consumer.commit()
    rate = n / (time.perf_counter() - (t0 or time.perf_counter()))
    consumer.close(autocommit=False)
    producer.close()
    return rate


# -- (b) streamval run ----------------------------------------------------------------------------


@dataclass
class ServiceRun:
    """One `streamval run` over the input topic."""

    rate: float  # valuations/s over the steady part (broker append times)
    latency_s: np.ndarray  # valuation append time - event create time, event order
    skipped: int  # samples the service's trainer had to skip (from its last snapshots)
    trained: int
    queued: int
    cpu: CpuShare | None = None  # where the machine's CPU went while it ran (Linux)


# -- CPU accounting (Linux /proc; None elsewhere) -------------------------------------------------


@dataclass
class CpuShare:
    """CPU used during a run, in cores (CPU-seconds per second of wall time)."""

    wall_s: float
    machine: float  # every process on the machine
    service: float  # the `streamval run` process and its subprocesses (fitting)
    producer: float  # this benchmark process (the load generator)

    @property
    def rest(self) -> float:
        """The broker and everything else on the machine."""
        return max(0.0, self.machine - self.service - self.producer)


def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def machine_cpu_s() -> float | None:
    """CPU-seconds every process has used since boot (busy time of all cores)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _ticks()


def tree_cpu_s(pid: int) -> float | None:
    """CPU-seconds of a process and its live descendants (threads included)."""
    try:
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    text = (entry / "stat").read_text()
                except OSError:
                    continue
                rest = text[text.rindex(")") + 2 :].split()
                stats[int(entry.name)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
    except OSError:
        return None
    if pid not in stats:
        return None
    total, frontier = 0, [pid]
    while frontier:
        p = frontier.pop()
        total += stats[p][1]
        frontier += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total / _ticks()


@contextmanager
def cpu_account(service_pid: int, into: list[CpuShare]) -> Iterator[None]:
    """Append the run's `CpuShare` to `into` when the block ends (nothing off Linux)."""
    t0, m0 = time.monotonic(), machine_cpu_s()
    s0, p0 = tree_cpu_s(service_pid), time.process_time()
    yield
    m1, s1 = machine_cpu_s(), tree_cpu_s(service_pid)
    wall = time.monotonic() - t0
    if m0 is None or m1 is None or s0 is None or s1 is None or wall <= 0:
        return
    into.append(
        CpuShare(wall, (m1 - m0) / wall, (s1 - s0) / wall, (time.process_time() - p0) / wall)
    )


def service_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    t = settings.topics
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMVAL_")}
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka.bootstrap_servers),
            "STREAMVAL_TOPICS__INPUT": t.input,
            "STREAMVAL_TOPICS__DLQ": t.dlq,
            "STREAMVAL_TOPICS__VALUATIONS": t.valuations,
            "STREAMVAL_TOPICS__METRICS": t.metrics,
            "STREAMVAL_TOPICS__PARTITIONS": str(t.partitions),
            "STREAMVAL_CONSUMER__GROUP_ID": settings.consumer.group_id,
            "STREAMVAL_CONSUMER__METRICS_INTERVAL_S": "2",
            "STREAMVAL_MONITORING__ENABLED": "false",
            "STREAMVAL_LOGGING__LEVEL": "WARNING",
            **(extra or {}),
        }
    )
    return env


def start_service(settings: Settings, extra: dict[str, str] | None = None) -> Service:
    """`streamval run` as a user starts it, with /readyz on a free port."""
    env = service_env(settings, {"STREAMVAL_MONITORING__ENABLED": "true", **(extra or {})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamval.cli", "run", "--metrics-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"streamval run exited with {proc.wait()} before serving /readyz")
    return Service(proc, str(json.loads(line)["metrics"]))


@dataclass
class Service:
    """A running `streamval run` and the URL its metrics server printed."""

    proc: subprocess.Popen[str]
    url: str

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Until /readyz says the service owns its partitions."""
        from urllib.error import URLError
        from urllib.request import urlopen

        ready = self.url + "/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamval run exited with {self.proc.returncode}")
            try:
                with urlopen(ready, timeout=2) as response:
                    if response.status == 200:
                        return
            except (URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("streamval run did not become ready in time")


def stop_service(service: Service) -> None:
    stop_process(service.proc)


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, and SIGKILL if it has not exited in 2 minutes."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def last_snapshots(settings: Settings) -> dict[int, dict[str, Any]]:
    """The last snapshot of each cluster on the metrics topic."""
    from streamval.stream.kafka.reader import read_topic

    out: dict[int, dict[str, Any]] = {}
    for r in read_topic(settings, settings.topics.metrics, expected=None, timeout_s=10):
        body = json.loads(r.value)
        if body.get("kind") == "snapshot":
            out[int(body["cluster"])] = body
    return out


def service_run(
    settings: Settings,
    events: Sequence[AssetEvent],
    steady: int,
    rate: float | None,
    extra: dict[str, str] | None = None,
) -> ServiceRun:
    """`streamval run` over `events`: a backlog (rate None) or replayed at `rate` while it runs."""
    cpu: list[CpuShare] = []
    if rate is None:
        produce(settings, events)
        service = start_service(settings, extra)
    else:
        service = start_service(settings, extra)
        service.wait_ready()
    try:
        with cpu_account(service.proc.pid, cpu):
            if rate is not None:
                produce(settings, events, rate)
            valued = record_times(settings, settings.topics.valuations, len(events))
    finally:
        stop_service(service)
    sent = record_times(settings, settings.topics.input, len(events))
    keys = [(e.asset_id, e.ts_ms) for e in events]
    latency = np.array([valued[k] - sent[k] for k in keys])
    times = np.sort(np.array([valued[k] for k in keys[steady:]]))
    steady_rate = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
    snaps = last_snapshots(settings)
    return ServiceRun(
        rate=steady_rate,
        latency_s=latency,
        skipped=sum(int(s.get("skipped_samples", 0)) for s in snaps.values()),
        trained=sum(int(s.get("trained_samples", 0)) for s in snaps.values()),
        queued=sum(int(s.get("queued_samples", 0)) for s in snaps.values()),
        cpu=cpu[0] if cpu else None,
    )


# -- the model's own cost ------------------------------------------------------------------------


@dataclass
class ModelFloor:
    """CPU microseconds per sample of the network alone (one thread, this machine)."""

    forward: dict[int, float]  # batch size -> us per sample
    train_step: float  # a default step: batch_size fresh samples plus the replay share
    train_256: float  # a step of 256 fresh samples, no replay


def model_floor(settings: EngineSettings, repeats: int = 30) -> ModelFloor:
    """The forward pass at poll-sized batches and a training step, timed on this thread."""
    from streamval.models.learner import Predictor, SequenceLearner

    rng = np.random.default_rng(0)
    learner = SequenceLearner.from_settings(settings, seed=0)
    windows = rng.normal(size=(256, settings.seq_len, learner.n_inputs)).astype(np.float32)
    targets = rng.normal(size=256)
    for _ in range(8):  # a reservoir to replay from
        learner.step(windows[: settings.batch_size], targets[: settings.batch_size])
    predictor = Predictor.for_learner(learner)

    def cpu_us(fn: Any, n: int) -> float:
        fn()
        t0 = time.thread_time()
        for _ in range(repeats):
            fn()
        return 1e6 * (time.thread_time() - t0) / repeats / n

    forward = {b: cpu_us(lambda b=b: predictor.predict(windows[:b]), b) for b in (20, 64, 256)}
    bs = settings.batch_size
    train_step = cpu_us(lambda: learner.step(windows[:bs], targets[:bs]), bs)
    big = learner.clone(batch_size=256, replay_fraction=0.0)
    train_256 = cpu_us(lambda: big.step(windows, targets), 256)
    return ModelFloor(forward, train_step, train_256)


# -- (c) the naive learner ------------------------------------------------------------------------


def naive_rate(events: Sequence[AssetEvent], settings: EngineSettings, n: int) -> float:
    """Predict, then one Adam step on that one sample, per event: the same LSTM and windows."""
    from streamval.models.learner import build_network

    seq = settings.seq_len
    net = build_network(settings.cell, 1 + settings.max_features, seq, settings.hidden)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    past: dict[str, list[float]] = {}
    x = torch.zeros((1, seq, 1 + settings.max_features))
    count = 0
    t0 = time.perf_counter()
    for event in events:
        assert event.value is not None
        values = past.setdefault(event.asset_id, [])
        if len(values) >= seq:
            last = values[-1]
            x[0, :, 0] = torch.tensor([(v - last) / abs(last) for v in values[-seq:]])
            x[0, :, 1] = event.features.get("volume", 0.0)
            with torch.no_grad():
                net(x)
            loss = (net(x) - (event.value - last) / abs(last)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            count += 1
            if count >= n:
                break
        values.append(event.value)
    return count / (time.perf_counter() - t0)


# -- (d) the engine in process --------------------------------------------------------------------


@dataclass
class EngineRun:
    rate: float  # events/s of `process` calls
    sustained: float  # events/s until the trainer had also learned every sample
    skipped: int
    trained: int
    samples: int
    phases: dict[str, float]  # seconds per engine phase, valuing thread
    train_s: float  # seconds inside optimizer steps (trainer)
    steps: int


def engine_run(events: Sequence[AssetEvent], steady: int, training: str) -> EngineRun:
    engine = Engine(engine_settings(training=training))
    phases = {"order, windows, clusters": 0.0, "forward pass": 0.0, "commit": 0.0}
    timed = {"_plan": "order, windows, clusters", "_value": "forward pass", "_commit": "commit"}
    for method, phase in timed.items():
        original = getattr(engine, method)

        def wrapper(*args: Any, _f: Any = original, _p: str = phase) -> Any:
            t = time.perf_counter()
            try:
                return _f(*args)
            finally:
                phases[_p] += time.perf_counter() - t

        setattr(engine, method, wrapper)
    train = {"s": 0.0, "steps": 0}
    for c in engine.clusters:
        _time_steps(engine.trainer.learner(c), train)
    add = engine._add_cluster

    def add_timed(cluster: int, learner: Any, parent: int | None = None) -> None:
        _time_steps(learner, train)
        add(cluster, learner, parent)

    engine._add_cluster = add_timed  # type: ignore[method-assign]
    samples = 0
    for i in range(0, steady, POLL):
        result = engine.process(events[i : min(i + POLL, steady)])
    for k in phases:
        phases[k] = 0.0
    train["s"], train["steps"] = 0.0, 0
    t0 = time.perf_counter()
    for i in range(steady, len(events), POLL):
        result = engine.process(events[i : i + POLL])
        samples += sum(1 for v in result.valuations if not v.warming and v.value is not None)
    valued = time.perf_counter() - t0
    engine.flush()
    learned = time.perf_counter() - t0
    snaps = engine.snapshot()
    engine.close()
    return EngineRun(
        rate=(len(events) - steady) / valued,
        sustained=(len(events) - steady) / learned,
        skipped=sum(s.skipped_samples for s in snaps),
        trained=sum(s.trained_samples for s in snaps),
        samples=samples,
        phases=phases,
        train_s=float(train["s"]),
        steps=int(train["steps"]),
    )


def _time_steps(learner: Any, acc: dict[str, float]) -> None:
    step = learner.step

    def timed(*args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        step(*args, **kwargs)
        acc["s"] += time.perf_counter() - t
        acc["steps"] += 1

    learner.step = timed


# -- memory ---------------------------------------------------------------------------------------


def memory_child(n_assets: int) -> None:
    """In a fresh process: RSS growth and array bytes per asset after n assets' first events."""
    torch.set_num_threads(1)
    engine = Engine(engine_settings(training="sync", n_clusters=1))
    warm = stream(30, 2)
    engine.process(warm)  # torch, numpy and the model are loaded before the baseline
    before = _rss()
    batch = 10_000
    for start in range(0, n_assets, batch):
        events = [
            AssetEvent(
                f"asset-{i:07d}",
                86_400_000 * t,
                100.0 + t,
                {"volume": 1.0},
                {"sector": "s", "tier": 1.0},
            )
            for t in (1, 2)
            for i in range(start, min(start + batch, n_assets))
        ]
        engine.process(events, learn=False)
    rss = _rss() - before
    t = time.perf_counter()
    state = engine.state_dict()
    state_ms = (time.perf_counter() - t) * 1000
    del state
    print(
        json.dumps(
            {
                "assets": engine.n_assets,
                "rss_per_asset": rss / n_assets,
                "array_bytes_per_asset": engine.state_bytes / n_assets,
                "state_dict_ms": state_ms,
                "rss_mb": _rss() / 2**20,
            }
        )
    )


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def memory(n_assets: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--memory-child", str(n_assets)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=1800,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- the service's loop, profiled -----------------------------------------------------------------


def service_profile(
    settings: Settings, events: Sequence[AssetEvent]
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Share of the service thread's time per component and its top functions (cProfile, in
    process, a backlog)."""
    from streamval.consumers.service import ValuationService
    from streamval.monitoring.metrics import EngineMetrics

    produce(settings, events)
    service = ValuationService(
        settings.model_copy(update={"engine": engine_settings()}), metrics=EngineMetrics()
    )
    profile = cProfile.Profile()

    def target() -> None:
        profile.enable()
        try:
            service.run(max_idle_polls=6)
        finally:
            profile.disable()

    worker = threading.Thread(target=target)
    worker.start()
    worker.join(timeout=900)
    stats = pstats.Stats(profile)
    groups = {
        "engine: order, windows, clusters": (
            "engine.py:",
            "_plan",
            "assets.py",
            "profiles.py",
            "clustering.py",
        ),
        "engine: forward pass (torch)": ("learner.py", "torch", "rnn.py", "module.py"),
        "engine: errors, drift, commit": (
            "error_metrics",
            "detectors",
            "drift.py",
            "_commit",
            "trainer.py",
        ),
        "kafka-python: poll, fetch, decode": (
            "kafka/consumer",
            "kafka/protocol",
            "kafka/record",
            "kafka/client",
            "kafka/conn",
            "selectors",
        ),
        "kafka-python: produce": ("kafka/producer",),
        "parse and encode (orjson, contract)": ("orjson", "json/", "contract/"),
        "service: merge, batch, delivery, metrics": ("consumers/", "monitoring/", "prometheus"),
        "waiting (select, locks)": ("acquire", "poll' of 'select", "wait"),
    }
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    shares: dict[str, float] = dict.fromkeys(groups, 0.0)
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{filename}:{name}"
        for group, keys in groups.items():
            if any(k in where for k in keys):
                shares[group] += tottime
                break
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    rest = total - sum(shares.values())
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    top = sorted(
        ((f"{Path(f).name}:{line} {name}", v[2] / total) for (f, line, name), v in raw.items()),
        key=lambda kv: -kv[1],
    )[:12]
    return [(k, v / total) for k, v in ranked] + [("everything else", rest / total)], top


# -- the report -----------------------------------------------------------------------------------


def git_commit() -> str:
    """The measured commit (with `+` when the tree has changes), or `unknown`."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+" if dirty else "")


def percentiles(x: np.ndarray) -> tuple[float, float, float]:
    p50, p99 = np.percentile(x * 1000, [50, 99])
    return float(p50), float(p99), float(x.max() * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--assets", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rates", default="1000,5000", help="paced runs, events/s offered")
    parser.add_argument("--naive-events", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="small stream, no 1M-asset run")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    torch.set_num_threads(1)
    if args.quick:
        args.assets, args.steps, args.naive_events = 600, 20, 300
    events = stream(args.assets, args.steps)
    settings0 = engine_settings()
    steady = (settings0.seq_len + 1) * args.assets  # every window full from here on
    rates = [float(r) for r in args.rates.split(",") if r]
    t_start = time.perf_counter()

    print("engine in process ...", file=sys.stderr)
    engine_bg = engine_run(events, steady, "background")
    engine_sync = engine_run(events, steady, "sync")
    print("model floor ...", file=sys.stderr)
    floor = model_floor(settings0)
    print("naive learner ...", file=sys.stderr)
    naive = naive_rate(events, settings0, args.naive_events)
    print("memory ...", file=sys.stderr)
    sizes = [10_000, 100_000] + ([] if args.quick else [1_000_000])
    mem = {n: memory(n) for n in sizes}

    with broker() as bootstrap:
        print("passthrough ...", file=sys.stderr)
        s = fresh_settings(bootstrap)
        produce(s, events)
        ceiling = passthrough(s, len(events))
        print("streamval run, backlog ...", file=sys.stderr)
        backlog = service_run(fresh_settings(bootstrap), events, steady, None)
        paced = {}
        for rate in rates:
            print(f"streamval run, paced {rate:,.0f}/s ...", file=sys.stderr)
            paced[rate] = service_run(fresh_settings(bootstrap), events, steady, rate)
        print("profile of the service loop ...", file=sys.stderr)
        profile, top = service_profile(fresh_settings(bootstrap), events)

    where = (
        "the cluster at KAFKA_BOOTSTRAP_SERVERS"
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        else "a local single-node broker (KRaft)"
    )
    n_steady = len(events) - steady
    e = engine_bg.phases
    e_total = sum(e.values())
    systems = [
        ("(a) Kafka passthrough (kafka-python consume -> produce, no model)", ceiling),
        ("(b) `streamval run` end to end (backlog)", backlog.rate),
        ("(c) naive per-event learner (predict + 1 Adam step per event)", naive),
        ("(d) `Engine.process`, background training: valuing", engine_bg.rate),
        ("(d) `Engine.process`, background training: until all learned", engine_bg.sustained),
        ("(d) `Engine.process`, synchronous training", engine_sync.rate),
    ]
    lines = [
        "# Throughput, latency and memory",
        "",
        f"Measured by `python -m benchmarks.throughput{' --quick' if args.quick else ''}` in "
        f"{time.perf_counter() - t_start:,.0f} s on {platform.machine()} with {os.cpu_count()} "
        "CPU cores shared by the broker, the producer, the service and other jobs; Python "
        f"{platform.python_version()}, torch {torch.__version__} with 1 thread; {where}; "
        f"commit {git_commit()}; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"- stream: {args.assets:,} assets x {args.steps} steps = {len(events):,} events (three "
        "dynamics groups, one feature, two attributes), 3 input partitions, polls of "
        f"{POLL} events",
        f"- model: the defaults of `streamval run`: {settings0.cell.upper()} {settings0.hidden}, "
        f"seq_len {settings0.seq_len}, K={settings0.n_clusters}, steps of "
        f"{settings0.batch_size} fresh samples per cluster plus a "
        f"{settings0.replay_fraction:.0%} replay share, every labelled event learned from once",
        f"- steady state: the {n_steady:,} events after the first {settings0.seq_len + 1} "
        "steps, when every window is full and the clustering is fitted",
        "",
        "## Events per second",
        "",
        "| system | events/s | vs passthrough | vs naive |",
        "|---|---|---|---|",
        *[
            f"| {name} | {rate:,.0f} | {rate / ceiling:.2f} | {rate / naive:,.1f} |"
            for name, rate in systems
        ],
        "",
        "Did learning keep up? `streamval run` (b): "
        f"{backlog.trained:,} samples trained, {backlog.queued:,} still queued when the last "
        f"valuation was out, {backlog.skipped:,} skipped by the overload rule. Engine (d), "
        f"background: {engine_bg.trained:,} trained, {engine_bg.skipped:,} skipped; the "
        "`until all learned` row includes the wait for the trainer to finish.",
        "",
        "## Receipt-to-valuation latency (ms)",
        "",
        "Broker append time of the valuation minus the producer's create time of the event, over",
        "all events (warm-up included), `streamval run` consuming while the events are produced",
        "at the offered rate.",
        "",
        "| offered load | p50 | p99 | max | steady p50 | steady p99 | skipped samples |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate, run in paced.items():
        p50, p99, mx = percentiles(run.latency_s)
        s50, s99, _ = percentiles(run.latency_s[steady:])
        lines.append(
            f"| {rate:,.0f} ev/s | {p50:,.0f} | {p99:,.0f} | {mx:,.0f} | {s50:,.0f} | {s99:,.0f} "
            f"| {run.skipped:,} |"
        )
    cores = os.cpu_count() or 1
    runs = [("backlog", backlog), *((f"paced {r:,.0f} ev/s", run) for r, run in paced.items())]
    lines += [
        "",
        "## Where the CPU went",
        "",
        f"CPU used during each `streamval run` measurement, in cores (of {cores}), from",
        "/proc: the service's process tree, this benchmark's process (it produces the events and",
        "reads the valuations back), and the rest (the broker and anything else running).",
        "",
        "| run | wall s | machine busy | service | benchmark process | broker and the rest |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs:
        c = run.cpu
        lines.append(
            f"| {name} | n/a | n/a | n/a | n/a | n/a |"
            if c is None
            else f"| {name} | {c.wall_s:,.0f} | {c.machine:.2f} ({c.machine / cores:.0%}) | "
            f"{c.service:.2f} | {c.producer:.2f} | {c.rest:.2f} |"
        )
    best = floor.forward[64] + floor.train_256
    default = floor.forward[64] + floor.train_step
    lines += [
        "",
        "## The network's own cost",
        "",
        "CPU time of the paper's LSTM alone on this machine (one torch thread, timed on one",
        "thread, no Kafka, no engine): a forward pass per sample at the batch sizes a poll gives",
        "each cluster, and a training step per fresh sample, at the default step and at the",
        "256-sample step a background trainer that is behind merges queued steps into.",
        "",
        "| work | us per sample |",
        "|---|---|",
        *[f"| forward pass, batch {b} | {us:,.0f} |" for b, us in floor.forward.items()],
        f"| training step: {settings0.batch_size} fresh + {settings0.replay_fraction:.0%} "
        f"replay share, per fresh sample | {floor.train_step:,.0f} |",
        f"| training step: 256 fresh, no replay | {floor.train_256:,.0f} |",
        "",
        f"Valuing an event (batch 64) and learning it once costs the network alone at least "
        f"{best:,.0f} us of CPU with 256-sample steps ({default:,.0f} with the default steps): "
        f"{1e6 / best:,.0f} events/s per core, {cores * 1e6 / best:,.0f} on all {cores} cores "
        "if they did nothing else (no broker, no Kafka client, no engine bookkeeping). At "
        f"5,000 ev/s the network alone needs {5000 * best / 1e6:.1f} cores "
        f"({5000 * default / 1e6:.1f} with the default steps); at 1,000 ev/s "
        f"{1000 * best / 1e6:.2f} ({1000 * default / 1e6:.2f}).",
    ]
    lines += [
        "",
        "## State per asset",
        "",
        "Each in a fresh process: the assets' first two events (one feature, two attributes),",
        "then RSS growth and the engine's per-asset arrays; `state_dict` is the time to copy",
        "the whole state on the calling thread (the checkpoint's snapshot).",
        "",
        "| assets | RSS growth / asset | arrays / asset | RSS of the process | state_dict |",
        "|---|---|---|---|---|",
    ]
    for n, m in mem.items():
        lines.append(
            f"| {n:,} | {m['rss_per_asset']:,.0f} B | {m['array_bytes_per_asset']:,.0f} B | "
            f"{m['rss_mb']:,.0f} MiB | {m['state_dict_ms']:,.0f} ms |"
        )
    lines += [
        "",
        "## Where the time goes",
        "",
        f"Engine in process, background training, steady state: {e_total:,.1f} s on the valuing",
        f"thread for {n_steady:,} events ({1e6 * e_total / n_steady:,.0f} us per event), and",
        f"{engine_bg.train_s:,.1f} s in {engine_bg.steps:,} optimizer steps on the trainer thread",
        f"({1e6 * engine_bg.train_s / max(engine_bg.samples, 1):,.0f} us per fresh sample).",
        "",
        "| valuing thread | share |",
        "|---|---|",
        *[f"| {k} | {v / e_total:.0%} |" for k, v in e.items()],
        "",
        "The service's loop (cProfile of its thread, in process, over a backlog of the same",
        "stream; the trainer thread is not in it):",
        "",
        "| component | share of the loop's time |",
        "|---|---|",
        *[f"| {k} | {v:.0%} |" for k, v in profile],
        "",
        "Its top functions by own time:",
        "",
        "| function | share |",
        "|---|---|",
        *[f"| `{k}` | {v:.1%} |" for k, v in top],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
