"""The `asset-events` contract: parse and validate raw Kafka message values.

`parse_event` never raises on bad bytes: it returns either an `AssetEvent` or a `Rejection` whose
`reason` is one of `Reason` and whose `detail` says exactly what was wrong, so the caller can
dead-letter the original message and continue.

Parsing uses orjson (the hot path: about 3x faster than the standard library); a message orjson
refuses is parsed again by the standard library only to name the reason precisely (a `NaN`
literal or a number that overflows a double is `non_finite`, a lone surrogate `invalid_json`).

Range checks (`Limits`): an event time before `min_ts_ms` (default 1900-01-01) or more than
`max_ahead_ms` (default one day) after the record's broker timestamp is `out_of_range`, and so is
a value or feature beyond `max_abs_value` / `max_abs_feature` (default 1e15): one event dated in
the year 2100 would otherwise make every later event of its asset `late`, and values near 1e308
overflow any arithmetic on them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

# The contract's field names, also the column names of long tables.
ASSET_ID = "asset_id"
TS = "ts"
VALUE = "value"
MAX_ASSET_ID_LEN = 128
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
# 1900-01-01T00:00:00Z: older "event times" are unit mistakes (seconds for milliseconds) or junk.
DEFAULT_MIN_TS_MS = -2_208_988_800_000
DAY_MS = 86_400_000
# 9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write: a bound even without a reference.
MAX_TS_MS = 253_402_300_799_999
# Far above any price, appraisal or credit amount, far below where float64 arithmetic on values
# (squares, sums of a window) could overflow.
DEFAULT_MAX_ABS = 1e15

Attribute = float | str


class Reason(StrEnum):
    """Why a message was rejected; the value is what goes into the DLQ `error` header."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OVERSIZED = "oversized"
    OUT_OF_RANGE = "out_of_range"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class Limits:
    """Range checks of valid events; see the module docstring.

    `ref_ts_ms` passed to `parse_event` (the record's broker timestamp, else the wall clock) is
    what `max_ahead_ms` counts from; without it there is no upper bound on event time.
    """

    min_ts_ms: int = DEFAULT_MIN_TS_MS
    max_ahead_ms: int = DAY_MS
    max_abs_value: float = DEFAULT_MAX_ABS
    max_abs_feature: float = DEFAULT_MAX_ABS


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class AssetEvent:
    """One valid observation of an asset at event time `ts_ms` (epoch milliseconds, UTC)."""

    asset_id: str
    ts_ms: int
    value: float | None = None
    features: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, Attribute] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as a contract-conforming JSON object (ts as epoch ms)."""
        out: dict[str, Any] = {"asset_id": self.asset_id, "ts": self.ts_ms}
        if self.value is not None:
            out["value"] = self.value
        if self.features:
            out["features"] = dict(self.features)
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out

    def to_bytes(self) -> bytes:
        """Serialised message value, as producers should write it."""
        return orjson.dumps(self.to_json())


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that is not a valid event, and why."""

    reason: Reason
    detail: str


class _InvalidError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reject_constant(name: str) -> float:
    raise _InvalidError(Reason.NON_FINITE, f"JSON constant {name} is not a finite number")


def _number(value: Any, where: str) -> float:
    # bool is an int subclass in Python but not a number in the contract.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _InvalidError(Reason.WRONG_TYPE, f"{where} must be a number, got {_type_name(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer literal too large for a double
        raise _InvalidError(Reason.NON_FINITE, f"{where} does not fit a 64-bit float") from None
    if not math.isfinite(number):
        raise _InvalidError(Reason.NON_FINITE, f"{where} must be finite, got {value!r}")
    return number


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def parse_timestamp(ts: Any, where: str = "ts") -> int:
    """Epoch milliseconds from an RFC 3339 string or an integer epoch-ms number.

    >>> parse_timestamp("2020-03-16T00:00:00Z")
    1584316800000
    >>> parse_timestamp(1584316800000)
    1584316800000
    """
    if isinstance(ts, bool):
        raise _InvalidError(Reason.WRONG_TYPE, f"{where} must be an RFC 3339 string or epoch ms")
    if isinstance(ts, int):
        return ts
    if isinstance(ts, float):
        if not math.isfinite(ts):
            raise _InvalidError(Reason.NON_FINITE, f"{where} must be finite")
        if not ts.is_integer():
            raise _InvalidError(
                Reason.WRONG_TYPE, f"{where} epoch ms must be an integer, got {ts!r}"
            )
        return int(ts)
    if isinstance(ts, str):
        text = ts.strip()
        if len(text) < 10 or text[4] != "-":
            raise _InvalidError(
                Reason.WRONG_TYPE, f"{where} is not an RFC 3339 timestamp: {ts[:40]!r}"
            )
        try:
            # RFC 3339 also allows a lowercase 'z', which fromisoformat rejects.
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise _InvalidError(
                Reason.WRONG_TYPE, f"{where} is not an RFC 3339 timestamp: {ts[:40]!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return round(parsed.timestamp() * 1000)
    raise _InvalidError(
        Reason.WRONG_TYPE, f"{where} must be an RFC 3339 string or epoch ms, got {_type_name(ts)}"
    )


def _numeric_map(raw: Any, where: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise _InvalidError(Reason.WRONG_TYPE, f"{where} must be an object, got {_type_name(raw)}")
    return {_check_text(str(k), where): _number(v, f"{where}.{k}") for k, v in raw.items()}


def _bounded(x: float, limit: float, where: str) -> float:
    if abs(x) > limit:
        raise _InvalidError(Reason.OUT_OF_RANGE, f"{where} = {x!r} is beyond +-{limit:g}")
    return x


def _check_ts(ts_ms: int, limits: Limits, ref_ts_ms: int | None) -> int:
    if ts_ms < limits.min_ts_ms:
        raise _InvalidError(
            Reason.OUT_OF_RANGE,
            f"ts {_ms_text(ts_ms)} is before {_ms_text(limits.min_ts_ms)}",
        )
    if ts_ms > MAX_TS_MS:
        raise _InvalidError(Reason.OUT_OF_RANGE, f"ts {_ms_text(ts_ms)} is after the year 9999")
    if ref_ts_ms is not None and ts_ms > ref_ts_ms + limits.max_ahead_ms:
        raise _InvalidError(
            Reason.OUT_OF_RANGE,
            f"ts {_ms_text(ts_ms)} is more than {limits.max_ahead_ms / 3_600_000:g} h after "
            f"the record's timestamp {_ms_text(ref_ts_ms)}",
        )
    return ts_ms


def _ms_text(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        digits = str(ms)
        return f"{digits[:20]}... ({len(digits)} digits)" if len(digits) > 24 else digits


def _check_text(text: str, where: str) -> str:
    """Strings must be valid Unicode: a lone surrogate cannot be encoded (nor published)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _InvalidError(
            Reason.INVALID_JSON, f"{where} holds a lone surrogate (not valid Unicode)"
        ) from None
    return text


def _attribute_map(raw: Any) -> dict[str, Attribute]:
    if not isinstance(raw, dict):
        raise _InvalidError(
            Reason.WRONG_TYPE, f"attributes must be an object, got {_type_name(raw)}"
        )
    out: dict[str, Attribute] = {}
    for k, v in raw.items():
        key = _check_text(str(k), "attributes")
        out[key] = (
            _check_text(v, f"attributes.{key}")
            if isinstance(v, str)
            else _number(v, f"attributes.{key}")
        )
    return out


def _validate(
    obj: Any, limits: Limits = DEFAULT_LIMITS, ref_ts_ms: int | None = None
) -> AssetEvent:
    if not isinstance(obj, dict):
        raise _InvalidError(
            Reason.NOT_AN_OBJECT, f"message must be a JSON object, got {_type_name(obj)}"
        )
    for name in ("asset_id", "ts"):
        if name not in obj or obj[name] is None:
            raise _InvalidError(Reason.MISSING_FIELD, f"required field {name!r} is missing")
    asset_id = obj["asset_id"]
    if not isinstance(asset_id, str):
        raise _InvalidError(
            Reason.WRONG_TYPE, f"asset_id must be a string, got {_type_name(asset_id)}"
        )
    _check_text(asset_id, "asset_id")
    if not 1 <= len(asset_id) <= MAX_ASSET_ID_LEN:
        raise _InvalidError(
            Reason.WRONG_TYPE,
            f"asset_id must be 1..{MAX_ASSET_ID_LEN} characters, got {len(asset_id)}",
        )
    ts_ms = _check_ts(parse_timestamp(obj["ts"]), limits, ref_ts_ms)
    value = obj.get("value")
    features = _numeric_map(obj["features"], "features") if obj.get("features") is not None else {}
    for name, x in features.items():
        _bounded(x, limits.max_abs_feature, f"features.{name}")
    return AssetEvent(
        asset_id=asset_id,
        ts_ms=ts_ms,
        value=None
        if value is None
        else _bounded(_number(value, "value"), limits.max_abs_value, "value"),
        features=features,
        attributes=_attribute_map(obj["attributes"]) if obj.get("attributes") is not None else {},
    )


def _fallback(raw: bytes, fast_error: str, limits: Limits, ref_ts_ms: int | None) -> Rejection:
    """Why orjson refused `raw`, named as precisely as the standard library can."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(Reason.INVALID_JSON, f"not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
        # Overflowing literals (1e999) parse as inf here; the ts may be a huge integer.
        _validate(obj, limits, ref_ts_ms)
    except _InvalidError as exc:
        return Rejection(exc.reason, exc.detail)
    except (ValueError, RecursionError) as exc:
        return Rejection(Reason.INVALID_JSON, f"not valid JSON: {str(exc)[:200]}")
    return Rejection(Reason.INVALID_JSON, f"not valid JSON: {fast_error[:200]}")


def parse_event(
    raw: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    limits: Limits = DEFAULT_LIMITS,
    ref_ts_ms: int | None = None,
) -> AssetEvent | Rejection:
    """Parse one message value. Never raises: bad input comes back as a `Rejection`.

    `ref_ts_ms` (the record's broker timestamp) bounds the event time from above; see `Limits`.

    >>> parse_event(b'{"asset_id": "AAPL", "ts": "2020-03-16", "value": 242.2}')
    AssetEvent(asset_id='AAPL', ts_ms=1584316800000, value=242.2, features={}, attributes={})
    >>> parse_event(b'{"asset_id": "AAPL"}').reason
    <Reason.MISSING_FIELD: 'missing_field'>
    >>> parse_event(b'{"asset_id": "A", "ts": "2100-01-01"}', ref_ts_ms=1584316800000).reason
    <Reason.OUT_OF_RANGE: 'out_of_range'>
    """
    try:
        if raw is None:
            return Rejection(Reason.INVALID_JSON, "message has no value (tombstone)")
        if len(raw) > max_bytes:
            return Rejection(Reason.OVERSIZED, f"message is {len(raw)} bytes, limit {max_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _fallback(raw, str(exc), limits, ref_ts_ms)
        return _validate(obj, limits, ref_ts_ms)
    except _InvalidError as exc:
        return Rejection(exc.reason, exc.detail)
    except Exception as exc:  # never raise on input: anything unforeseen is still a rejection
        return Rejection(Reason.INVALID_JSON, f"unparseable: {type(exc).__name__}: {exc}"[:300])
