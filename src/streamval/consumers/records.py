"""The records the service reads and writes, as plain data (no Kafka client needed).

`InRecord` is the part of a consumed Kafka record the service uses (kafka-python's
`ConsumerRecord` has these attributes too); `OutRecord` is one record to produce, and says which
input record it stands for, so a failed send can be dead-lettered in its place.

Dead-letter copies (`dead_letter`): the original key, value and headers plus `error`,
`error.detail`, `source.topic`, `source.partition`, `source.offset` (DESIGN.md). A copy larger
than the limit has its value cut and `error.truncated` = the original value's size in bytes.
Header keys that are not valid UTF-8 are kept as their original bytes (see
`streamval.stream.kafka.clients`), header values are bytes anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Kind = Literal["valuation", "dead_letter", "metrics", "sample"]
Header = tuple[str, bytes]
# Headers the DLQ sets itself; same-named headers of the original record are replaced.
_OWN_HEADER_PREFIXES = ("error", "source.")
_DETAIL_LIMIT = 4096
# Room for the record's framing and our headers when sizing a truncated copy.
_OVERHEAD = 512


class InRecord(Protocol):
    """What the service reads from a consumed record."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class SimpleRecord:
    """An `InRecord` built by hand (tests, tools)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = -1
    headers: list[Header] = field(default_factory=list)


@dataclass(slots=True)  # not frozen: one per event on the hot path, and frozen inits are slow
class OutRecord:
    """One record to produce; `source` is the input record it stands for, if any."""

    topic: str
    key: bytes | None
    value: bytes
    kind: Kind
    headers: list[Header] = field(default_factory=list)
    source: InRecord | None = None
    reason: str | None = None  # for dead letters
    partition: int | None = None  # None: the producer's partitioner decides (by key)

    @property
    def size(self) -> int:
        """Bytes of key, value and headers (what counts against the size limits)."""
        return (
            len(self.key or b"")
            + len(self.value)
            + sum(len(_key_bytes(k)) + len(v) for k, v in self.headers)
        )


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def dead_letter(
    record: InRecord, topic: str, reason: str, detail: str, *, max_bytes: int
) -> OutRecord:
    """The DLQ copy of `record`: original bytes and headers plus the five that say why.

    A copy over `max_bytes` keeps the head of its value and says so in `error.truncated`.
    """
    original: list[Header] = []
    for k, v in record.headers or []:
        if not isinstance(k, str) or k.startswith(_OWN_HEADER_PREFIXES):
            continue
        original.append((k, b"" if v is None else bytes(v)))
    headers = [
        *original,
        ("error", reason.encode()),
        ("error.detail", detail.encode("utf-8", errors="replace")[:_DETAIL_LIMIT]),
        ("source.topic", record.topic.encode("utf-8", "replace")),
        ("source.partition", str(record.partition).encode()),
        ("source.offset", str(record.offset).encode()),
    ]
    # A record with neither key nor value cannot be produced as is; keep it as an empty value.
    value = record.value if record.value is not None else b""
    out = OutRecord(topic, record.key, value, "dead_letter", headers, record, reason)
    if out.size + _OVERHEAD <= max_bytes:
        return out
    room = max(0, max_bytes - _OVERHEAD - (out.size - len(value)))
    if room == 0:
        # Even the headers are too large: keep only ours.
        headers = headers[len(original) :]
        room = max(0, max_bytes - _OVERHEAD - len(record.key or b"") - 64 * len(headers))
    headers.append(("error.truncated", str(len(value)).encode()))
    return OutRecord(topic, record.key, value[:room], "dead_letter", headers, record, reason)


def minimal_dead_letter(record: InRecord, topic: str, reason: str, detail: str) -> OutRecord:
    """A DLQ copy without the original value or headers: the last resort when a full or
    truncated copy cannot be produced (the broker's own limits are lower than ours)."""
    return dead_letter(
        SimpleRecord(record.topic, record.partition, record.offset, b"", record.key),
        topic,
        reason,
        detail,
        max_bytes=1024 + len(record.key or b""),
    )
