"""kcat (librdkafka, not our client) produces valid, malformed and compressed events; our source
reads them through the real broker: every valid event comes out, every bad one is dead-lettered
with the right reason and headers, and nothing is lost or invented."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter

import pytest

from streamval.config import Settings
from streamval.consumers.batch import parse_record
from streamval.consumers.records import dead_letter
from streamval.stream.contract.schema import Limits
from streamval.stream.kafka.broker import LocalBroker
from streamval.stream.kafka.clients import make_consumer, make_producer
from streamval.stream.kafka.jars import find_java, resolve_classpath
from streamval.stream.kafka.reader import read_topic
from streamval.stream.kafka.topics import ensure_topics

pytestmark = pytest.mark.kafka

MAX_BYTES = 1024
CODECS = ["gzip", "snappy", "lz4", "zstd"]


def kcat_produce(
    bootstrap: str, topic: str, lines: list[bytes], *, codec: str | None = None
) -> None:
    """Produce `key|value` lines with kcat (librdkafka), optionally compressed."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is required (apt-get install kcat); the test setup installs it"
    cmd = [kcat, "-b", bootstrap, "-t", topic, "-P", "-K", "|", "-X", "linger.ms=50"]
    if codec:
        cmd += ["-z", codec]
    subprocess.run(cmd, input=b"\n".join(lines) + b"\n", check=True, timeout=60)


def event_line(asset: str, ts: int, value: float) -> bytes:
    body = {
        "asset_id": asset,
        "ts": ts,
        "value": value,
        "features": {"volume": 1000 + ts % 7},
        "attributes": {"sector": "Energy", "tier": 2},
    }
    return f"{asset}|{json.dumps(body)}".encode()


BAD: dict[str, list[bytes]] = {
    "invalid_json": [b"a1|{not json", b"a1|\xff\xfe\x00garbage", b'a1|{"asset_id": "a1", "ts": 1,'],
    "not_an_object": [b"a1|[1, 2, 3]", b'a1|"just a string"', b"a1|42"],
    "missing_field": [b'a1|{"ts": 1, "value": 2}', b'a1|{"asset_id": "a1", "value": 2}'],
    "wrong_type": [
        b'a1|{"asset_id": 7, "ts": 1}',
        b'a1|{"asset_id": "a1", "ts": "yesterday"}',
        b'a1|{"asset_id": "a1", "ts": 1, "value": "12.5"}',
        b'a1|{"asset_id": "a1", "ts": 1, "features": {"x": true}}',
        b'a1|{"asset_id": "a1", "ts": 1, "attributes": [1]}',
    ],
    "non_finite": [
        b'a1|{"asset_id": "a1", "ts": 1, "value": NaN}',
        b'a1|{"asset_id": "a1", "ts": 1, "value": 1e999}',
        b'a1|{"asset_id": "a1", "ts": 1, "features": {"x": -Infinity}}',
    ],
    "oversized": [
        b"a1|"
        + json.dumps({"asset_id": "a1", "ts": 1, "attributes": {"note": "x" * 2000}}).encode()
    ],
}


def drain(
    consumer: object, producer: object, dlq_topic: str, expected: int, timeout_s: float = 60.0
) -> tuple[list, Counter]:
    """Parse what the consumer reads as the service does; dead-letter the rejected records."""
    events, reasons = [], Counter()
    deadline = time.monotonic() + timeout_s
    while len(events) + sum(reasons.values()) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=100).values():
            for record in records:
                parsed = parse_record(record, max_bytes=MAX_BYTES, limits=Limits())
                if parsed.rejection is None:
                    events.append(parsed)
                    continue
                reason = parsed.rejection.reason.value
                reasons[reason] += 1
                out = dead_letter(
                    record, dlq_topic, reason, parsed.rejection.detail, max_bytes=1 << 20
                )
                producer.send(out.topic, key=out.key, value=out.value, headers=out.headers)
    return events, reasons


def read_all(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    # One more poll of a second proves nothing beyond `expected` arrived.
    return read_topic(
        settings,
        topic,
        expected=expected,
        timeout_s=timeout_s,
        settle_s=1.0,
        isolation_level="read_uncommitted",
    )


def test_kcat_events_valid_malformed_and_compressed(
    kafka_settings: Settings, local_broker: LocalBroker | None
) -> None:
    settings = kafka_settings
    t = settings.topics
    ensure_topics(settings, [t.input, t.dlq])
    bootstrap = settings.kafka.bootstrap_servers
    assert bootstrap

    valid_by_codec: dict[str, list[bytes]] = {}
    ts = 1_600_000_000_000
    for codec in CODECS:
        # 200 similar events per batch: compressible, so librdkafka really compresses them.
        valid_by_codec[codec] = [
            event_line(f"{codec}-{i % 20}", ts + i * 60_000, 100.0 + i) for i in range(200)
        ]
        kcat_produce(bootstrap, t.input, valid_by_codec[codec], codec=codec)
    plain = [
        b"plain-%d|" % i
        + json.dumps(
            {"asset_id": f"plain-{i}", "ts": f"2020-03-{16 + i}T09:30:00Z", "value": 1.5}
        ).encode()
        for i in range(5)
    ]
    bad_lines = [line for lines in BAD.values() for line in lines]
    kcat_produce(bootstrap, t.input, plain + bad_lines)
    n_valid = sum(len(v) for v in valid_by_codec.values()) + len(plain)
    n_bad = len(bad_lines)

    producer = make_producer(settings)
    consumer = make_consumer(settings, t.input)
    try:
        events, reasons = drain(consumer, producer, t.dlq, n_valid + n_bad)
        rejected = sum(reasons.values())
        producer.flush(timeout=30)
    finally:
        consumer.close()
        producer.close()

    # Every valid event came out exactly once, with the right content.
    assert len(events) == n_valid
    assert rejected == n_bad
    got = Counter((e.event.asset_id, e.event.ts_ms, e.event.value) for e in events)
    expected = Counter()
    for lines in [*valid_by_codec.values(), plain]:
        for line in lines:
            body = json.loads(line.split(b"|", 1)[1])
            ts_ms = body["ts"] if isinstance(body["ts"], int) else None
            expected[(body["asset_id"], ts_ms, body["value"])] += 1
    assert sum(got.values()) == n_valid
    for (asset, ts_ms, value), count in expected.items():
        if ts_ms is None:  # RFC 3339 timestamps: checked below
            continue
        assert got[(asset, ts_ms, value)] == count
    plain_ts = sorted(e.event.ts_ms for e in events if e.event.asset_id.startswith("plain-"))
    assert plain_ts == [1584351000000 + 86_400_000 * i for i in range(5)]
    assert next(e for e in events if e.event.asset_id == "zstd-3").event.attributes == {
        "sector": "Energy",
        "tier": 2.0,
    }

    # Every bad message is in the DLQ with its original bytes, reason and source position.
    dead = read_all(settings, t.dlq, n_bad)
    assert len(dead) == n_bad
    assert reasons == Counter({reason: len(lines) for reason, lines in BAD.items()})
    by_value = {m.value: dict(m.headers) for m in dead}
    for reason, lines in BAD.items():
        for line in lines:
            original = line.split(b"|", 1)[1]
            headers = by_value[original]
            assert headers["error"] == reason.encode(), (original, headers)
            assert headers["error.detail"]
            assert headers["source.topic"] == t.input.encode()
            assert int(headers["source.partition"]) >= 0
            assert int(headers["source.offset"]) >= 0
    assert all(m.key == b"a1" for m in dead)

    # The batches really were compressed with each codec (checked in the broker's own log files).
    if local_broker is not None:
        assert codecs_on_disk(local_broker, t.input) >= set(CODECS)


def codecs_on_disk(broker: LocalBroker, topic: str) -> set[str]:
    """Compression codecs of the record batches stored for `topic`, per Kafka's DumpLogSegments."""
    files = sorted(str(p) for p in (broker.home / "data").glob(f"{topic}-*/*.log"))
    proc = subprocess.run(
        [
            find_java(),
            "-cp",
            resolve_classpath(broker.settings),
            "kafka.tools.DumpLogSegments",
            "--files",
            ",".join(files),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return {
        line.split("compresscodec:")[1].split()[0].lower()
        for line in proc.stdout.splitlines()
        if "compresscodec:" in line
    }
