"""Learning split from valuing over Kafka (`consumer.role`): the training-samples and models
topics, their encodings, and the cluster -> partition map.

    training-samples  key cluster id, partition `partition_of(cluster, clusters, n)`: blocks of
                      labelled samples of one cluster (`encode_samples`), written by valuers
    models            compacted, key cluster id: the cluster's latest model (`encode_model`),
                      written by the cluster's learner, read whole by valuers and learners

Both encodings are data only: a sample block is a fixed binary layout parsed with numpy, a model
is the checkpoint codec's format (JSON + safetensors, SHA-256 checked; `consumers/checkpoint`),
so nothing read from Kafka is ever unpickled. A record that does not decode raises ValueError
naming the problem; the readers count it and go on.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamval.config import Settings
from streamval.consumers.checkpoint import CheckpointMeta, decode, encode
from streamval.consumers.records import OutRecord
from streamval.consumers.topic_sync import POLL_TIMEOUT_MS, TopicSync
from streamval.errors import CheckpointError
from streamval.models.trainer import Float32Array, FloatArray, IntArray
from streamval.stream.kafka.clients import make_producer
from streamval.stream.kafka.topics import MODEL_MESSAGE_BYTES

log = logging.getLogger(__name__)

SAMPLES_MAGIC = b"SVSMPL\x00\x01"
_HEADER_LENGTH = struct.Struct("<I")
_MAX_HEADER = 4096
# Samples per training-samples record: a record stays far below the 1 MiB message limit.
SAMPLES_PER_RECORD = 256
CATCH_UP_S = 10.0
SEND_TIMEOUT_S = 30.0


def partition_of(cluster: int, clusters: Sequence[int], partitions: int) -> int:
    """The training-samples partition of `cluster`: the clusters, sorted, dealt round robin over
    the partitions, so that no two clusters share one while there are enough (hashing a few
    keys collides). Every valuer holding the same clustering computes the same map."""
    if partitions < 1:
        raise ValueError(f"partitions: {partitions}")
    ids = sorted(set(clusters) | {cluster})
    return ids.index(cluster) % partitions


# -- training samples --------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleBlock:
    """Labelled samples of one cluster, in event order."""

    cluster: int
    clustering_version: int
    windows: Float32Array  # (n, seq_len, n_inputs), scale-free
    targets: FloatArray  # (n,) scale-free changes
    ts: IntArray  # (n,) event times (ms)
    alarm: bool = False  # a drift alarm of the cluster came since its previous samples

    def __len__(self) -> int:
        return len(self.targets)


def encode_samples(block: SampleBlock) -> bytes:
    """magic, header length (u32 LE), JSON header, windows float32, targets float64, times int64
    (all little-endian, C order)."""
    n, seq_len, n_inputs = block.windows.shape
    header = json.dumps(
        {
            "cluster": block.cluster,
            "clustering_version": block.clustering_version,
            "n": n,
            "seq_len": seq_len,
            "n_inputs": n_inputs,
            "alarm": block.alarm,
        },
        separators=(",", ":"),
    ).encode()
    return b"".join(
        (
            SAMPLES_MAGIC,
            _HEADER_LENGTH.pack(len(header)),
            header,
            np.ascontiguousarray(block.windows, dtype="<f4").tobytes(),
            np.ascontiguousarray(block.targets, dtype="<f8").tobytes(),
            np.ascontiguousarray(block.ts, dtype="<i8").tobytes(),
        )
    )


def _int(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what}: {value!r}")
    return value


def decode_samples(raw: bytes | None) -> SampleBlock:
    """The block in `raw`; ValueError naming what is wrong."""
    if raw is None or not raw.startswith(SAMPLES_MAGIC):
        raise ValueError("signature: not a streamval sample block")
    start = len(SAMPLES_MAGIC) + _HEADER_LENGTH.size
    if len(raw) < start:
        raise ValueError("truncated: no header")
    (length,) = _HEADER_LENGTH.unpack_from(raw, len(SAMPLES_MAGIC))
    if length > _MAX_HEADER or start + length > len(raw):
        raise ValueError("header: impossible length")
    try:
        header = json.loads(raw[start : start + length])
        cluster = _int(header["cluster"], "cluster")
        version = _int(header["clustering_version"], "clustering_version")
        n = _int(header["n"], "n", 1)
        seq_len = _int(header["seq_len"], "seq_len", 1)
        n_inputs = _int(header["n_inputs"], "n_inputs", 1)
        alarm = header["alarm"]
        if not isinstance(alarm, bool):
            raise ValueError(f"alarm: {alarm!r}")
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header: {exc!r}") from None
    body = memoryview(raw)[start + length :]
    sizes = (n * seq_len * n_inputs * 4, n * 8, n * 8)
    if len(body) != sum(sizes):
        raise ValueError(f"length: {len(body)} bytes of samples where {sum(sizes)} belong")
    x = np.frombuffer(body[: sizes[0]], dtype="<f4").reshape(n, seq_len, n_inputs)
    y = np.frombuffer(body[sizes[0] : sizes[0] + sizes[1]], dtype="<f8")
    ts = np.frombuffer(body[sizes[0] + sizes[1] :], dtype="<i8")
    # Windows hold NaN where a feature is unknown (the learner's normaliser fills it), never inf.
    if np.isinf(x).any() or not np.all(np.isfinite(y)):
        raise ValueError("values: infinite window values or targets that are not finite")
    return SampleBlock(
        cluster,
        version,
        x.astype(np.float32),
        y.astype(np.float64),
        ts.astype(np.int64),
        alarm,
    )


class SampleOutbox:
    """A valuer's samples, encoded into records as the engine hands them over (its trainer's
    sink); the service sends them with the batch's valuations, before it commits the offsets
    (in exactly-once mode inside the same transaction)."""

    def __init__(self, topic: str, clustering_version: Callable[[], int]) -> None:
        self.topic = topic
        self.partitions = 1  # of the topic; set once known (`ValuationService._start`)
        self.clustering_version = clustering_version
        self.sent = 0
        self._records: list[OutRecord] = []

    def add(
        self,
        cluster: int,
        *,
        clusters: list[int],
        x: Float32Array,
        y: FloatArray,
        ts: IntArray,
        alarm: bool,
    ) -> None:
        partition = partition_of(cluster, clusters, self.partitions)
        key = str(cluster).encode()
        version = self.clustering_version()
        for at in range(0, len(y), SAMPLES_PER_RECORD):
            part = slice(at, at + SAMPLES_PER_RECORD)
            block = SampleBlock(cluster, version, x[part], y[part], ts[part], alarm and at == 0)
            self._records.append(
                OutRecord(self.topic, key, encode_samples(block), "sample", partition=partition)
            )
        self.sent += len(y)

    def take(self) -> list[OutRecord]:
        """The records made since the last call."""
        records, self._records = self._records, []
        return records


# -- models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """A cluster's model as its learner published it."""

    cluster: int
    version: int  # the model's optimizer steps (its `model_version`)
    clustering_version: int
    learner: dict[str, Any]  # `SequenceLearner.state_dict()` less optimizer moments and replay
    policy: dict[str, Any]  # `AdaptiveLearningRate.state_dict()`
    # The last training sample in the model: (partition, offset, samples of that record);
    # a learner restoring it skips those when it reads them again.
    covered: tuple[int, int, int] | None = None


def slim_learner_state(state: dict[str, Any]) -> dict[str, Any]:
    """A learner's state for the models topic: weights, normaliser, RNG and counters; without
    Adam's moments (twice the weights again) and the replay reservoir (megabytes), which a
    learner restored from it starts afresh."""
    out = dict(state)
    out["adam"] = {"step": [], "exp_avg": [], "exp_avg_sq": []}
    for name in ("res_x", "res_y", "res_c"):
        out[name] = np.asarray(state[name])[:0].copy()
    return out


def encode_model(record: ModelRecord, group_id: str, topic: str) -> bytes:
    state = {
        "cluster": record.cluster,
        "version": record.version,
        "clustering_version": record.clustering_version,
        "learner": record.learner,
        "policy": record.policy,
        "covered": None if record.covered is None else list(record.covered),
    }
    return encode(state, CheckpointMeta(group_id=group_id, topic=topic, partitions=0))


def decode_model(raw: bytes | None) -> ModelRecord:
    """The model in `raw`; ValueError naming what is wrong (never unpickles)."""
    if raw is None:
        raise ValueError("empty: a tombstone or a record without value")
    try:
        state = decode(raw).state
    except CheckpointError as exc:
        raise ValueError(f"codec: {exc}") from None
    try:
        learner, policy = state["learner"], state["policy"]
        if not isinstance(learner, dict) or not isinstance(policy, dict):
            raise ValueError("state: learner and policy must be mappings")
        covered = state.get("covered")
        if covered is not None:
            if not isinstance(covered, list) or len(covered) != 3:
                raise ValueError(f"covered: {covered!r}")
            covered = tuple(_int(v, "covered") for v in covered)
        return ModelRecord(
            cluster=_int(state["cluster"], "cluster"),
            version=_int(state["version"], "version"),
            clustering_version=_int(state["clustering_version"], "clustering_version"),
            learner=learner,
            policy=policy,
            covered=covered,
        )
    except KeyError as exc:
        raise ValueError(f"state: {exc!r} missing") from None


class ModelSync(TopicSync):
    """Reads every cluster's latest model from the models topic (all partitions, from the
    beginning: compaction keeps the latest) in the background; publishes this learner's."""

    what = "models"
    max_message_bytes = MODEL_MESSAGE_BYTES

    def __init__(
        self,
        settings: Settings,
        instance: str,
        *,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(settings, instance, settings.models_topic(), on_rejected=on_rejected)
        self.received = 0
        self._latest: dict[int, ModelRecord] = {}
        self._catch_up = threading.Event()  # asked: read to the end offsets of now
        self._caught_up = threading.Event()
        self._target: dict[TopicPartition, int] | None = None

    def start(self) -> None:
        """Read up to the topic's end of now (at most `CATCH_UP_S`), then keep reading."""
        consumer = self._new_consumer()
        partitions = consumer.partitions_for_topic(self.topic) or {0}
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + CATCH_UP_S
        try:
            ends = consumer.end_offsets(tps)
            while (
                any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline
            ):
                for messages in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
                    for message in messages:
                        self.receive(message.value)
        except Exception as exc:  # the reader thread keeps trying
            log.warning("reading the latest models at start failed: %s", exc)
        self._start_reader()

    def read_to_end(self, timeout_s: float = CATCH_UP_S) -> bool:
        """Wait until the reader has read every record on the topic now (a learner given new
        partitions restores their clusters from their latest snapshots, not older ones);
        whether it got there within `timeout_s`."""
        self._caught_up.clear()
        self._catch_up.set()
        return self._caught_up.wait(timeout_s)

    def _ready(self, consumer: KafkaConsumer) -> bool:
        """On the reader thread, before each poll: serve a `read_to_end` request."""
        if self._catch_up.is_set():
            self._catch_up.clear()
            self._target = consumer.end_offsets(list(consumer.assignment()))
        if self._target is not None and all(
            consumer.position(tp) >= end for tp, end in self._target.items()
        ):
            self._target = None
            self._caught_up.set()
        return True

    def latest(self) -> dict[int, ModelRecord]:
        """The newest model of every cluster read or published so far."""
        with self._lock:
            return dict(self._latest)

    def get(self, cluster: int) -> ModelRecord | None:
        with self._lock:
            return self._latest.get(cluster)

    def receive(self, value: bytes | None) -> ModelRecord | None:
        try:
            record = decode_model(value)
        except ValueError as exc:
            self._reject(exc, "model")
            return None
        self.received += 1
        self._offer(record)
        return record

    def _offer(self, record: ModelRecord) -> None:
        with self._lock:
            held = self._latest.get(record.cluster)
            if held is None or record.version > held.version:
                self._latest[record.cluster] = record

    def _take(self, message: Any) -> None:
        self.receive(message.value)

    def publish(self, records: list[ModelRecord]) -> None:
        """Send the snapshots and wait for the broker's acks (before the learner commits the
        offsets of the samples they cover)."""
        producer = self._producer_of_own()
        group = self.settings.consumer.group_id
        futures = [
            producer.send(
                self.topic,
                key=str(r.cluster).encode(),
                value=encode_model(r, group, self.topic),
            )
            for r in records
        ]
        for future in futures:
            future.get(SEND_TIMEOUT_S)
        for r in records:
            self._offer(r)

    def _producer_of_own(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = make_producer(
                self.settings,
                client_id=f"{self.instance}-{self.what}",
                max_request_size=MODEL_MESSAGE_BYTES,
            )
        return self._producer


def wait_until(check: Callable[[], bool], timeout_s: float, stop: threading.Event) -> bool:
    """Poll `check` every 0.1 s until it holds, `timeout_s` passes or `stop` is set."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline or stop.wait(0.1):
            return False
    return True
