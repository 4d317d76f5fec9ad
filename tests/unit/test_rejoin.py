"""The service re-creates a consumer that stays outside its group (no Kafka needed)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.engines import DataEngine

import streamval.consumers.service as service_module
from streamval.config import load_settings
from streamval.consumers.service import ValuationService
from streamval.monitoring.metrics import EngineMetrics


class FakeConsumer:
    def __init__(self) -> None:
        self.closed = False
        self.subscribed: list[str] = []

    def close(self, autocommit: bool = True, timeout_ms: int | None = None) -> None:
        self.closed = True

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.subscribed = topics


def test_a_consumer_without_partitions_past_the_bound_is_recreated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(
        environ={}, overrides={"consumer.rejoin_after_s": 60, "monitoring.enabled": False}
    )
    made: list[FakeConsumer] = []

    def make(_: Any, **kwargs: Any) -> FakeConsumer:
        made.append(FakeConsumer())
        return made[-1]

    monkeypatch.setattr(service_module, "make_consumer", make)
    metrics = EngineMetrics()
    service = ValuationService(settings, metrics=metrics, engine=DataEngine())
    stuck = FakeConsumer()
    service._consumer = stuck  # type: ignore[assignment]

    service._check_membership(0.0)  # the clock starts
    service._check_membership(59.0)
    assert service.rejoins == 0 and not stuck.closed
    service._check_membership(61.0)
    assert service.rejoins == 1 and stuck.closed
    assert service._consumer is made[0] and made[0].subscribed == [settings.topics.input]
    assert metrics.registry.get_sample_value("streamval_consumer_rejoins_total") == 1.0

    # Partitions assigned: the clock stops; losing them starts it afresh.
    service._assigned = {object()}  # type: ignore[assignment]
    service._check_membership(100.0)
    service._assigned = set()
    service._check_membership(130.0)
    service._check_membership(189.0)
    assert service.rejoins == 1
    service._check_membership(191.0)
    assert service.rejoins == 2


class Coordinator:
    def __init__(self, *, stable: bool, rejoining: bool) -> None:
        self._stable = stable
        self.rejoining = rejoining

    def stable(self) -> bool:
        return self._stable

    def need_rejoin(self) -> bool:
        return False


@pytest.mark.parametrize(
    ("stable", "rejoining", "recreated"),
    [(True, False, False), (True, True, True), (False, False, True)],
)
def test_a_settled_member_without_partitions_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, stable: bool, rejoining: bool, recreated: bool
) -> None:
    """More members than partitions: an idle member is normal, re-creating it would rebalance
    the group every rejoin_after_s. Only a member stuck joining is re-created."""
    settings = load_settings(
        environ={}, overrides={"consumer.rejoin_after_s": 60, "monitoring.enabled": False}
    )
    monkeypatch.setattr(service_module, "make_consumer", lambda _, **kw: FakeConsumer())
    service = ValuationService(settings, metrics=EngineMetrics(), engine=DataEngine())
    consumer = FakeConsumer()
    consumer._coordinator = Coordinator(stable=stable, rejoining=rejoining)  # type: ignore[attr-defined]
    service._consumer = consumer  # type: ignore[assignment]
    service._check_membership(0.0)
    service._check_membership(61.0)
    assert service.rejoins == int(recreated) and consumer.closed == recreated
