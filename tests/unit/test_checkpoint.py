"""The checkpoint codec: data in, data out; anything else refused; corruption and foreign files
named; nothing in a checkpoint file can run code."""

from __future__ import annotations

import math
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamval.consumers.checkpoint import (
    CHECKPOINT_FILE,
    MAGIC,
    CheckpointMeta,
    CheckpointStore,
    CheckpointWriter,
    decode,
    encode,
    is_data,
)
from streamval.errors import CheckpointError

META = CheckpointMeta("g", "asset-events", 3, {("asset-events", 0): 10, ("asset-events", 2): 7})


def tree() -> dict[str, Any]:
    return {
        "version": 2,
        "big": 2**130,  # numpy RNG states hold 128-bit integers
        "nan": math.nan,
        "inf": -math.inf,
        "none": None,
        "flag": True,
        "name": "cluster \u00e9",
        "ids": ["a", "b"],
        "windows": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "counts": np.array([1, 2, 3], dtype=np.int64),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 5)),
        "weights": {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.float64)},
        "nested": [{"x": [1, 2.5, None]}, []],
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b and type(a) is type(b)


def test_round_trip_keeps_every_leaf_and_the_metadata() -> None:
    original = tree()
    checkpoint = decode(encode(original, META))
    assert_same(original, checkpoint.state)
    assert checkpoint.meta.offsets == META.offsets
    assert (checkpoint.meta.group_id, checkpoint.meta.topic, checkpoint.meta.partitions) == (
        "g",
        "asset-events",
        3,
    )


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"clusters": {"0": {"metrics": pickle.dumps([1])}}}, "bytes at state.clusters.0.metrics"),
        ({"clusters": {0: {}}}, "key 0 at state.clusters"),
        ({"obj": object()}, "object at state.obj"),
        ({"a": np.array([object()], dtype=object)}, "dtype object at state.a"),
        ({"a": np.array(["x"])}, "dtype <U1 at state.a"),
        ({"a": [1, {"b": {1, 2}}]}, "set at state.a[1].b"),
    ],
)
def test_anything_but_data_is_refused_and_located(bad: dict[str, Any], where: str) -> None:
    assert not is_data(bad)
    with pytest.raises(CheckpointError, match=r"not data|keys must be") as info:
        encode(bad, META)
    assert where in str(info.value)


def test_a_flipped_byte_anywhere_is_detected() -> None:
    raw = bytearray(encode(tree(), META))
    rng = np.random.default_rng(0)
    header_end = len(MAGIC) + 8 + struct.unpack_from("<Q", raw, len(MAGIC))[0]
    for position in rng.integers(header_end, len(raw), size=64):
        flipped = bytearray(raw)
        flipped[position] ^= 0x40
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            decode(bytes(flipped))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "not a streamval checkpoint"),
        (b"PK\x03\x04 a torch zip", "not a streamval checkpoint"),
        (pickle.dumps({"engine": {}}), "not a streamval checkpoint"),
        (MAGIC[:6] + b"\x00\x01" + b"\x00" * 8, "format 0001"),
        (MAGIC + struct.pack("<Q", 10**9), "impossible length"),
        (MAGIC + struct.pack("<Q", 5) + b"{nope", "header is corrupt"),
    ],
)
def test_foreign_and_truncated_files_are_named(raw: bytes, problem: str) -> None:
    with pytest.raises(CheckpointError, match=problem):
        decode(raw)


def test_truncated_checkpoint_fails_the_checksum() -> None:
    raw = encode(tree(), META)
    with pytest.raises(CheckpointError, match="checksum"):
        decode(raw[: len(raw) - 100])


class Payload:
    """Pickling this runs code on load: the attack of issue 10 item 1."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/streamval-pwned-unit",))


def test_a_pickle_payload_cannot_get_into_or_out_of_a_checkpoint(tmp_path: Path) -> None:
    marker = Path("/tmp/streamval-pwned-unit")
    marker.unlink(missing_ok=True)
    payload = pickle.dumps(Payload())
    with pytest.raises(CheckpointError, match="bytes"):
        encode({"detector": payload}, META)
    # Smuggled in as an array of bytes or a string, it comes back as exactly that: data.
    raw = encode({"detector": np.frombuffer(payload, dtype=np.uint8), "s": payload.hex()}, META)
    state = decode(raw).state
    assert state["detector"].tobytes() == payload and state["s"] == payload.hex()
    # A crafted file (a pickle, a torch.save) under the checkpoint's name is refused unread.
    store = CheckpointStore(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a streamval checkpoint"):
        store.load()
    torch.save({"engine": Payload()}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="not a streamval checkpoint"):
        store.load()
    assert not marker.exists()


def test_an_old_format_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    store = CheckpointStore(tmp_path)
    with pytest.raises(CheckpointError, match=r"old format .* never loaded"):
        store.load()
    moved = store.discard()
    assert len(moved) == 1 and store.load() is None


@pytest.mark.parametrize(
    ("expect", "problem"),
    [
        (CheckpointMeta("other", "asset-events", 3), "consumer group 'g'"),
        (CheckpointMeta("g", "events-2", 3), "input topic 'asset-events'"),
        (CheckpointMeta("g", "asset-events", 6), "3 input partitions, the topic now has 6"),
    ],
)
def test_a_checkpoint_of_another_group_topic_or_partitioning_is_refused(
    tmp_path: Path, expect: CheckpointMeta, problem: str
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(tree(), META)
    assert store.load(CheckpointMeta("g", "asset-events", 3)) is not None
    with pytest.raises(CheckpointError, match="belongs elsewhere") as info:
        store.load(expect)
    assert problem in str(info.value)


def test_the_writer_writes_in_the_background_and_keeps_the_latest(tmp_path: Path) -> None:
    written: list[float] = []
    writer = CheckpointWriter(
        CheckpointStore(tmp_path), on_written=lambda at, seconds, size: written.append(at)
    )
    for i in range(5):
        writer.submit({"i": i, "a": np.full(1000, i)}, META)
    assert writer.close(timeout_s=30)
    state = CheckpointStore(tmp_path).load()
    assert state is not None and state.state["i"] == 4
    assert 1 <= len(written) <= 5
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_writer_keeps_a_refused_state_for_the_loop(tmp_path: Path) -> None:
    failures: list[str] = []
    writer = CheckpointWriter(CheckpointStore(tmp_path), on_failed=failures.append)
    writer.submit({"x": b"pickle"}, META)
    writer.wait(30)
    assert isinstance(writer.fatal, CheckpointError) and failures == ["not_data"]
    assert not (tmp_path / CHECKPOINT_FILE).exists()
    writer.close(5)


def test_a_write_that_fails_is_counted_and_the_old_checkpoint_stays(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save({"i": 1}, META)
    # The temporary file's name taken by a directory: the write fails, even for root.
    (tmp_path / f".{CHECKPOINT_FILE}.tmp.{os.getpid()}").mkdir()
    failures: list[str] = []
    writer = CheckpointWriter(store, on_failed=failures.append)
    writer.submit({"i": 2}, META)
    writer.wait(30)
    writer.close(5)
    assert failures == ["io"] and writer.fatal is None and writer.stats.failed == 1
    loaded = store.load()
    assert loaded is not None and loaded.state["i"] == 1
