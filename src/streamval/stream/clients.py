"""Kafka clients built from settings: one place for serialisation and client defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from streamval.config import Settings, kafka_client_config


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer for the configured cluster: acks=all, idempotent, user settings on top."""
    config: dict[str, Any] = {
        "client_id": settings.consumer.client_id,
        "acks": "all",
        "linger_ms": 5,
        "enable_idempotence": True,
    }
    config.update(kafka_client_config(settings, "producer"))
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(settings: Settings, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer-group member with manual commits (done after the outputs are acked)."""
    c = settings.consumer
    config: dict[str, Any] = {
        "client_id": c.client_id,
        "group_id": c.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": c.auto_offset_reset,
        "max_poll_records": c.max_poll_records,
        "max_poll_interval_ms": c.max_poll_interval_ms,
        "isolation_level": "read_committed",
    }
    config.update(kafka_client_config(settings, "consumer"))
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    if topics:
        consumer.subscribe(list(topics))
    return consumer


def headers_dict(headers: Any) -> Mapping[str, bytes]:
    """kafka-python record headers (a list of (key, bytes)) as a dict; the last value wins."""
    return dict(headers or [])
