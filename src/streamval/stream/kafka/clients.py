"""Kafka clients built from settings: one place for client defaults; a fast reachability check.

Header keys that are not UTF-8: Kafka's protocol says a header key is a string, but brokers store
any bytes, and kafka-python decodes keys strictly, so one such record makes every `poll()` raise
`UnicodeDecodeError` on the same record for ever. `tolerate_header_keys()` (applied when this
module is imported) retries such a record with keys decoded by surrogate escape into a
`RawHeaderKey`, a `str` that encodes back to the original bytes: the record is consumed normally
and a dead-letter copy keeps its header keys byte for byte.
"""

from __future__ import annotations

import socket
from typing import Any, SupportsIndex

from kafka import KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

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
        # Sticky first: when a member leaves, the survivors keep their partitions and only the
        # leaver's move (range would reshuffle, and every moved partition costs its new owner
        # a takeover read). Range stays listed, so a group with older members still agrees.
        "partition_assignment_strategy": (StickyPartitionAssignor, RangePartitionAssignor),
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
        f"cannot reach the Kafka cluster at {servers}: no bootstrap server accepted a TCP "
        f"connection within {timeout_s:g} s. Check that the broker runs (`streamval kafka "
        "status` for the local one), the address (--bootstrap-servers, KAFKA_BOOTSTRAP_SERVERS, "
        "kafka.bootstrap_servers) and any firewall in between"
    )


def is_reachable(settings: Settings, timeout_s: float = 1.0) -> bool:
    """Whether some bootstrap server accepts a TCP connection (an outage probe)."""
    try:
        check_reachable(settings, timeout_s)
    except BrokerError:
        return False
    return True


class RawHeaderKey(str):
    """A record header key that was not valid UTF-8; `encode()` gives back its original bytes."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, encoding, "surrogateescape")


class _LenientSlice(bytearray):
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        try:
            return bytearray.decode(self, encoding, errors)
        except UnicodeDecodeError:
            return RawHeaderKey(bytearray.decode(self, encoding, "surrogateescape"))


class _LenientBuffer(bytearray):
    def __getitem__(self, item: SupportsIndex | slice) -> Any:
        got = bytearray.__getitem__(self, item)
        return _LenientSlice(got) if isinstance(item, slice) else got


def tolerate_header_keys() -> bool:
    """Patch kafka-python's record reader as described above; whether it is (now) patched."""
    try:
        from kafka.record.default_records import DefaultRecordBatch
    except ImportError:  # pragma: no cover - another kafka-python layout
        return False
    original = getattr(DefaultRecordBatch, "_read_msg", None)
    if original is None:  # pragma: no cover
        return False
    if getattr(original, "_streamval_lenient", False):
        return True

    def _read_msg(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except UnicodeDecodeError:
            # _read_msg moves its position only after a whole record was read: read it again.
            buffer = self._buffer
            self._buffer = _LenientBuffer(buffer)
            try:
                return original(self, *args, **kwargs)
            finally:
                self._buffer = buffer

    _read_msg._streamval_lenient = True  # type: ignore[attr-defined]
    DefaultRecordBatch._read_msg = _read_msg
    return True


tolerate_header_keys()


def close_producer(producer: KafkaProducer, timeout_s: float) -> None:
    """Close a producer even if it holds batches that can never be delivered (the broker gone,
    a fatal error): kafka-python's `close()` gives up when its flush times out, and then tries
    again, flush included, when the object is garbage-collected."""
    try:
        producer.close(timeout=timeout_s)
        return
    except Exception:  # a KafkaTimeoutError from the flush, usually
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()  # fails what is still pending
    try:
        producer.close(timeout=0)
    except Exception:
        producer._closed = True  # nothing more can be done; keep __del__ from trying again
