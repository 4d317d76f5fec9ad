"""Kafka clients built from settings: one place for client defaults; a fast reachability check."""

from __future__ import annotations

import socket
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from streamval.config import Settings, kafka_client_config
from streamval.errors import BrokerError, ConfigError

# A TCP connect to a live broker takes milliseconds; 5 s covers a slow remote network while an
# unreachable cluster fails in seconds instead of kafka-python's 30 s bootstrap timeout.
CONNECT_TIMEOUT_S = 5.0


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
