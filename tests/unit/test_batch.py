"""The pure batch logic: every failure kind of a record ends in the DLQ with its reason, and
every valid event in a valuation; offsets cover the whole batch."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from typing import Any

import orjson
import pytest
from tests.support.engines import DataEngine

from streamval.consumers.batch import (
    BatchProcessor,
    EngineFailureError,
    Parsed,
    parse_record,
)
from streamval.consumers.records import SimpleRecord, dead_letter
from streamval.stream.contract.outputs import BatchResult
from streamval.stream.contract.schema import Limits, Reason
from streamval.stream.kafka.clients import RawHeaderKey

T0 = 1_600_000_000_000
LIMITS = Limits()


def record(value: bytes | None, offset: int, partition: int = 0, **kw: Any) -> SimpleRecord:
    return SimpleRecord("in", partition, offset, value, kw.pop("key", b"k"), T0, **kw)


def event(asset: str, ts: int, value: float | None = 1.0) -> bytes:
    body: dict[str, Any] = {"asset_id": asset, "ts": ts}
    if value is not None:
        body["value"] = value
    return json.dumps(body).encode()


def parse(records: list[SimpleRecord], max_bytes: int = 65536) -> list[Parsed]:
    return [parse_record(r, max_bytes=max_bytes, limits=LIMITS) for r in records]


def processor(engine: Any = None, **kw: Any) -> BatchProcessor:
    return BatchProcessor(
        engine or DataEngine(),
        valuations_topic="vals",
        dlq_topic="dlq",
        metrics_topic="metrics",
        dlq_max_bytes=kw.pop("dlq_max_bytes", 256 * 1024),
        **kw,
    )


POISON: dict[str, tuple[bytes | None, str]] = {
    "tombstone": (None, "invalid_json"),
    "not json": (b"{oops", "invalid_json"),
    "not utf-8": (b"\xff\xfe{}", "invalid_json"),
    "lone surrogate": (b'{"asset_id": "\\ud800", "ts": 1600000000000}', "invalid_json"),
    "surrogate in a feature name": (
        b'{"asset_id": "a", "ts": 1600000000000, "features": {"\\udc00": 1}}',
        "invalid_json",
    ),
    "array": (b"[1, 2]", "not_an_object"),
    "no ts": (b'{"asset_id": "a"}', "missing_field"),
    "string value": (b'{"asset_id": "a", "ts": 1600000000000, "value": "1"}', "wrong_type"),
    "NaN": (b'{"asset_id": "a", "ts": 1600000000000, "value": NaN}', "non_finite"),
    "1e999": (b'{"asset_id": "a", "ts": 1600000000000, "value": 1e999}', "non_finite"),
    "ts 10**400": (b'{"asset_id": "a", "ts": 1' + b"0" * 400 + b"}", "out_of_range"),
    "ts -10**400": (b'{"asset_id": "a", "ts": -1' + b"0" * 400 + b"}", "out_of_range"),
    "year 2100": (b'{"asset_id": "a", "ts": "2100-01-01T00:00:00Z"}', "out_of_range"),
    "year 1800": (b'{"asset_id": "a", "ts": "1800-01-01T00:00:00Z"}', "out_of_range"),
    "value 1e308": (b'{"asset_id": "a", "ts": 1600000000000, "value": 1e308}', "out_of_range"),
    "value -1e308": (b'{"asset_id": "a", "ts": 1600000000000, "value": -1e308}', "out_of_range"),
    "feature 1e300": (
        b'{"asset_id": "a", "ts": 1600000000000, "features": {"x": 1e300}}',
        "out_of_range",
    ),
    "oversized": (b'{"asset_id": "a", "ts": 1, "pad": "' + b"x" * 70_000 + b'"}', "oversized"),
}


@pytest.mark.parametrize("kind", list(POISON))
def test_every_poison_kind_is_dead_lettered_and_the_valid_events_around_it_are_valued(
    kind: str,
) -> None:
    raw, reason = POISON[kind]
    records = [
        record(event("a", T0, 10.0), 0),
        record(raw, 1),
        record(event("a", T0 + 1, 11.0), 2),
    ]
    out = processor().process(parse(records))
    assert out.dead_letters == Counter({reason: 1})
    dead = [r for r in out.records if r.kind == "dead_letter"]
    assert len(dead) == 1 and dict(dead[0].headers)["error"] == reason.encode()
    assert dict(dead[0].headers)["source.offset"] == b"1"
    valued = [orjson.loads(r.value) for r in out.records if r.kind == "valuation"]
    assert [(v["ts"], v["valuation"]) for v in valued] == [(T0, 0.0), (T0 + 1, 10.0)]
    assert out.offsets == {("in", 0): 3}


def test_ts_bound_counts_from_the_broker_timestamp() -> None:
    ahead = record(event("a", T0 + 86_400_000 + 1), 0)  # a day and a ms after the record's time
    within = record(event("a", T0 + 86_400_000), 1)
    parsed = parse([ahead, within])
    assert parsed[0].rejection is not None
    assert parsed[0].rejection.reason is Reason.OUT_OF_RANGE
    assert parsed[1].event is not None
    # No broker timestamp: the wall clock is the reference.
    no_ts = SimpleRecord("in", 0, 2, event("a", T0), timestamp=-1)
    assert parse_record(no_ts, max_bytes=1024, limits=LIMITS).event is not None


def test_late_events_go_to_the_dlq_duplicates_are_dropped() -> None:
    records = [
        record(event("a", T0 + 10), 0),
        record(event("a", T0 + 5), 1),  # late
        record(event("a", T0 + 10), 2),  # duplicate
    ]
    out = processor().process(parse(records))
    assert out.dead_letters == Counter({"late": 1}) and out.duplicates == 1
    assert sum(r.kind == "valuation" for r in out.records) == 1


def test_events_the_engine_could_not_process_are_dead_lettered_as_internal() -> None:
    engine = DataEngine(fail_assets=["boom"])
    records = [record(event("a", T0), 0), record(event("boom", T0), 1), record(event("b", T0), 2)]
    out = processor(engine).process(parse(records))
    dead = [r for r in out.records if r.kind == "dead_letter"]
    assert out.dead_letters == Counter({"internal": 1})
    assert dict(dead[0].headers)["error.detail"].startswith(b"OverflowError")
    assert [orjson.loads(r.value)["asset_id"] for r in out.records if r.kind == "valuation"] == [
        "a",
        "b",
    ]


def test_an_engine_that_raises_stops_the_batch() -> None:
    engine = DataEngine(crash_assets=["x"])
    with pytest.raises(EngineFailureError, match="commit phase failed"):
        processor(engine).process(parse([record(event("x", T0), 0)]))


class NaNEngine(DataEngine):
    def process(self, events: Any) -> BatchResult:
        result = super().process(events)
        result.valuations = [
            dataclasses.replace(v, valuation=math.nan) if v.asset_id == "nan" else v
            for v in result.valuations
        ]
        return result


def test_a_non_finite_valuation_is_never_published() -> None:
    records = [record(event("nan", T0), 0), record(event("ok", T0), 1)]
    out = processor(NaNEngine()).process(parse(records))
    assert out.dead_letters == Counter({"internal": 1})
    assert [orjson.loads(r.value)["asset_id"] for r in out.records if r.kind == "valuation"] == [
        "ok"
    ]


def test_records_done_before_a_crash_are_relearned_but_not_republished() -> None:
    engine = DataEngine()
    records = [record(event("a", T0 + i, float(i)), i) for i in range(4)] + [record(b"{", 4)]
    out = processor(engine, already_done=lambda r: r.offset < 5).process(parse(records))
    assert out.records == [] and engine.events == 4 and out.offsets == {("in", 0): 5}


def test_offsets_are_per_partition_and_cover_rejected_records() -> None:
    records = [record(event("a", T0), 7, partition=1), record(b"[]", 3, partition=2)]
    out = processor().process(parse(records))
    assert out.offsets == {("in", 1): 8, ("in", 2): 4}
    assert out.consumed == Counter({1: 1, 2: 1})


def test_dlq_copies_keep_original_headers_even_non_utf8_keys() -> None:
    raw_key = RawHeaderKey(b"tr\xffce".decode("utf-8", "surrogateescape"))
    rec = record(
        b"{",
        0,
        headers=[("trace", b"1"), (raw_key, b"v"), ("error", b"spoofed"), ("n", None)],
    )
    copy = dead_letter(rec, "dlq", "invalid_json", "not valid JSON", max_bytes=1 << 20)
    headers = copy.headers
    assert ("trace", b"1") in headers and ("n", b"") in headers
    assert [k.encode() for k, _ in headers if k == raw_key] == [b"tr\xffce"]
    assert [v for k, v in headers if k == "error"] == [b"invalid_json"]


def test_a_dlq_copy_too_large_is_truncated_and_says_so() -> None:
    big = record(b"x" * 1_100_000, 9, key=b"asset")
    copy = dead_letter(big, "dlq", "oversized", "too big", max_bytes=256 * 1024)
    headers = dict(copy.headers)
    assert copy.size <= 256 * 1024
    assert headers["error.truncated"] == b"1100000" and headers["error"] == b"oversized"
    assert copy.value == b"x" * len(copy.value) and len(copy.value) > 200_000
    # Through the batch: the oversized record becomes a truncated dead letter.
    out = processor(dlq_max_bytes=64 * 1024).process(parse([big]))
    (dead,) = out.records
    assert dead.size <= 64 * 1024 and dict(dead.headers)["error.truncated"] == b"1100000"
