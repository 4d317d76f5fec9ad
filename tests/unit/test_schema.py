"""The asset-events contract: every rejection has a precise reason; arbitrary bytes never raise."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamval.stream.contract.schema import AssetEvent, Reason, Rejection, parse_event


def ok(obj: object) -> AssetEvent:
    parsed = parse_event(json.dumps(obj).encode())
    assert isinstance(parsed, AssetEvent), parsed
    return parsed


def rejected(raw: bytes, max_bytes: int = 65536) -> Rejection:
    parsed = parse_event(raw, max_bytes=max_bytes)
    assert isinstance(parsed, Rejection), parsed
    return parsed


def test_full_event_is_typed() -> None:
    event = ok(
        {
            "asset_id": "C-001",
            "ts": "2023-07-01T00:00:00+02:00",
            "value": 1250.5,
            "features": {"credit_score": 640, "repayment_ratio": 0.97},
            "attributes": {"tier": "low", "age": 41},
            "ignored": {"anything": [1, 2]},
        }
    )
    assert event == AssetEvent(
        asset_id="C-001",
        ts_ms=1688162400000,
        value=1250.5,
        features={"credit_score": 640.0, "repayment_ratio": 0.97},
        attributes={"tier": "low", "age": 41.0},
    )


def test_value_features_attributes_are_optional() -> None:
    event = ok({"asset_id": "a", "ts": 5})
    assert (event.value, event.features, event.attributes) == (None, {}, {})
    assert ok({"asset_id": "a", "ts": 5, "value": None}).value is None


def test_round_trip_through_bytes() -> None:
    event = AssetEvent("x", 1_600_000_000_000, 3.5, {"f": 1.0}, {"s": "Energy"})
    assert parse_event(event.to_bytes()) == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", Reason.INVALID_JSON),
        (b"\xff\xfe", Reason.INVALID_JSON),
        (b"", Reason.INVALID_JSON),
        (b"[1]", Reason.NOT_AN_OBJECT),
        (b"null", Reason.NOT_AN_OBJECT),
        (b'{"ts": 1}', Reason.MISSING_FIELD),
        (b'{"asset_id": "a"}', Reason.MISSING_FIELD),
        (b'{"asset_id": null, "ts": 1}', Reason.MISSING_FIELD),
        (b'{"asset_id": 1, "ts": 1}', Reason.WRONG_TYPE),
        (b'{"asset_id": "", "ts": 1}', Reason.WRONG_TYPE),
        (b'{"asset_id": "' + b"x" * 129 + b'", "ts": 1}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": true}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": 1.5}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": "March 3rd"}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": "2020-13-45"}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": 1, "value": "3"}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": 1, "value": true}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": 1, "features": [1]}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": 1, "features": {"f": "x"}}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": 1, "attributes": {"f": [1]}}', Reason.WRONG_TYPE),
        (b'{"asset_id": "a", "ts": 1, "value": NaN}', Reason.NON_FINITE),
        (b'{"asset_id": "a", "ts": 1, "value": Infinity}', Reason.NON_FINITE),
        (b'{"asset_id": "a", "ts": 1, "value": 1e400}', Reason.NON_FINITE),
        (b'{"asset_id": "a", "ts": 1, "features": {"f": -1e400}}', Reason.NON_FINITE),
        (b'{"asset_id": "a", "ts": 1, "value": ' + b"9" * 400 + b"}", Reason.NON_FINITE),
        (b"[" * 100_000, Reason.INVALID_JSON),
    ],
)
def test_rejection_reasons(raw: bytes, reason: Reason) -> None:
    rejection = rejected(raw, max_bytes=1 << 20)
    assert rejection.reason is reason
    assert rejection.detail


def test_oversized_is_checked_before_parsing() -> None:
    big = json.dumps({"asset_id": "a", "ts": 1, "attributes": {"n": "x" * 500}}).encode()
    rejection = rejected(big, max_bytes=100)
    assert rejection.reason is Reason.OVERSIZED
    assert str(len(big)) in rejection.detail


def test_tombstone_is_rejected() -> None:
    assert rejected(None).reason is Reason.INVALID_JSON  # type: ignore[arg-type]


def test_detail_names_the_field() -> None:
    assert "features.score" in rejected(b'{"asset_id":"a","ts":1,"features":{"score":"hi"}}').detail
    assert "'ts'" in rejected(b'{"asset_id":"a"}').detail


def test_timestamp_forms_agree() -> None:
    a = ok({"asset_id": "a", "ts": "2020-03-16T13:30:00Z"})
    b = ok({"asset_id": "a", "ts": "2020-03-16T09:30:00-04:00"})
    c = ok({"asset_id": "a", "ts": 1584365400000})
    d = ok({"asset_id": "a", "ts": "2020-03-16T13:30:00"})  # naive = UTC
    assert a.ts_ms == b.ts_ms == c.ts_ms == d.ts_ms


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert isinstance(parse_event(raw, max_bytes=256), AssetEvent | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "asset_id": json_values | st.text(min_size=1, max_size=10),
            "ts": json_values | st.integers(),
        },
        optional={"value": json_values, "features": json_values, "attributes": json_values},
    )
)
def test_arbitrary_json_objects_never_raise(obj: dict[str, object]) -> None:
    raw = json.dumps(obj, allow_nan=True).encode()
    parsed = parse_event(raw)
    assert isinstance(parsed, AssetEvent | Rejection)
    if isinstance(parsed, AssetEvent):  # anything accepted round-trips and is finite
        assert parse_event(parsed.to_bytes()) == parsed
