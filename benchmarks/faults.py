"""Fault suite against a real broker: `streamval run` as an operator runs it, under every fault of
issue 10, with the outcome counted from the output topics.

    python -m benchmarks.faults                 # the full run, writes docs/RELIABILITY.md
    python -m benchmarks.faults --quick         # a few minutes, prints the table only

Scenarios (each on its own topics and group, one local KRaft broker it starts and stops itself):

    kill9-alo      kill -9 at random moments while events stream in (at-least-once): every
                   valid event valued at least once
    kill9-eos      the same with --exactly-once and --instance-id: exactly one valuation per
                   event for read_committed readers
    broker-restart the broker stopped and started on the same ports mid-stream
    outage-bound   the broker gone for longer than consumer.outage_timeout_s: a clear exit
    poison         every poison kind of issue 10 and the contract's malformed kinds, mixed in
    checkpoints    malicious (pickle payloads), old-format, corrupt and foreign checkpoints
    soak           many assets for minutes, the service's RSS sampled

Counts: events in (valid), valuations out (distinct events valued), missing, duplicates
(valuations beyond one per event), dead letters, crashes (exits that were not the kill or the
expected error), code executed (a payload's marker file appeared), RSS growth after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamval.config import BrokerSettings, Settings, load_settings
from streamval.consumers.checkpoint import CHECKPOINT_FILE, CheckpointMeta, CheckpointStore
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import Group, grouped_panel
from streamval.stream.kafka.broker import LocalBroker
from streamval.stream.kafka.clients import make_producer
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "RELIABILITY.md"
RESULTS = REPO / "docs" / "results" / "faults.json"
MARKER = Path(tempfile.gettempdir()) / "streamval-faults-code-ran"
T0 = 1_600_000_000_000
# Small networks: the faults are about the service, and 2 cores run broker, producer and engine.
ENGINE = {"engine.hidden": [16], "engine.seq_len": 6, "engine.bootstrap_assets": 12}
GROUPS = (
    Group(vol=0.003, prefix="A", attributes={"group": "A"}),
    Group(vol=0.01, prefix="B", attributes={"group": "B"}),
    Group(vol=0.02, prefix="C", attributes={"group": "C"}),
)


@dataclass
class Row:
    """One scenario's outcome."""

    scenario: str
    events_in: int = 0
    valued: int = 0
    missing: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    code_executed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return self.missing == 0 and self.crashes == 0 and self.code_executed == 0


class Payload:
    """Unpickling this creates MARKER: the attack of issue 10 item 1."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {MARKER}",))


class Harness:
    """One broker; fresh topics per scenario; `streamval run` as a subprocess."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.broker = LocalBroker(BrokerSettings(home=home / "broker"), die_with_parent=True)

    def settings(self, name: str, partitions: int = 3) -> Settings:
        s = uuid.uuid4().hex[:6]
        return load_settings(
            environ={},
            overrides={
                "kafka.bootstrap_servers": self.broker.bootstrap,
                "topics.input": f"{name}-in-{s}",
                "topics.dlq": f"{name}-in-{s}.dlq",
                "topics.valuations": f"{name}-val-{s}",
                "topics.metrics": f"{name}-met-{s}",
                "topics.partitions": partitions,
                "consumer.group_id": f"{name}-{s}",
            },
        )

    def start(
        self, settings: Settings, *flags: str, ckpt: Path | None = None, **sets: Any
    ) -> subprocess.Popen[bytes]:
        t = settings.topics
        values: dict[str, Any] = {
            "topics.input": t.input,
            "topics.dlq": t.dlq,
            "topics.valuations": t.valuations,
            "topics.metrics": t.metrics,
            "topics.partitions": t.partitions,
            "consumer.group_id": settings.consumer.group_id,
            "consumer.max_poll_records": 200,
            "consumer.checkpoint_interval_s": 2,
            "monitoring.enabled": False,
            **ENGINE,
            **sets,
        }
        cmd = [sys.executable, "-m", "streamval.cli", "run", "--log-format", "json"]
        cmd += ["--bootstrap-servers", str(settings.kafka.bootstrap_servers), *flags]
        if ckpt is not None:
            cmd += ["--checkpoint-dir", str(ckpt)]
        for key, value in values.items():
            cmd += ["--set", f"{key}={json.dumps(value)}"]
        log = (self.home / f"{settings.consumer.group_id}.log").open("ab")
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)

    def produce(self, settings: Settings, items: list[tuple[bytes | None, bytes | None]]) -> None:
        producer = make_producer(settings, max_request_size=4 * 1024 * 1024)
        for key, value in items:
            producer.send(settings.topics.input, key=key, value=value)
        producer.flush()
        producer.close()

    def outcome(
        self, row: Row, settings: Settings, events: list[AssetEvent], timeout_s: float = 120
    ) -> None:
        """Read the valuations until every event has one (duplicates do not count towards
        that) or `timeout_s` passes; then count."""
        wanted = {(e.asset_id, e.ts_ms) for e in events}
        deadline = time.monotonic() + timeout_s
        expected = len(wanted)
        while True:
            remaining = max(5.0, deadline - time.monotonic())
            records = read_topic(
                settings, settings.topics.valuations, expected=expected, timeout_s=remaining
            )
            counts = Counter(
                (b["asset_id"], b["ts"]) for b in (json.loads(m.value) for m in records)
            )
            missing = len(wanted - set(counts))
            if not missing or time.monotonic() > deadline:
                break
            expected = len(records) + missing  # duplicates arrived: wait for the rest
        row.events_in = len(wanted)
        row.valued = len(wanted & set(counts))
        row.missing = len(wanted - set(counts))
        row.duplicates = sum(n - 1 for n in counts.values())
        dead = read_topic(settings, settings.topics.dlq, timeout_s=60)
        row.dead_letters = Counter(dict(m.headers)["error"].decode() for m in dead)


def wait_valued(settings: Settings, n: int, timeout_s: float = 180) -> None:
    """Until `n` valuations are on the broker: the service is past its start and consuming (a
    broker stopped while it starts is the 'unreachable at start' case, a different one)."""
    from streamval.stream.kafka.reader import end_offsets

    deadline = time.monotonic() + timeout_s
    while sum(end_offsets(settings, settings.topics.valuations).values()) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n} valuations after {timeout_s:.0f} s")
        time.sleep(0.5)


def stream(steps: int, per_group: int, seed: int) -> list[AssetEvent]:
    return grouped_panel(GROUPS, per_group, steps, seed=seed, t0_ms=T0, shuffle=False).events


def items(events: list[AssetEvent]) -> list[tuple[bytes | None, bytes | None]]:
    return [(e.asset_id.encode(), e.to_bytes()) for e in events]


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


SOAK_TTL_MS = 4 * 3_600_000


# -- scenarios --------------------------------------------------------------------------------


def kill9(h: Harness, kills: int, eos: bool, rng: random.Random) -> Row:
    row = Row("kill9-eos" if eos else "kill9-alo")
    settings = h.settings(row.scenario)
    ensure_topics(settings)
    events = stream(steps=kills * 6 + 20, per_group=20, seed=rng.randrange(1000))
    chunks = np.array_split(np.arange(len(events)), kills + 1)
    ckpt = h.home / f"ckpt-{row.scenario}"
    flags = ["--instance-id", f"{row.scenario}-1"] + (["--exactly-once"] if eos else [])
    t0 = time.monotonic()
    for i, chunk in enumerate(chunks):
        proc = h.start(settings, *flags, ckpt=ckpt)
        h.produce(settings, items([events[j] for j in chunk]))
        if i < kills:
            time.sleep(rng.uniform(1.0, 6.0))  # a random moment: starting, mid-batch, idle
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            h.outcome(row, settings, events, timeout_s=300)
            code = stop(proc)
            row.crashes += int(code != 0)
    row.seconds = time.monotonic() - t0
    row.notes.append(f"{kills} kill -9; checkpoints on")
    if eos:
        row.notes.append("read_committed")
    return row


def broker_restart(h: Harness, rng: random.Random) -> Row:
    row = Row("broker-restart")
    settings = h.settings(row.scenario)
    ensure_topics(settings)
    events = stream(steps=60, per_group=20, seed=rng.randrange(1000))
    half = len(events) // 2
    t0 = time.monotonic()
    proc = h.start(settings, "--instance-id", "restart-1")
    h.produce(settings, items(events[:half]))
    wait_valued(settings, half // 2)
    h.broker.stop()
    time.sleep(15)
    h.broker.start()
    h.produce(settings, items(events[half:]))
    h.outcome(row, settings, events, timeout_s=300)
    row.crashes += int(stop(proc) != 0)
    row.seconds = time.monotonic() - t0
    row.notes.append("broker down 15 s mid-stream")
    return row


def outage_bound(h: Harness) -> Row:
    row = Row("outage-bound")
    settings = h.settings(row.scenario)
    ensure_topics(settings)
    t0 = time.monotonic()
    events = stream(steps=5, per_group=5, seed=1)
    sets: dict[str, Any] = {"consumer.outage_timeout_s": 20}
    proc = h.start(settings, **sets)
    h.produce(settings, items(events))
    wait_valued(settings, len(events))
    h.broker.stop()
    stopped = time.monotonic()
    try:
        code = proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = -9
    took = time.monotonic() - stopped
    h.broker.start()
    log = (h.home / f"{settings.consumer.group_id}.log").read_text(errors="replace")
    clear = "longer than consumer.outage_timeout_s" in log
    row.crashes = int(not (code == 2 and clear))
    row.seconds = time.monotonic() - t0
    row.notes.append(f"exit {code} {took:.0f} s after the broker stopped (bound 20 s)")
    return row


def poison(h: Harness, rng: random.Random) -> Row:
    from tests.unit.test_batch import POISON  # the unit tests' list: one place for the kinds

    row = Row("poison")
    settings = h.settings(row.scenario)
    ensure_topics(settings)
    events = stream(steps=40, per_group=20, seed=rng.randrange(1000))
    bad: list[tuple[bytes | None, bytes | None]] = [(b"p", raw) for raw, _ in POISON.values()]
    bad.append((b"big", b'{"asset_id": "big", "ts": 1, "pad": "' + b"x" * 1_100_000 + b'"}'))
    bad.append((b"A0", json.dumps({"asset_id": "A0", "ts": T0 + 7, "value": 1e308}).encode()))
    bad.append((b"A0", json.dumps({"asset_id": "A0", "ts": T0 + 8, "value": -1e308}).encode()))
    for i in range(50):  # year-2100 events: once refused, they cannot make later ones "late"
        bad.append((b"B0", json.dumps({"asset_id": f"B{i % 20}", "ts": "2100-01-01"}).encode()))
    mixed = items(events)
    for record in bad * 20:
        mixed.insert(rng.randrange(len(mixed) + 1), record)
    t0 = time.monotonic()
    proc = h.start(settings, "--instance-id", "poison-1")
    h.produce(settings, mixed)
    h.outcome(row, settings, events, timeout_s=300)
    row.crashes += int(stop(proc) != 0)
    row.seconds = time.monotonic() - t0
    expected = len(bad) * 20
    row.notes.append(f"{expected} poison records: {sum(row.dead_letters.values())} dead-lettered")
    if sum(row.dead_letters.values()) != expected:
        row.crashes += 1
    return row


def checkpoints(h: Harness) -> Row:
    row = Row("checkpoints")
    settings = h.settings(row.scenario)
    ensure_topics(settings)
    t = settings.topics
    meta = CheckpointMeta(settings.consumer.group_id, t.input, t.partitions)
    payload = pickle.dumps(Payload())
    cases: dict[str, bytes] = {
        "pickle under the checkpoint's name": payload,
        "torch.save with a payload": b"",
        "old-format checkpoint.pt": payload,
    }
    store = CheckpointStore(h.home / "probe")
    store.save({"version": 1, "w": np.arange(10.0)}, meta)
    valid = store.path.read_bytes()
    flipped = bytearray(valid)
    for i in range(64):
        flipped[len(flipped) - 1 - i * 3] ^= 0x5A
    cases["64 flipped bytes"] = bytes(flipped)
    other = CheckpointStore(h.home / "probe2")
    other.save({"version": 1}, CheckpointMeta("another-group", t.input, t.partitions))
    cases["another consumer group"] = other.path.read_bytes()
    other.save({"version": 1}, CheckpointMeta(settings.consumer.group_id, t.input, 12))
    cases["another partition count"] = other.path.read_bytes()
    t0 = time.monotonic()
    MARKER.unlink(missing_ok=True)
    refused = 0
    for name, data in cases.items():
        ckpt = h.home / f"ckpt-{uuid.uuid4().hex[:6]}"
        ckpt.mkdir()
        if name.startswith("torch.save"):
            import torch

            torch.save({"engine": Payload()}, ckpt / CHECKPOINT_FILE)
        elif name.startswith("old-format"):
            (ckpt / "checkpoint.pt").write_bytes(data)
        else:
            (ckpt / CHECKPOINT_FILE).write_bytes(data)
        proc = h.start(settings, "--exit-when-idle", "2", ckpt=ckpt)
        code = proc.wait(timeout=180)
        refused += int(code == 2)
        row.code_executed += int(MARKER.exists())
        MARKER.unlink(missing_ok=True)
    row.crashes = len(cases) - refused
    row.seconds = time.monotonic() - t0
    row.notes.append(f"{refused} of {len(cases)} refused with the problem named (exit 2)")
    return row


def row_to_json(row: Row) -> dict[str, Any]:
    out = dict(vars(row))
    out["dead_letters"] = dict(row.dead_letters)
    return out


def row_from_json(raw: dict[str, Any]) -> Row:
    return Row(**{**raw, "dead_letters": Counter(raw["dead_letters"])})


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(
    h: Harness, minutes: float, assets: int, rate: float
) -> tuple[Row, list[tuple[float, int]]]:
    """`assets` assets a step at `rate` events/s for `minutes`; RSS sampled every 5 s.

    The population rotates: each hourly step replaces an eighth of it with new ids, so every
    id is live for 8 steps and then idle; with `engine.asset_ttl` at 4 hours the idle ones
    expire, and the state must stop growing once the first ids expire (checkpoints every 2 s).
    """
    row = Row("soak")
    settings = h.settings(row.scenario)
    ensure_topics(settings)
    proc = h.start(
        settings,
        "--instance-id",
        "soak-1",
        ckpt=h.home / "ckpt-soak",
        **{"engine.asset_ttl": SOAK_TTL_MS},
    )
    producer = make_producer(settings)
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    sent = 0
    step = 0
    next_sample = t0
    rng = np.random.default_rng(0)
    prices = 100 * np.exp(rng.normal(0, 0.2, size=assets))
    try:
        while time.monotonic() - t0 < minutes * 60:
            ts = T0 + step * 3_600_000
            prices *= np.exp(rng.normal(0, 0.01, size=assets))
            for i in range(assets):
                asset = i + step * (assets // 8)
                key = f"S{asset:07d}"
                body = {"asset_id": key, "ts": ts, "value": float(prices[i])}
                producer.send(
                    settings.topics.input,
                    key=key.encode(),
                    value=json.dumps(body).encode(),
                )
                sent += 1
                if sent % 1000 == 0:
                    lag = sent / rate - (time.monotonic() - t0)
                    if lag > 0:
                        time.sleep(lag)
                    if time.monotonic() >= next_sample:
                        samples.append((time.monotonic() - t0, rss_kb(proc.pid)))
                        next_sample += 5
                if time.monotonic() - t0 >= minutes * 60:
                    break
            step += 1
        producer.flush()
    finally:
        producer.close()
    code = stop(proc, timeout_s=120)
    row.crashes = int(code != 0)
    row.events_in = sent
    row.seconds = time.monotonic() - t0
    row.notes.append(
        f"{assets:,} live assets (an eighth new each step, asset_ttl 4 h), {step + 1} steps, "
        f"{sent:,} events sent at up to {rate:,.0f}/s; checkpoints on; valuations not counted "
        "(RSS only)"
    )
    return row, samples


def rss_growth(samples: list[tuple[float, int]], warm_fraction: float = 0.4) -> float | None:
    """Relative RSS growth from the end of warm-up (the first `warm_fraction` of the run) to
    the end (medians of the last 5 samples at each point)."""
    if len(samples) < 10:
        return None
    start = int(len(samples) * warm_fraction)
    base = float(np.median([kb for _, kb in samples[start : start + 5]]))
    end = float(np.median([kb for _, kb in samples[-5:]]))
    return (end - base) / base


# -- report -----------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | events in | valued | missing | duplicates | dead letters | crashes | "
        "code executed | seconds | notes |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        dead = ", ".join(f"{k} {v}" for k, v in sorted(r.dead_letters.items())) or "0"
        lines.append(
            f"| {r.scenario} | {r.events_in:,} | {r.valued:,} | {r.missing:,} | "
            f"{r.duplicates:,} | {dead} | {r.crashes} | {r.code_executed} | {r.seconds:.0f} | "
            f"{'; '.join(r.notes)} |"
        )
    return "\n".join(lines)


def write_report(
    rows: list[Row],
    growth: float | None,
    samples: list[tuple[float, int]],
    args: argparse.Namespace,
) -> str:
    rss = "n/a" if growth is None else f"{growth:+.1%}"
    first = samples[0][1] / 1024 if samples else 0
    last = samples[-1][1] / 1024 if samples else 0
    ok = all(r.ok() for r in rows)
    return f"""# Reliability: the fault suite

`python -m benchmarks.faults` ({"quick" if args.quick else "full"} run, {
        time.strftime("%Y-%m-%d")
    }).
One local Kafka {BrokerSettings().kafka_version} broker (KRaft), `streamval run` as a subprocess,
small networks (LSTM 16 units, 6 steps) so that broker, producer and engine share 2 cores. Every
count comes from the output topics: valued = distinct (asset_id, ts) in `valuations`
(read_committed), duplicates = valuations beyond one per event, dead letters by their `error`
header. A crash is an exit that was neither the kill nor the expected error; code executed counts
payloads whose marker file appeared. Rows may come from separate runs (`--update` reruns one
scenario); `docs/results/faults.json` holds them and the RSS samples.

{table(rows)}

Soak: RSS of the service {first:,.0f} MiB at the first sample, {last:,.0f} MiB at the end; growth
from the end of warm-up (40% of the run) to the end: **{rss}**.

Result: {"0 lost, 0 crashes, 0 code executed" if ok else "FAILURES: see the rows above"}.

## What each row proves

- **kill9-alo / kill9-eos** (issue 10 items 3, 6): `kill -9` at random moments (1-6 s after a
  start: while joining, mid-batch, idle) while events stream in. At-least-once: every valid event
  valued at least once. Exactly-once: the transactional id is derived from `--instance-id`, so
  each restart fences the dead transaction and goes on; read_committed readers see exactly one
  valuation per event.
- **broker-restart / outage-bound** (item 5): the service rides out a 15 s broker outage
  (retries with backoff, `/readyz` not ready meanwhile) and exits with a clear message (exit 2)
  once the broker has been gone longer than `consumer.outage_timeout_s`.
- **poison** (item 2): every poison kind of the issue (lone surrogate, ts 10**400, 1e308 and
  -1e308, a 1.1 MB record whose DLQ copy is truncated, year-2100 events) and the contract's
  malformed kinds, 20 times each among valid events: each dead-lettered with its reason, every
  valid event valued, no year-2100 event turns later ones `late`.
- **checkpoints** (items 1, 7): pickle payloads under the checkpoint's name, a torch.save file,
  an old-format `checkpoint.pt`, 64 flipped bytes, another group, another partition count: each
  stops `streamval run` with the problem named, and no payload runs.
- **soak** (item 7): RSS sampled every 5 s while a rotating population streams through with
  checkpoints on and idle assets expiring (`engine.asset_ttl`): memory must level off.

"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer kills, a 1-minute soak")
    parser.add_argument("--kills", type=int, help="kill -9 per mode (default 20, quick 3)")
    parser.add_argument("--soak-minutes", type=float, help="default 10, quick 1")
    parser.add_argument("--soak-assets", type=int, default=100_000)
    parser.add_argument("--soak-rate", type=float, default=3000.0, help="events/s offered")
    parser.add_argument("--only", nargs="*", help="run only these scenarios")
    parser.add_argument("--out", type=Path, default=REPORT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help=f"run nothing: write the report from {RESULTS.name}",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help=f"replace only the scenarios run now in {RESULTS.name}, keep the others",
    )
    args = parser.parse_args(argv)
    kills = args.kills or (3 if args.quick else 20)
    minutes = args.soak_minutes or (1.0 if args.quick else 10.0)
    rng = random.Random(args.seed)
    rows: list[Row] = []
    samples: list[tuple[float, int]] = []
    if args.report_only:
        saved = json.loads(RESULTS.read_text())
        samples = [(float(t), int(kb)) for t, kb in saved["rss_samples"]]
        rows = [row_from_json(r) for r in saved["rows"]]
        args.out.write_text(write_report(rows, rss_growth(samples), samples, args))
        return 0 if all(r.ok() for r in rows) else 1
    with tempfile.TemporaryDirectory(prefix="streamval-faults-") as tmp:
        h = Harness(Path(tmp))
        h.broker.start()
        try:
            wanted = set(
                args.only
                or [
                    "kill9-alo",
                    "kill9-eos",
                    "broker-restart",
                    "outage-bound",
                    "poison",
                    "checkpoints",
                    "soak",
                ]
            )
            steps: list[tuple[str, Callable[[], Row]]] = [
                ("poison", lambda: poison(h, rng)),
                ("checkpoints", lambda: checkpoints(h)),
                ("kill9-alo", lambda: kill9(h, kills, False, rng)),
                ("kill9-eos", lambda: kill9(h, kills, True, rng)),
                ("broker-restart", lambda: broker_restart(h, rng)),
                ("outage-bound", lambda: outage_bound(h)),
            ]
            for name, run in steps:
                if name in wanted:
                    rows.append(run())
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
            if "soak" in wanted:
                row, samples = soak(h, minutes, args.soak_assets, args.soak_rate)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
        finally:
            h.broker.stop()
    if args.update and RESULTS.exists():
        saved = json.loads(RESULTS.read_text())
        done = {r.scenario for r in rows}
        kept = [row_from_json(r) for r in saved["rows"] if r["scenario"] not in done]
        order = [r["scenario"] for r in saved["rows"]]
        rows = sorted(
            kept + rows, key=lambda r: order.index(r.scenario) if r.scenario in order else 99
        )
        if "soak" not in done:
            samples = [(float(t), int(kb)) for t, kb in saved["rss_samples"]]
    growth = rss_growth(samples)
    report = write_report(rows, growth, samples, args)
    print(report)
    if not args.quick:
        args.out.write_text(report)
        RESULTS.write_text(
            json.dumps(
                {
                    "rows": [row_to_json(r) for r in rows],
                    "rss_samples": samples,
                    "rss_growth": growth,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"written to {args.out} and {RESULTS}", file=sys.stderr)
    return 0 if all(r.ok() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
