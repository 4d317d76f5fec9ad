"""Delivery with an in-process producer and consumer: every send is checked before its offsets
are committed; what cannot be produced is dead-lettered; outages are retried up to the bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from streamval.consumers.batch import Outcome
from streamval.consumers.checkpoint import CheckpointMeta, CheckpointStore, CheckpointWriter
from streamval.consumers.delivery import Delivery, DeliveryError
from streamval.consumers.outage import Outage, OutageError
from streamval.consumers.records import OutRecord, SimpleRecord, dead_letter

Pred = Callable[[str, bytes], bool]


class Future:
    def __init__(self, exc: BaseException | None = None) -> None:
        self.is_done = True
        self.exception = exc

    def failed(self) -> bool:
        return self.exception is not None


class Producer:
    """Records what was sent and acknowledged; rules decide which sends fail and how."""

    def __init__(self) -> None:
        self.acked: list[tuple[str, bytes]] = []
        self.events: list[str] = []
        self.refuse: list[tuple[Pred, BaseException]] = []  # raised by send()
        self.fail: list[tuple[Pred, BaseException]] = []  # on the future
        self.down = 0  # this many sends fail as if the broker were unreachable
        self._txn: list[tuple[str, bytes]] | None = None

    def send(self, topic: str, key: Any, value: bytes, headers: Any) -> Future:
        for pred, exc in self.refuse:
            if pred(topic, value):
                raise exc
        if self.down:
            self.down -= 1
            return Future(KafkaTimeoutError("broker unreachable"))
        for pred, exc in self.fail:
            if pred(topic, value):
                return Future(exc)
        (self._txn if self._txn is not None else self.acked).append((topic, value))
        return Future()

    def flush(self, timeout: float | None = None) -> None:
        self.events.append("flush")

    def begin_transaction(self) -> None:
        self._txn = []
        self.events.append("begin")

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        self.events.append(
            f"offsets {sorted((tp.partition, o.offset) for tp, o in offsets.items())}"
        )

    def commit_transaction(self) -> None:
        assert self._txn is not None
        self.acked.extend(self._txn)
        self._txn = None
        self.events.append("commit")

    def abort_transaction(self) -> None:
        self._txn = None
        self.events.append("abort")


class Consumer:
    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.committed: dict[int, int] = {}

    def commit_async(self, offsets: Any, callback: Any = None) -> None:
        # What the broker holds when the commit is made is what a crash would keep.
        self.producer.events.append("commit_offsets")
        self.committed.update({tp.partition: o.offset for tp, o in offsets.items()})

    def commit(self, offsets: Any, timeout_ms: int | None = None) -> None:
        self.commit_async(offsets)

    def group_metadata(self) -> str:
        return "group"


def source(offset: int) -> SimpleRecord:
    return SimpleRecord("in", 0, offset, b'{"asset_id": "a", "ts": 1}', b"a")


def outcome(n: int = 3) -> Outcome:
    out = Outcome()
    for i in range(n):
        out.records.append(
            OutRecord("vals", b"a", b'{"valuation": %d}' % i, "valuation", source=source(i))
        )
    out.offsets = {("in", 0): n}
    return out


def delivery(
    producer: Producer, *, bound_s: float = 300.0, transactional: bool = False, **kw: Any
) -> tuple[Delivery, Consumer, list[float]]:
    consumer = Consumer(producer)
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    outage = Outage(bound_s, "broker:9092", clock=lambda: clock[0])
    d = Delivery(
        producer,  # type: ignore[arg-type]
        consumer,  # type: ignore[arg-type]
        outage=outage,
        dlq_topic="dlq",
        dlq_max_bytes=64 * 1024,
        transactional=transactional,
        sleep=sleep,
        **kw,
    )
    return d, consumer, slept


def test_outputs_are_acknowledged_before_the_offsets_are_committed() -> None:
    producer = Producer()
    d, consumer, _ = delivery(producer)
    d.deliver(outcome())
    assert [t for t, _ in producer.acked] == ["vals"] * 3
    assert producer.events == ["flush", "commit_offsets"]
    assert consumer.committed == {0: 3} and d.positions == {("in", 0): 3}


@pytest.mark.parametrize("how", ["refused by send()", "failed future"])
def test_a_valuation_that_cannot_be_produced_goes_to_the_dlq(how: str) -> None:
    producer = Producer()
    rule = (
        lambda topic, value: topic == "vals" and value.endswith(b"1}"),
        MessageSizeTooLargeError("too large"),
    )
    (producer.refuse if how.startswith("refused") else producer.fail).append(rule)
    d, consumer, _ = delivery(producer)
    d.deliver(outcome())
    assert [t for t, _ in producer.acked] == ["vals", "vals", "dlq"]
    assert d.stats.send_failures == {"valuation": 1}
    assert consumer.committed == {0: 3}


def test_a_dlq_copy_the_broker_refuses_is_sent_minimal_and_then_it_is_a_config_error() -> None:
    producer = Producer()
    producer.fail.append(
        (
            lambda topic, value: topic == "dlq" and len(value) > 0,
            MessageSizeTooLargeError("dlq limit"),
        )
    )
    d, _, _ = delivery(producer)
    out = Outcome(records=[dead_letter(source(0), "dlq", "oversized", "big", max_bytes=1 << 20)])
    out.offsets = {("in", 0): 1}
    d.deliver(out)
    assert producer.acked == [("dlq", b"")] and d.stats.truncated == 1
    producer.refuse.append((lambda topic, value: topic == "dlq", MessageSizeTooLargeError("no")))
    with pytest.raises(DeliveryError, match="minimal dead-letter copy"):
        d.deliver(out)


def test_an_outage_is_retried_with_backoff_and_nothing_is_lost() -> None:
    producer = Producer()
    producer.down = 7
    d, consumer, slept = delivery(producer)
    d.deliver(outcome())
    assert sorted(v for _, v in producer.acked) == sorted(r.value for r in outcome().records)
    assert d.outage.count == 1 and not d.outage.active
    assert slept and slept == sorted(slept)  # backing off
    assert consumer.committed == {0: 3}


def test_an_outage_longer_than_the_bound_stops_without_committing() -> None:
    producer = Producer()
    producer.down = 10**9
    d, consumer, _ = delivery(producer, bound_s=30.0)
    with pytest.raises(OutageError, match=r"unreachable for \d+ s, longer than"):
        d.deliver(outcome())
    assert consumer.committed == {}


def test_a_flush_without_acks_marks_the_outage_once_the_broker_stops_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Readiness must not wait for the whole flush timeout to learn that the broker is gone."""
    import time

    import streamval.consumers.delivery as delivery_module

    monkeypatch.setattr(delivery_module, "FLUSH_TIMEOUT_S", 0.4)
    monkeypatch.setattr(delivery_module, "FLUSH_SLICE_S", 0.05)
    producer = Producer()
    slices: list[float] = []
    seen_active: list[bool] = []

    def flush(timeout: float | None = None) -> None:
        producer.events.append("flush")
        if len(slices) < 3:  # no acks for three slices, then the broker is back
            slices.append(timeout or 0.0)
            time.sleep(timeout or 0.0)
            raise KafkaTimeoutError("Timeout waiting for future")

    def reachable() -> bool:
        seen_active.append(d.outage.active)
        return len(slices) >= 3

    producer.flush = flush  # type: ignore[method-assign]
    d, consumer, _ = delivery(producer, reachable=reachable)
    d.deliver(outcome())
    assert slices == pytest.approx([0.05] * 3)
    assert seen_active[:2] == [False, True]  # marked at the first unanswered probe
    assert d.outage.count == 1 and not d.outage.active  # ended by the delivery that followed
    assert consumer.committed == {0: 3} and len(producer.acked) == 3


def test_exactly_once_redoes_the_transaction_with_the_failed_record_replaced() -> None:
    producer = Producer()
    producer.fail.append(
        (
            lambda topic, value: topic == "vals" and value.endswith(b"2}"),
            MessageSizeTooLargeError("x"),
        )
    )
    producer.down = 1  # and one transient failure
    d, consumer, _ = delivery(producer, transactional=True)
    d.deliver(outcome())
    assert producer.events.count("abort") >= 1
    assert producer.events[-2:] == ["offsets [(0, 3)]", "commit"]
    assert [t for t, _ in producer.acked] == ["vals", "vals", "dlq"]
    assert consumer.committed == {}  # offsets went with the transaction


def test_checkpoint_pairs_the_state_with_the_delivered_offsets(tmp_path: Path) -> None:
    producer = Producer()
    state = {"n": 0}
    writer = CheckpointWriter(CheckpointStore(tmp_path))
    d, _, _ = delivery(
        producer,
        writer=writer,
        checkpoint_interval_s=0.0,
        checkpoint_meta=lambda offsets: CheckpointMeta("g", "in", 1, offsets),
        state=lambda: dict(state),
    )
    d.clean = False  # an engine call whose outputs are not delivered yet
    assert not d.checkpoint(force=True)
    d.deliver(outcome())
    state["n"] = 3
    assert d.checkpoint(force=True)
    writer.close(30)
    loaded = CheckpointStore(tmp_path).load()
    assert loaded is not None and loaded.state == {"n": 3}
    assert loaded.meta.offsets == {("in", 0): 3}


def test_a_due_checkpoint_waits_a_batch_while_the_trainer_is_mid_step(tmp_path: Path) -> None:
    """With `state_if_idle`, a due checkpoint the engine cannot take without waiting (None)
    stays due and is taken by a later call; a forced one (shutdown) takes the full state."""
    producer = Producer()
    idle = [False]
    writer = CheckpointWriter(CheckpointStore(tmp_path))
    d, _, _ = delivery(
        producer,
        writer=writer,
        checkpoint_interval_s=0.0,
        checkpoint_meta=lambda offsets: CheckpointMeta("g", "in", 1, offsets),
        state=lambda: {"n": "full"},
        state_if_idle=lambda: {"n": "idle"} if idle[0] else None,
    )
    d.deliver(outcome())
    assert d.checkpoint_due() and not d.checkpoint()
    assert d.checkpoint_due()
    idle[0] = True
    assert d.checkpoint()
    writer.close(30)
    loaded = CheckpointStore(tmp_path).load()
    assert loaded is not None and loaded.state == {"n": "idle"}
    writer = CheckpointWriter(CheckpointStore(tmp_path))
    d.writer = writer
    idle[0] = False
    assert d.checkpoint(force=True)
    writer.close(30)
    loaded = CheckpointStore(tmp_path).load()
    assert loaded is not None and loaded.state == {"n": "full"}
