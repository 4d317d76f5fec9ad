"""Replay: produce an `EventTable` into the input topic in event-time order, paced, with markers.

`replay(settings, table)` sends every row as an `AssetEvent` (key = asset_id UTF-8, value =
`AssetEvent.to_bytes()`) to `settings.topics.input`, in the table's order: event time across
assets, ties by asset id, paced by `rate` or `speed` (`streamval.stream.replay.pacing`).

Markers (`streamval.stream.replay.markers`) inside the table's period are published on the
metrics topic (key `marker`) just before the first event at or after their time.
`on_progress(n_sent)` is called after each batch of sends and at the end, `on_marker(marker)`
after each marker. `before_time(n_sent, ts_ms)`, if given, is called before the first event of
each event time after the first (once what was sent is flushed), and may block: the demo sends
a month once the engine has valued the last one. The producer is flushed before returning;
delivery failures and an unreachable broker raise `BrokerError`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError
from tqdm import tqdm

from streamval.config import Settings
from streamval.errors import BrokerError
from streamval.stream.datasets.event_table import EventTable
from streamval.stream.kafka.clients import check_reachable, make_producer
from streamval.stream.kafka.topics import ensure_topics
from streamval.stream.replay.markers import Marker, within
from streamval.stream.replay.pacing import Pacer, pace_offsets

log = logging.getLogger(__name__)

MARKER_KEY = b"marker"
# Progress callbacks and the bar are updated every this many events: often enough for a smooth
# bar at 100k+ events/s, rarely enough to cost nothing per event.
PROGRESS_EVERY = 500
# How long the final flush may take before the replay fails: at 100 MB of buffered events and a
# slow local broker, 120 s is ample; a broker that is gone fails long before.
FLUSH_TIMEOUT_S = 120.0


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


def replay(
    settings: Settings,
    table: EventTable,
    *,
    rate: float | None = None,
    speed: float | None = None,
    markers: Sequence[Marker] = (),
    on_progress: Callable[[int], None] | None = None,
    on_marker: Callable[[Marker], None] | None = None,
    before_time: Callable[[int, int], None] | None = None,
    progress: bool = False,
    create_topics: bool = True,
    producer_config: dict[str, Any] | None = None,
) -> ReplayReport:
    """Produce `table` into the input topic; see the module docstring. Returns what was sent."""
    offsets = pace_offsets(table, rate, speed)
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

    bar = tqdm(
        total=len(table),
        unit="ev",
        unit_scale=True,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="replay",
        disable=not progress,
    )
    sent = n_markers = 0
    previous_ts: int | None = None
    pacer = Pacer(offsets) if offsets is not None else None
    t0 = time.monotonic()
    try:
        for i, event in enumerate(table.events()):
            if before_time is not None and event.ts_ms != previous_ts:
                if previous_ts is not None:
                    producer.flush(timeout=FLUSH_TIMEOUT_S)
                    before_time(sent, event.ts_ms)
                previous_ts = event.ts_ms
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
