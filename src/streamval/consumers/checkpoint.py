"""Checkpoints: the engine's state tree and the input offsets it reflects, as data, never code.

File layout (`checkpoint.streamval`, written by write-temp, fsync, rename):

    magic      8 bytes   b"SVCKPT\\x00\\x02"
    length     8 bytes   little-endian size H of the header
    header     H bytes   JSON: {"format": 2, "sha256": hex, "document_bytes": N}
    document   N bytes   JSON: {"meta": {...}, "state": the state tree, arrays as references}
    arrays     the rest  a safetensors file holding every array of the tree

The state tree is what `Engine.state_dict()` returns (contracts.md section 1): dicts with string
keys, lists, and leaves that are None, bool, int, float (NaN and inf allowed), str, numpy arrays
or CPU torch tensors. Anything else (bytes, pickles, objects) is refused when writing, so a
checkpoint can never carry code; loading parses only JSON (the standard library) and safetensors
(a format made for untrusted files), and never unpickles. The SHA-256 of document + arrays is
checked before either is parsed, so a flipped byte is an error, not a silently different model.

`meta` records the consumer group, input topic and partition count, the offsets, the streamval
version and the time; `CheckpointStore.load` checks them against the running service and raises
`CheckpointError` naming the problem (the service stops unless told to discard the checkpoint).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamval import __version__
from streamval.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.streamval"
# The format of streamval <= 0.1 (a torch pickle). Never loaded: unpickling runs code.
LEGACY_FILE = "checkpoint.pt"
FORMAT = 2
MAGIC = b"SVCKPT\x00\x02"
_LENGTH = struct.Struct("<Q")
# A header is a few dozen bytes; anything much larger is not ours.
_MAX_HEADER = 4096
_ARRAY = "__array__"
_KIND = "__kind__"


@dataclass(frozen=True)
class CheckpointMeta:
    """Where a checkpoint belongs: checked on load against the running service."""

    group_id: str
    topic: str
    partitions: int
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    created_at: float = 0.0
    version: str = __version__

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "topic": self.topic,
            "partitions": self.partitions,
            "offsets": [[t, p, o] for (t, p), o in sorted(self.offsets.items())],
            "created_at": self.created_at,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, raw: Any) -> CheckpointMeta:
        try:
            return cls(
                group_id=_typed(raw["group_id"], str),
                topic=_typed(raw["topic"], str),
                partitions=_typed(raw["partitions"], int),
                offsets={
                    (_typed(t, str), _typed(p, int)): _typed(o, int) for t, p, o in raw["offsets"]
                },
                created_at=float(raw["created_at"]),
                version=_typed(raw["version"], str),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint metadata is malformed: {exc!r}") from None


@dataclass(frozen=True)
class Checkpoint:
    """Engine state and the metadata it was written with."""

    state: dict[str, Any]
    meta: CheckpointMeta


def _typed(value: Any, kind: type) -> Any:
    if kind is int and isinstance(value, bool):
        raise TypeError(f"expected int, got {value!r}")
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


# -- the codec --------------------------------------------------------------------------------


def encode(state: dict[str, Any], meta: CheckpointMeta) -> bytes:
    """The checkpoint file's bytes; `CheckpointError` if the tree holds anything but data."""
    from safetensors.numpy import save

    arrays: dict[str, NDArray[Any]] = {}
    tree = _encode_node(state, "state", arrays)
    document = json.dumps(
        {"meta": meta.to_json(), "state": tree}, separators=(",", ":"), allow_nan=True
    ).encode()
    blob = save(arrays) if arrays else b""
    digest = hashlib.sha256(document)
    digest.update(blob)
    header = json.dumps(
        {"format": FORMAT, "sha256": digest.hexdigest(), "document_bytes": len(document)}
    ).encode()
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, document, blob))


def _encode_node(node: Any, where: str, arrays: dict[str, NDArray[Any]]) -> Any:
    if node is None or isinstance(node, bool | int | str):
        return node
    if isinstance(node, float):
        return node
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"engine state is not data: key {key!r} at {where} is a "
                    f"{type(key).__name__}, keys must be strings"
                )
            if key in (_ARRAY, _KIND):
                raise CheckpointError(f"engine state uses the reserved key {key!r} at {where}")
            out[key] = _encode_node(value, f"{where}.{key}", arrays)
        return out
    if isinstance(node, list | tuple):
        return [_encode_node(v, f"{where}[{i}]", arrays) for i, v in enumerate(node)]
    if isinstance(node, np.ndarray):
        return _encode_array(node, "numpy", where, arrays)
    if isinstance(node, np.generic) and isinstance(node.item(), bool | int | float):
        return node.item()
    if type(node).__module__.startswith("torch") and type(node).__name__ == "Tensor":
        tensor = node.detach()
        if tensor.device.type != "cpu":
            raise CheckpointError(f"engine state has a tensor on {tensor.device} at {where}")
        try:
            array = tensor.numpy()
        except TypeError as exc:  # bfloat16 and other dtypes numpy lacks
            raise CheckpointError(
                f"engine state has an unsupported tensor at {where}: {exc}"
            ) from None
        return _encode_array(array, "torch", where, arrays)
    raise CheckpointError(
        f"engine state is not data: {type(node).__name__} at {where} (only dicts, lists, "
        "None, bool, int, float, str and numeric arrays may be checkpointed)"
    )


def _encode_array(
    array: NDArray[Any], kind: str, where: str, arrays: dict[str, NDArray[Any]]
) -> dict[str, Any]:
    if array.dtype.kind not in "biuf":
        raise CheckpointError(
            f"engine state is not data: array of dtype {array.dtype} at {where} "
            "(numeric arrays only)"
        )
    name = str(len(arrays))
    arrays[name] = np.ascontiguousarray(array)
    return {_ARRAY: name, _KIND: kind}


def decode(raw: bytes) -> Checkpoint:
    """Parse and verify checkpoint bytes; `CheckpointError` naming what is wrong."""
    if not raw.startswith(MAGIC[:6]):
        raise CheckpointError(
            "not a streamval checkpoint (unknown file signature); it may be corrupt or foreign"
        )
    if raw[: len(MAGIC)] != MAGIC:
        raise CheckpointError(
            f"checkpoint format {raw[6:8].hex()} is not this version's ({FORMAT:04x})"
        )
    start = len(MAGIC) + _LENGTH.size
    if len(raw) < start:
        raise CheckpointError("checkpoint is truncated (no header)")
    (header_len,) = _LENGTH.unpack_from(raw, len(MAGIC))
    if header_len > _MAX_HEADER or start + header_len > len(raw):
        raise CheckpointError("checkpoint header is corrupt (impossible length)")
    try:
        header = json.loads(raw[start : start + header_len])
        fmt, expected, n = header["format"], str(header["sha256"]), int(header["document_bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint header is corrupt: {exc!r}") from None
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint format {fmt!r} is not this version's ({FORMAT})")
    body = memoryview(raw)[start + header_len :]
    if hashlib.sha256(body).hexdigest() != expected:
        raise CheckpointError(
            "checkpoint checksum mismatch: the file was changed or corrupted after it was written"
        )
    if not 0 <= n <= len(body):
        raise CheckpointError("checkpoint header is corrupt (document length)")
    try:
        document = json.loads(bytes(body[:n]))
        meta = CheckpointMeta.from_json(document["meta"])
        tree = document["state"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint document is unreadable: {exc!r}") from None
    arrays: dict[str, NDArray[Any]] = {}
    if len(body) > n:
        from safetensors.numpy import load

        try:
            arrays = load(bytes(body[n:]))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"checkpoint arrays are unreadable: {exc}") from None
    state = _decode_node(tree, "state", arrays)
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint state is not a mapping")
    return Checkpoint(state=state, meta=meta)


def _decode_node(node: Any, where: str, arrays: dict[str, NDArray[Any]]) -> Any:
    if isinstance(node, dict):
        if _ARRAY in node:
            name, kind = node.get(_ARRAY), node.get(_KIND)
            if name not in arrays or kind not in ("numpy", "torch") or len(node) != 2:
                raise CheckpointError(f"checkpoint refers to a missing array at {where}")
            array = arrays[name]
            if kind == "torch":
                import torch

                return torch.from_numpy(array)
            return array
        return {k: _decode_node(v, f"{where}.{k}", arrays) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode_node(v, f"{where}[{i}]", arrays) for i, v in enumerate(node)]
    return node


def is_data(tree: Any) -> bool:
    """Whether `tree` is a state tree the codec accepts (contracts.md section 1)."""
    try:
        _encode_node(tree, "state", {})
    except CheckpointError:
        return False
    return True


# -- the store --------------------------------------------------------------------------------


class CheckpointStore:
    """One checkpoint file in a directory, replaced atomically (write-temp, fsync, rename)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / CHECKPOINT_FILE

    def write(self, data: bytes) -> None:
        """Replace the checkpoint with `data` (already encoded) atomically and durably."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{CHECKPOINT_FILE}.tmp.{os.getpid()}")
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def save(self, state: dict[str, Any], meta: CheckpointMeta) -> None:
        """Encode and write in the calling thread (tests, tools; the service uses the writer)."""
        self.write(encode(state, meta))

    def load(self, expect: CheckpointMeta | None = None) -> Checkpoint | None:
        """The checkpoint, None if there is none; `CheckpointError` if it is unusable.

        With `expect`, the group, topic and partition count must match it.
        """
        legacy = self.directory / LEGACY_FILE
        if not self.path.exists():
            if legacy.exists():
                raise CheckpointError(
                    f"{legacy} is a checkpoint of the old format (a torch pickle), which is never "
                    "loaded because loading a pickle can run code; remove it or start with "
                    "--discard-checkpoint"
                )
            return None
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"checkpoint {self.path} is unreadable: {exc}") from None
        try:
            checkpoint = decode(raw)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {self.path}: {exc}") from None
        if expect is not None:
            check_meta(checkpoint.meta, expect, self.path)
        return checkpoint

    def discard(self) -> list[Path]:
        """Move the checkpoint (and an old-format one) aside; returns the new paths."""
        moved = []
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in (self.path, self.directory / LEGACY_FILE):
            if path.exists():
                target = path.with_name(f"{path.name}.discarded-{stamp}")
                os.replace(path, target)
                moved.append(target)
        return moved


def check_meta(found: CheckpointMeta, expect: CheckpointMeta, path: Path | str) -> None:
    """`CheckpointError` unless a checkpoint belongs to this group, topic and partition count."""
    problems = []
    if found.group_id != expect.group_id:
        problems.append(f"consumer group {found.group_id!r}, this service's is {expect.group_id!r}")
    if found.topic != expect.topic:
        problems.append(f"input topic {found.topic!r}, this service reads {expect.topic!r}")
    if expect.partitions and found.partitions != expect.partitions:
        problems.append(
            f"{found.partitions} input partitions, the topic now has {expect.partitions} "
            "(its offsets would point at other events)"
        )
    if problems:
        raise CheckpointError(
            f"checkpoint {path} belongs elsewhere: it was written for " + "; ".join(problems)
        )


# -- writing off the poll loop ----------------------------------------------------------------


@dataclass
class WriteStats:
    """What the background writer did (read by the service for its metrics)."""

    written: int = 0
    failed: int = 0
    last_seconds: float = math.nan
    last_bytes: int = 0
    last_error: str | None = None


class CheckpointWriter:
    """Encodes and writes checkpoints on a background thread.

    The poll loop takes the state (a consistent copy, between batches) and calls `submit`, which
    returns at once; a newer submission replaces one still waiting. A state the codec refuses is
    a bug, kept in `fatal` for the loop to raise; a failed write (disk full) is logged, counted
    and retried with the next checkpoint.
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        on_written: Callable[[float, float, int], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.stats = WriteStats()
        self.fatal: CheckpointError | None = None
        self._on_written = on_written
        self._on_failed = on_failed
        self._cond = threading.Condition()
        self._pending: tuple[dict[str, Any], CheckpointMeta] | None = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, state: dict[str, Any], meta: CheckpointMeta) -> None:
        """Queue a checkpoint (state must not be mutated afterwards: a copy)."""
        with self._cond:
            if self._closed:
                raise CheckpointError("the checkpoint writer is closed")
            self._pending = (state, meta)
            self._cond.notify_all()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until nothing is pending or being written; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Finish what is pending, then stop the thread; False if that timed out."""
        done = self.wait(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=0 if not done else timeout_s)
        return done

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                state, meta = self._pending
                self._pending = None
                self._busy = True
            try:
                self._write(state, meta)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, state: dict[str, Any], meta: CheckpointMeta) -> None:
        t0 = time.monotonic()
        try:
            data = encode(state, meta)
        except CheckpointError as exc:
            self.fatal = exc
            self.stats.failed += 1
            self.stats.last_error = str(exc)
            log.error("checkpoint not written: %s", exc)
            if self._on_failed is not None:
                self._on_failed("not_data")
            return
        try:
            self.store.write(data)
        except OSError as exc:
            self.stats.failed += 1
            self.stats.last_error = str(exc)
            log.error("checkpoint write failed: %s", exc, extra={"path": str(self.store.path)})
            if self._on_failed is not None:
                self._on_failed("io")
            with contextlib.suppress(OSError):
                for tmp in self.store.directory.glob(f".{CHECKPOINT_FILE}.tmp.*"):
                    tmp.unlink()
            return
        seconds = time.monotonic() - t0
        self.stats.written += 1
        self.stats.last_seconds = seconds
        self.stats.last_bytes = len(data)
        if self._on_written is not None:
            self._on_written(meta.created_at, seconds, len(data))
        log.info(
            "checkpoint written",
            extra={
                "path": str(self.store.path),
                "bytes": len(data),
                "seconds": round(seconds, 3),
                "partitions": len(meta.offsets),
            },
        )
