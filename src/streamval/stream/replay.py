"""Replay: produce an `EventTable` into the input topic in event-time order, paced, with markers.

`replay(settings, table)` sends every row as an `AssetEvent` (key = asset_id UTF-8, value =
`AssetEvent.to_bytes()`) to `settings.topics.input`, in the table's order: event time across
assets, ties by asset id. Pacing:

* neither `rate` nor `speed`: as fast as the producer goes;
* `rate=N`: at most N events per second (event i leaves no earlier than i / N s after the start);
* `speed=X`: event time runs X times faster than wall time (86400: one day of history a second);
  event e leaves no earlier than (e.ts - first.ts) / X after the start.

A stall of the sender (a slow broker, a long GC) longer than `MAX_BEHIND_S` shifts the schedule
instead of bursting to catch up: the rate stays a cap, and event-time spacing is kept after it.

Markers (`streamval.stream.markers`) inside the table's period are published on the metrics topic
(key `marker`) just before the first event at or after their time. `on_progress(n_sent)` is
called after each batch of sends and at the end, `on_marker(marker)` after each marker. The
producer is flushed before returning; delivery failures and an unreachable broker raise
`BrokerError`.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError

from streamval.config import Settings
from streamval.errors import BrokerError, ConfigError
from streamval.stream.clients import make_producer
from streamval.stream.datasets._frame import EventTable
from streamval.stream.markers import Marker, within
from streamval.stream.topics import ensure_topics

log = logging.getLogger(__name__)

MARKER_KEY = b"marker"
# Progress callbacks and the bar are updated every this many events: often enough for a smooth
# bar at 100k+ events/s, rarely enough to cost nothing per event.
PROGRESS_EVERY = 500
MAX_SLEEP_S = 0.25
# A TCP connect to a live broker takes milliseconds; 5 s covers a slow remote network while an
# unreachable cluster fails in seconds instead of kafka-python's 30 s bootstrap timeout.
CONNECT_TIMEOUT_S = 5.0
# How long the final flush may take before the replay fails: at 100 MB of buffered events and a
# slow local broker, 120 s is ample; a broker that is gone fails long before.
FLUSH_TIMEOUT_S = 120.0
# Lateness the pacer still catches up (sleep granularity, a slow send); beyond it, it re-anchors.
MAX_BEHIND_S = 0.05


@dataclass(frozen=True)
class ReplayReport:
    """What a replay sent."""

    events: int
    assets: int
    markers: int
    first_ts_ms: int | None
    last_ts_ms: int | None
    seconds: float

    @property
    def rate(self) -> float:
        """Events per second of wall time."""
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def _pace_offsets(table: EventTable, rate: float | None, speed: float | None) -> list[float] | None:
    """Seconds after the start at which each event may leave, or None for no pacing."""
    if rate is not None and speed is not None:
        raise ConfigError("choose one of rate (events/s) and speed (event-time multiplier)")
    if rate is not None:
        if rate <= 0:
            raise ConfigError(f"rate must be positive, got {rate}")
        return [i / rate for i in range(len(table))]
    if speed is not None:
        if speed <= 0:
            raise ConfigError(f"speed must be positive, got {speed}")
        ts = table.frame["ts"].to_numpy()
        if len(ts) == 0:
            return []
        return [float(x) for x in (ts - ts[0]) / 1000.0 / speed]
    return None


def replay(
    settings: Settings,
    table: EventTable,
    *,
    rate: float | None = None,
    speed: float | None = None,
    markers: Sequence[Marker] = (),
    on_progress: Callable[[int], None] | None = None,
    on_marker: Callable[[Marker], None] | None = None,
    progress: bool = False,
    create_topics: bool = True,
    producer_config: dict[str, Any] | None = None,
) -> ReplayReport:
    """Produce `table` into the input topic; see the module docstring. Returns what was sent."""
    offsets = _pace_offsets(table, rate, speed)
    topic, metrics_topic = settings.topics.input, settings.topics.metrics
    frame = table.frame
    first = int(frame["ts"].iloc[0]) if len(frame) else None
    last = int(frame["ts"].iloc[-1]) if len(frame) else None
    pending = within(markers, first, last) if first is not None and last is not None else []
    check_reachable(settings)
    try:
        if create_topics:
            ensure_topics(settings, [topic, metrics_topic] if pending else [topic])
        producer = make_producer(settings, **(producer_config or {}))
        producer.partitions_for(topic)  # metadata now: the first send must not stall the pacing
    except KafkaError as exc:
        raise BrokerError(
            f"cannot use the Kafka cluster at {settings.kafka.bootstrap_servers}: {exc}"
        ) from None
    errors: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        errors.append(exc)

    bar = _progress_bar(len(table), progress)
    sent = n_markers = 0
    pacer = Pacer(offsets) if offsets is not None else None
    t0 = time.monotonic()
    try:
        for i, event in enumerate(table.events()):
            while pending and pending[0].ts_ms <= event.ts_ms:
                marker = pending.pop(0)
                producer.send(metrics_topic, key=MARKER_KEY, value=marker.to_bytes()).add_errback(
                    failed
                )
                n_markers += 1
                if on_marker is not None:
                    on_marker(marker)
            if pacer is not None:
                pacer.wait(i)
            producer.send(topic, key=event.asset_id.encode(), value=event.to_bytes()).add_errback(
                failed
            )
            sent += 1
            if errors:
                break
            if sent % PROGRESS_EVERY == 0:
                bar.update(PROGRESS_EVERY)
                if on_progress is not None:
                    on_progress(sent)
        producer.flush(timeout=FLUSH_TIMEOUT_S)
    except KafkaError as exc:
        raise BrokerError(f"producing to {topic!r} failed: {exc}") from None
    finally:
        bar.update(sent % PROGRESS_EVERY)
        bar.close()
        producer.close(timeout=5)
    if errors:
        raise BrokerError(f"producing to {topic!r} failed: {errors[0]!r}")
    if on_progress is not None:
        on_progress(sent)
    seconds = time.monotonic() - t0
    report = ReplayReport(
        events=sent,
        assets=int(frame["asset_id"].nunique()),
        markers=n_markers,
        first_ts_ms=first,
        last_ts_ms=last,
        seconds=seconds,
    )
    log.info(
        "replay done", extra={"events": sent, "markers": n_markers, "seconds": round(seconds, 2)}
    )
    return report


def check_reachable(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with `BrokerError` unless some bootstrap server accepts a TCP connection."""
    servers = settings.kafka.bootstrap_servers
    if not servers:
        raise ConfigError("kafka.bootstrap_servers is not set (KAFKA_BOOTSTRAP_SERVERS)")
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise BrokerError(
        f"cannot reach the Kafka cluster at {servers}: no bootstrap server accepted a connection "
        "(is the broker running? check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS)"
    )


class Pacer:
    """Holds event i back until `offsets[i]` seconds after the first `wait`, re-anchoring after
    a stall longer than `max_behind_s` instead of bursting to catch up."""

    def __init__(
        self,
        offsets: Sequence[float],
        *,
        max_behind_s: float = MAX_BEHIND_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.offsets = offsets
        self.max_behind_s = max_behind_s
        self.clock = clock
        self.sleep = sleep
        self.origin: float | None = None

    def wait(self, i: int) -> None:
        """Return when event `i` may leave."""
        now = self.clock()
        if self.origin is None:
            self.origin = now - self.offsets[i]
        due = self.origin + self.offsets[i]
        if now - due > self.max_behind_s:
            self.origin += now - due
            return
        # Sleeping in slices keeps pacing responsive to Ctrl-C.
        while (left := due - self.clock()) > 0:
            self.sleep(min(left, MAX_SLEEP_S))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr (rate and ETA) when enabled, else a no-op."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(
        total=total, unit="ev", unit_scale=True, file=sys.stderr, dynamic_ncols=True, desc="replay"
    )
