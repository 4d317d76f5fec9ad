"""The service's batch logic, pure: records in; valuations, dead letters and offsets out.

No Kafka client here, so every failure kind is unit-tested with plain records:

    parse        `parse_record`: a record -> `Parsed` (an event, or a rejection with its reason:
                 the contract's kinds, `out_of_range`); never raises
    process      `BatchProcessor.process(parsed)`: the engine values the batch's events; late
                 events and the events the engine reports in `BatchResult.failed` (reason
                 `internal`) are dead-lettered; duplicates are dropped; a valuation that cannot
                 be encoded or is not finite is dead-lettered as `internal`
    outcome      `Outcome`: the records to produce in order, the next offset per partition, and
                 the counts the metrics need

Records re-read after a restore whose outputs were already published before the crash
(`already_done`, from `recovery`) are given to the engine again (it re-learns them) but produce
nothing. An exception of `Engine.process` itself is not about one event (contracts.md section 2):
it propagates as `EngineFailureError`, and the service stops without committing or checkpointing.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streamval.consumers.records import InRecord, OutRecord, dead_letter
from streamval.errors import StreamvalError
from streamval.stream.contract.outputs import BatchResult, ClusterSnapshot, DriftAlarm
from streamval.stream.contract.schema import (
    AssetEvent,
    Limits,
    Reason,
    Rejection,
    parse_event,
)

INTERNAL = "internal"
SEND_FAILED = "send_failed"


class EngineFailureError(StreamvalError):
    """`Engine.process` raised for a whole batch: a bug, not a bad event."""


class ValuationEngine(Protocol):
    """What the service needs of an engine (`streamval.engine.Engine` is one)."""

    def process(self, events: Sequence[AssetEvent]) -> BatchResult: ...

    def snapshot(self) -> list[ClusterSnapshot]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(slots=True)  # not frozen: one per record on the hot path
class Parsed:
    """A consumed record and what it holds: an event, or why it is not one."""

    record: InRecord
    event: AssetEvent | None
    rejection: Rejection | None
    received: float  # time.monotonic() at receipt


def parse_record(
    record: InRecord, *, max_bytes: int, limits: Limits, now_ms: int | None = None
) -> Parsed:
    """Parse one record; its broker timestamp (or `now_ms`) bounds the event time."""
    ref = record.timestamp if isinstance(record.timestamp, int) and record.timestamp >= 0 else None
    if ref is None:
        ref = now_ms if now_ms is not None else int(time.time() * 1000)
    parsed = parse_event(record.value, max_bytes=max_bytes, limits=limits, ref_ts_ms=ref)
    received = time.monotonic()
    if isinstance(parsed, Rejection):
        return Parsed(record, None, parsed, received)
    return Parsed(record, parsed, None, received)


@dataclass
class Outcome:
    """What one batch produced."""

    records: list[OutRecord] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to read
    consumed: Counter[int] = field(default_factory=Counter)  # partition -> records
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason -> records
    published: Counter[int] = field(default_factory=Counter)  # cluster -> valuations
    duplicates: int = 0
    drift: list[DriftAlarm] = field(default_factory=list)
    received: list[float] = field(default_factory=list)  # receipt times of the valued events
    event_times_ms: list[int] = field(default_factory=list)
    events: int = 0


@dataclass
class BatchProcessor:
    """Turns parsed records into an `Outcome` with the engine; see the module docstring."""

    engine: ValuationEngine
    valuations_topic: str
    dlq_topic: str
    metrics_topic: str
    dlq_max_bytes: int
    already_done: Callable[[InRecord], bool] = lambda record: False

    def process(self, batch: Sequence[Parsed]) -> Outcome:
        out = Outcome()
        events: list[Parsed] = []
        offsets = out.offsets
        consumed: dict[int, int] = {}
        for item in batch:
            r = item.record
            consumed[r.partition] = consumed.get(r.partition, 0) + 1
            key = (r.topic, r.partition)
            if r.offset >= offsets.get(key, 0):
                offsets[key] = r.offset + 1
            if item.rejection is not None:
                self._dead_letter(out, r, item.rejection.reason.value, item.rejection.detail)
            else:
                events.append(item)
        out.consumed.update(consumed)
        if not events:
            return out
        try:
            result = self.engine.process([p.event for p in events if p.event is not None])
        except Exception as exc:
            raise EngineFailureError(f"Engine.process failed: {type(exc).__name__}: {exc}") from exc
        out.events = len(events)
        failed = dict(getattr(result, "failed", None) or [])
        late = set(result.late)
        refused = late | set(result.duplicates) | set(failed)
        out.duplicates = len(result.duplicates)
        for index in sorted(late | set(failed)):
            item = events[index]
            assert item.event is not None
            if index in failed:
                self._dead_letter(out, item.record, INTERNAL, str(failed[index]))
            else:
                self._dead_letter(
                    out,
                    item.record,
                    Reason.LATE.value,
                    f"event time {item.event.ts_ms} is older than the last event seen for asset "
                    f"{item.event.asset_id!r}",
                )
        accepted = [item for i, item in enumerate(events) if i not in refused]
        if len(accepted) != len(result.valuations):
            raise EngineFailureError(
                f"Engine.process returned {len(result.valuations)} valuations for "
                f"{len(accepted)} accepted events"
            )
        for item, valuation in zip(accepted, result.valuations, strict=True):
            if self.already_done(item.record):
                continue
            try:
                if not math.isfinite(valuation.valuation):
                    raise ValueError(f"valuation {valuation.valuation!r} is not finite")
                value = orjson.dumps(valuation.to_json())
            except Exception as exc:
                self._dead_letter(out, item.record, INTERNAL, f"{type(exc).__name__}: {exc}")
                continue
            out.records.append(
                OutRecord(
                    self.valuations_topic,
                    valuation.asset_id.encode("utf-8", "surrogateescape"),
                    value,
                    "valuation",
                    source=item.record,
                )
            )
            out.published[valuation.cluster] += 1
            out.received.append(item.received)
            out.event_times_ms.append(valuation.ts_ms)
        for alarm in result.drift:
            out.drift.append(alarm)
            out.records.append(
                OutRecord(
                    self.metrics_topic,
                    str(alarm.cluster).encode(),
                    orjson.dumps(alarm.to_json()),
                    "metrics",
                )
            )
        return out

    def _dead_letter(self, out: Outcome, record: InRecord, reason: str, detail: str) -> None:
        if self.already_done(record):
            return  # dead-lettered before the crash
        out.dead_letters[reason] += 1
        out.records.append(
            dead_letter(record, self.dlq_topic, reason, detail, max_bytes=self.dlq_max_bytes)
        )


def snapshot_records(
    snapshots: Sequence[ClusterSnapshot],
    topic: str,
    instance: str | None = None,
    *,
    by_cluster: bool = False,
) -> list[OutRecord]:
    """Per-cluster snapshots as records for the metrics topic: keyed by cluster, or with an
    `instance` by "<instance>/<cluster>" (several processes' snapshots stay apart), which the
    value then carries too; `by_cluster`: keyed by cluster even so (the cluster's owner, a
    learner, is the one process that reports it)."""
    out = []
    for s in snapshots:
        body = s.to_json()
        key = str(s.cluster)
        if instance is not None:
            body["instance"] = instance
            if not by_cluster:
                key = f"{instance}/{key}"
        out.append(OutRecord(topic, key.encode(), orjson.dumps(body), "metrics"))
    return out
