"""Issue 11 item 4 through the real broker: a backlog spread over 3 partitions is valued as if it
were one partition, because the service merges partitions in event-time order and holds back the
ones ahead."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from tests.integration.streams import regime_change

from streamval.config import Settings
from streamval.consumers.service import ValuationService
from streamval.monitoring.metrics import EngineMetrics
from streamval.stream.kafka.clients import make_producer
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T0 = 1_600_000_000_000


def run_on(settings: Settings, partitions: int, events: list) -> dict[tuple[str, int], dict]:
    suffix = f"{partitions}p-{uuid.uuid4().hex[:6]}"
    t = settings.topics.model_copy(
        update={
            "input": f"order-in-{suffix}",
            "valuations": f"order-val-{suffix}",
            "dlq": f"order-dlq-{suffix}",
            "metrics": f"order-met-{suffix}",
            "partitions": partitions,
        }
    )
    engine = settings.engine.model_copy(
        update={"hidden": [16], "seq_len": 6, "bootstrap_assets": 12, "min_history": 8}
    )
    consumer = settings.consumer.model_copy(
        update={"group_id": f"order-{suffix}", "max_poll_records": 64, "poll_timeout_ms": 200}
    )
    s = settings.model_copy(update={"topics": t, "engine": engine, "consumer": consumer})
    ensure_topics(s)
    producer = make_producer(s)
    for e in events:  # a backlog, in event-time order, keyed by asset
        producer.send(t.input, key=e.asset_id.encode(), value=e.to_bytes())
    producer.flush()
    producer.close()
    ValuationService(s, metrics=EngineMetrics()).run(max_idle_polls=6)
    bodies = [json.loads(m.value) for m in read_topic(s, t.valuations, expected=len(events))]
    return {(b["asset_id"], b["ts"]): b for b in bodies}


def test_three_partitions_give_the_valuations_of_one(kafka_settings: Settings) -> None:
    events = regime_change(45, t0_ms=T0, shift_step=30)
    one = run_on(kafka_settings, 1, events)
    three = run_on(kafka_settings, 3, events)
    assert one.keys() == three.keys() == {(e.asset_id, e.ts_ms) for e in events}
    model_made = [k for k, b in one.items() if not b["warming"] and not three[k]["warming"]]
    assert len(model_made) > len(events) // 2
    rel = np.array(
        [
            abs(one[k]["valuation"] - three[k]["valuation"]) / max(abs(one[k]["valuation"]), 1e-9)
            for k in model_made
        ]
    )
    print(f"median relative difference {np.median(rel):.2e}, max {rel.max():.2e}")
    assert np.median(rel) <= 0.01
