"""The valuation service against the real broker: one valuation per valid event, outputs before
offsets, snapshots and drift alarms on the metrics topic, late events dead-lettered, duplicates
dropped, and state restored from a checkpoint."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition
from tests.integration.streams import regime_change, to_long_table
from tests.support.engines import DataEngine

from streamval.config import Settings
from streamval.consumers.checkpoint import CHECKPOINT_FILE
from streamval.consumers.service import ValuationService
from streamval.errors import DataError
from streamval.monitoring.metrics import EngineMetrics
from streamval.stream.contract.schema import AssetEvent
from streamval.stream.datasets.synthetic import DAY_MS
from streamval.stream.kafka.clients import make_consumer, make_producer
from streamval.stream.kafka.reader import end_offsets, read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T0 = 1_600_000_000_000
SHIFT_STEP = 70


def small_engine(settings: Settings, **extra: Any) -> Settings:
    engine = settings.engine.model_copy(
        update={
            "hidden": [16, 8],
            "seq_len": 6,
            "bootstrap_assets": 12,
            "min_history": 8,
            "batch_size": 32,
            # The streams are 110 steps long with the shift at step 70: the shock detector
            # calibrates on 40 steps instead of its default 250.
            "shock_calibration": 40,
            **extra,
        }
    )
    consumer = settings.consumer.model_copy(
        update={"max_poll_records": 100, "metrics_interval_s": 0.5, "poll_timeout_ms": 200}
    )
    return settings.model_copy(update={"engine": engine, "consumer": consumer})


def stream(steps: int, seed: int = 0) -> list[AssetEvent]:
    return regime_change(steps, t0_ms=T0, shift_step=SHIFT_STEP, seed=seed)


def produce(
    settings: Settings, events: list[AssetEvent], extra: list[tuple[bytes, bytes]] = ()
) -> None:
    producer = make_producer(settings)
    for e in events:
        producer.send(settings.topics.input, key=e.asset_id.encode(), value=e.to_bytes())
    for key, value in extra:
        producer.send(settings.topics.input, key=key, value=value)
    producer.flush()
    producer.close()


def read(settings: Settings, topic: str, timeout_s: float = 20.0) -> list[Any]:
    return read_topic(settings, topic, timeout_s=timeout_s)


def end_offsets_sum(settings: Settings, topic: str) -> int:
    return sum(end_offsets(settings, topic).values())


class CommitSpy(ValuationService):
    """At every commit, checks that the broker already holds the valuations being committed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commit_checks: list[tuple[int, int]] = []
        self._expect = 0

    def _handle(self, processor: Any, batch: Any) -> None:
        delivery = self._delivery
        assert delivery is not None
        if not getattr(delivery, "_spied", False):
            deliver, commit = delivery.deliver, delivery.commit_async

            def spied_deliver(outcome: Any) -> None:
                self._expect = self.published + sum(outcome.published.values())
                deliver(outcome)

            def checked_commit() -> None:
                on_broker = end_offsets_sum(self.settings, self.settings.topics.valuations)
                self.commit_checks.append((self._expect, on_broker))
                commit()

            delivery.deliver = spied_deliver  # type: ignore[method-assign]
            delivery.commit_async = checked_commit  # type: ignore[method-assign]
            delivery._spied = True  # type: ignore[attr-defined]
        super()._handle(processor, batch)


def test_service_end_to_end(kafka_settings: Settings) -> None:
    settings = small_engine(kafka_settings)
    t = settings.topics
    ensure_topics(settings, [t.input, t.dlq, t.valuations, t.metrics])
    events = stream(110)
    late = AssetEvent("B1", T0 + 5 * DAY_MS, 1.0)  # older than B1's last event: late
    duplicate = events[-1]  # same asset and ts as its last event: dropped
    produce(
        settings,
        events,
        [
            (b"B1", late.to_bytes()),
            (duplicate.asset_id.encode(), duplicate.to_bytes()),
            (b"bad", b"{oops"),
        ],
    )

    metrics = EngineMetrics()
    service = CommitSpy(settings, metrics=metrics)
    service.run(max_idle_polls=6)

    valuations = read(settings, t.valuations)
    assert len(valuations) == len(events)  # exactly one per valid event, none for late/dup/bad
    keys = Counter(m.key for m in valuations)
    assert set(keys.values()) == {110} and len(keys) == 18
    body = json.loads(valuations[0].value)
    assert {
        "asset_id",
        "ts",
        "valuation",
        "cluster",
        "model_version",
        "warming",
        "adapting",
        "lr",
        "value",
        "error",
    } <= set(body)
    assert all(np.isfinite(json.loads(m.value)["valuation"]) for m in valuations)

    # Outputs were on the broker before each commit.
    assert service.commit_checks
    assert all(on_broker >= published for published, on_broker in service.commit_checks)
    assert service.commit_checks[-1][1] == len(events)

    dead = read(settings, t.dlq)
    reasons = Counter(dict(m.headers)["error"].decode() for m in dead)
    assert reasons == Counter({"late": 1, "invalid_json": 1})

    metric_msgs = [json.loads(m.value) for m in read(settings, t.metrics)]
    kinds = Counter(m["kind"] for m in metric_msgs)
    assert kinds["snapshot"] >= 3
    drift = [m for m in metric_msgs if m["kind"] == "drift"]
    assert drift, "the regime change in group A raised no drift alarm"
    clusters_a = {
        json.loads(m.value)["cluster"]
        for m in valuations
        if m.key.startswith(b"A") and json.loads(m.value)["ts"] >= T0 + SHIFT_STEP * DAY_MS
    }
    shift_ts = T0 + SHIFT_STEP * DAY_MS
    delays = [
        (d["ts"] - shift_ts) // DAY_MS
        for d in drift
        if d["cluster"] in clusters_a and d["ts"] >= shift_ts
    ]
    assert delays and min(delays) <= 15, f"no timely alarm in group A's cluster: {drift}"

    # The group's committed offsets cover every input message.
    consumer = make_consumer(settings)
    parts = [TopicPartition(t.input, p) for p in consumer.partitions_for_topic(t.input)]
    committed = sum(consumer.committed(tp) or 0 for tp in parts)
    consumer.close()
    assert committed == len(events) + 3


def test_restart_from_a_checkpoint_restores_the_engine(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """The real engine checkpointed and restored: state comes back, nothing is re-published."""
    settings = small_engine(kafka_settings)
    settings = settings.model_copy(
        update={
            "consumer": settings.consumer.model_copy(update={"checkpoint_dir": tmp_path / "ckpt"})
        }
    )
    t = settings.topics
    ensure_topics(settings, [t.input, t.dlq, t.valuations, t.metrics])
    events = stream(40)
    produce(settings, events)
    service = ValuationService(settings, metrics=EngineMetrics())
    service.run(max_idle_polls=4)
    assert service.published == len(events)
    assert (tmp_path / "ckpt" / CHECKPOINT_FILE).exists()
    restarted = ValuationService(settings, metrics=EngineMetrics())
    restarted.run(max_idle_polls=3)
    assert restarted.published == 0
    assert restarted.engine.assignments() == service.engine.assignments()
    assert len(read(settings, t.valuations)) == len(events)


def test_sigterm_style_stop_finishes_the_batch(kafka_settings: Settings) -> None:
    settings = small_engine(kafka_settings)
    t = settings.topics
    ensure_topics(settings, [t.input, t.dlq, t.valuations, t.metrics])
    events = stream(30, seed=1)
    produce(settings, events)
    service = ValuationService(settings, metrics=EngineMetrics())
    thread = threading.Thread(target=service.run)
    thread.start()
    deadline = time.monotonic() + 60
    while service.published < len(events) and time.monotonic() < deadline:
        time.sleep(0.1)
    service.stop()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert service.published == len(events)
    assert len(read(settings, t.valuations)) == len(events)


def test_exactly_once_mode(kafka_settings: Settings) -> None:
    settings = small_engine(kafka_settings)
    settings = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"exactly_once": True})}
    )
    t = settings.topics
    ensure_topics(settings, [t.input, t.dlq, t.valuations, t.metrics])
    events = stream(40, seed=2)
    produce(settings, events, [(b"bad", b"[1]")])
    service = ValuationService(settings, metrics=EngineMetrics())
    service.run(max_idle_polls=4)

    # read_committed consumers see exactly one valuation per valid event and the DLQ entry.
    valuations = read(settings, t.valuations)
    assert len(valuations) == len(events)
    assert Counter((m.key, json.loads(m.value)["ts"]) for m in valuations) == Counter(
        (e.asset_id.encode(), e.ts_ms) for e in events
    )
    assert [dict(m.headers)["error"] for m in read(settings, t.dlq)] == [b"not_an_object"]
    consumer = make_consumer(settings)
    parts = [TopicPartition(t.input, p) for p in consumer.partitions_for_topic(t.input)]
    assert sum(consumer.committed(tp) or 0 for tp in parts) == len(events) + 1
    consumer.close()


def test_rebalance_mid_stream_loses_and_repeats_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """Another member joins and leaves while the service runs with checkpoints: every valid event
    is valued exactly once, and partitions coming back resume at the committed offset (the
    checkpoint's offsets only matter after a restart)."""
    settings = small_engine(kafka_settings)
    settings = settings.model_copy(
        update={
            "consumer": settings.consumer.model_copy(
                update={"checkpoint_dir": tmp_path / "ckpt", "checkpoint_interval_s": 3600}
            )
        }
    )
    ensure_topics(settings)
    events = stream(60)
    quarter, half = len(events) // 4, len(events) // 2
    metrics = EngineMetrics()
    # The stand-in engine's state is data, so this runs before the engine work lands; what is
    # tested here is the service's offsets, not the model.
    service = CheckpointOnce(settings, metrics=metrics, after=quarter, engine=DataEngine())
    worker = threading.Thread(target=service.run)
    worker.start()
    try:
        produce(settings, events[:quarter])
        deadline = time.monotonic() + 60
        while not service.checkpointed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.checkpointed
        # The one checkpoint now lags the committed offsets by a quarter of the stream.
        produce(settings, events[quarter:half])
        while service.published < half and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.published == half

        # A second member takes some partitions, reads without committing, and leaves.
        other = make_consumer(settings, settings.topics.input, client_id="intruder")
        try:
            deadline = time.monotonic() + 30
            while not other.assignment() and time.monotonic() < deadline:
                other.poll(timeout_ms=200)
            assert other.assignment()
            produce(settings, events[half:])
            for _ in range(5):
                other.poll(timeout_ms=200)
        finally:
            other.close(autocommit=False)

        deadline = time.monotonic() + 90
        while service.published < len(events) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        service.stop()
        worker.join(timeout=60)
    assert service.published == len(events)
    assert metric_value(metrics, "streamval_duplicate_events_total") == 0
    keys = Counter(
        (m.key, json.loads(m.value)["ts"]) for m in read(settings, settings.topics.valuations)
    )
    assert len(keys) == len(events) and set(keys.values()) == {1}
    assert end_offsets_sum(settings, settings.topics.dlq) == 0  # nothing re-read as "late"


def test_history_warms_the_engine_before_the_first_event(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """`consumer.history`: the first live valuations come from fitted clusters and full windows;
    a restart restores the checkpoint and does not read the history again."""
    events = stream(60)
    split = 18 * 40
    history = tmp_path / "history.csv"
    to_long_table(events[:split]).to_csv(history, index=False)
    settings = small_engine(kafka_settings)  # bootstrap_assets=12 of 18 assets
    settings = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"history": history})}
    )
    ensure_topics(settings)
    produce(settings, events[split:])
    service = ValuationService(settings, metrics=EngineMetrics())
    service.run(max_idle_polls=3)
    assert service.published == len(events) - split
    bodies = [json.loads(m.value) for m in read(settings, settings.topics.valuations)]
    assert len(bodies) == len(events) - split
    assert not any(b["warming"] for b in bodies)
    first_day = [b for b in bodies if b["ts"] == events[split].ts_ms]
    assert len(first_day) == 18 and len({b["cluster"] for b in first_day}) == 3


def test_a_restart_restores_the_checkpoint_instead_of_reading_the_history(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    events = stream(40)
    split = 18 * 30
    history = tmp_path / "history.csv"
    to_long_table(events[:split]).to_csv(history, index=False)
    settings = small_engine(kafka_settings)
    settings = settings.model_copy(
        update={
            "consumer": settings.consumer.model_copy(
                update={"history": history, "checkpoint_dir": tmp_path / "ckpt"}
            )
        }
    )
    ensure_topics(settings)
    produce(settings, events[split:])
    service = ValuationService(settings, metrics=EngineMetrics())
    service.run(max_idle_polls=3)
    history.unlink()  # the checkpoint holds what the history taught
    restarted = ValuationService(settings, metrics=EngineMetrics())
    restarted.run(max_idle_polls=3)
    assert restarted.engine.assignments() == service.engine.assignments()


def test_a_missing_history_file_fails_before_consuming(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = small_engine(kafka_settings)
    settings = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"history": tmp_path / "no.csv"})}
    )
    with pytest.raises(DataError, match=r"no\.csv: no such file"):
        ValuationService(settings, metrics=EngineMetrics()).run(max_idle_polls=1)


def metric_value(metrics: EngineMetrics, name: str) -> float:
    return sum(s.value for m in metrics.registry.collect() for s in m.samples if s.name == name)


class CheckpointOnce(ValuationService):
    """Writes one checkpoint, as soon as `after` valuations are published, and no other."""

    def __init__(self, *args: Any, after: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after = after
        self.checkpointed = False

    def _handle(self, processor: Any, batch: Any) -> None:
        super()._handle(processor, batch)
        if not self.checkpointed and self.published >= self.after:
            assert self._delivery is not None
            self.checkpointed = self._delivery.checkpoint(force=True)
