"""Shared fixtures: a real Kafka broker for the session, the shared data directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from streamval.config import BrokerSettings, Settings, load_settings
from streamval.stream.kafka.broker import LocalBroker

# Two cores on CI: one torch thread per process leaves the other to the broker.
torch.set_num_threads(1)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the clone (CI), or STREAMVAL_SHARED_DATA. Missing is an error."""
    path = Path(os.environ.get("STREAMVAL_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "sp500_2015_2020" / "prices.csv").exists():
        pytest.fail(f"shared data not found at {path}; set STREAMVAL_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    """The session's local broker, or None when KAFKA_BOOTSTRAP_SERVERS names a cluster.

    The local broker's JVM is tied to this process (PR_SET_PDEATHSIG), so it cannot outlive the
    test run even if pytest is killed.
    """
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    home = tmp_path_factory.mktemp("kafka")
    broker = LocalBroker(BrokerSettings(home=home), die_with_parent=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> str:
    """Bootstrap address of a real broker: KAFKA_BOOTSTRAP_SERVERS, or the local one."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or (
        local_broker.bootstrap if local_broker else ""
    )


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Settings:
    """Settings pointing at the test broker, with topic names unique to the test."""
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        environ={},
        overrides={
            "kafka.bootstrap_servers": kafka_bootstrap,
            "topics.input": f"asset-events-{suffix}",
            "topics.dlq": f"asset-events-{suffix}.dlq",
            "topics.valuations": f"valuations-{suffix}",
            "topics.metrics": f"valuation-metrics-{suffix}",
            "consumer.group_id": f"streamval-test-{suffix}",
            "monitoring.enabled": False,
        },
    )
