"""Learning split from valuing over Kafka (`consumer.role`): the training-samples and models
topics, their encodings, and the cluster -> partition map.

    training-samples  key cluster id, partition `partition_of(cluster, clusters, n)`: blocks of
                      labelled samples of one cluster (`encode_samples`), written by valuers;
                      under the id `POOL` (-1) every cluster's samples again, for the pooled
                      model (`engine.pooled_expert`), which a learner owns like a cluster
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamval.config import Settings
from streamval.consumers.checkpoint import CheckpointMeta, decode, encode
from streamval.consumers.records import OutRecord
from streamval.consumers.topic_sync import POLL_TIMEOUT_MS, TopicSync
from streamval.errors import CheckpointError
from streamval.models.trainer import POOL, Float32Array, FloatArray, IntArray, Scored
from streamval.stream.kafka.clients import make_producer
from streamval.stream.kafka.topics import MODEL_MESSAGE_BYTES

log = logging.getLogger(__name__)

# A sample block starts with SAMPLES_SIGNATURE and its format version (one byte); a reader
# refuses a version it does not know rather than misread it.
SAMPLES_SIGNATURE = b"SVSMPL\x00"
SAMPLES_VERSION = 2
SAMPLES_MAGIC = SAMPLES_SIGNATURE + bytes([SAMPLES_VERSION])
_HEADER_LENGTH = struct.Struct("<I")
_MAX_HEADER = 4096
# Samples and scored events per training-samples record: a record stays far below the 1 MiB
# message limit.
SAMPLES_PER_RECORD = 256
SCORED_PER_RECORD = 1024
CATCH_UP_S = 10.0
SEND_TIMEOUT_S = 30.0


def partition_of(cluster: int, clusters: Sequence[int], partitions: int) -> int:
    """The training-samples partition of `cluster`: the clusters, sorted, dealt round robin over
    the partitions, so that no two clusters share one while there are enough (hashing a few
    keys collides). Every valuer holding the same clustering computes the same map. The pooled
    model (`POOL`) comes after the clusters, so it has a partition of its own while there are
    more partitions than clusters."""
    if partitions < 1:
        raise ValueError(f"partitions: {partitions}")
    if cluster == POOL:
        return len(set(clusters) - {POOL}) % partitions
    ids = sorted(set(clusters) - {POOL} | {cluster})
    return ids.index(cluster) % partitions


# -- training samples --------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleBlock:
    """Labelled samples of one cluster, in event order, and the cluster's scored events (the
    labelled ones, warming included) that its owner's error metrics and detectors consume."""

    cluster: int
    clustering_version: int
    windows: Float32Array  # (n, seq_len, n_inputs), scale-free
    targets: FloatArray  # (n,) scale-free changes
    ts: IntArray  # (n,) event times (ms)
    scored: Scored = field(default_factory=Scored.empty)
    valuer: str = ""  # the instance id of the valuer that sent it
    assets: int = 0  # that valuer's assets in the cluster

    def __len__(self) -> int:
        return len(self.targets)


def encode_samples(block: SampleBlock) -> bytes:
    """Signature, version byte, header length (u32 LE), JSON header; then windows float32,
    targets float64, times int64 (n samples); then the scored events' times int64, values,
    valuations and standardised errors float64 (m events); all little-endian, C order."""
    n, seq_len, n_inputs = block.windows.shape
    sc = block.scored
    header = json.dumps(
        {
            "cluster": block.cluster,
            "clustering_version": block.clustering_version,
            "n": n,
            "seq_len": seq_len,
            "n_inputs": n_inputs,
            "m": len(sc),
            "valuer": block.valuer,
            "assets": block.assets,
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
            np.ascontiguousarray(sc.ts, dtype="<i8").tobytes(),
            np.ascontiguousarray(sc.values, dtype="<f8").tobytes(),
            np.ascontiguousarray(sc.valuations, dtype="<f8").tobytes(),
            np.ascontiguousarray(sc.z, dtype="<f8").tobytes(),
        )
    )


def _int(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what}: {value!r}")
    return value


def decode_samples(raw: bytes | None) -> SampleBlock:
    """The block in `raw`; ValueError naming what is wrong ("version: ..." for a block of a
    format version this process does not read)."""
    if raw is None or not raw.startswith(SAMPLES_SIGNATURE) or len(raw) <= len(SAMPLES_SIGNATURE):
        raise ValueError("signature: not a streamval sample block")
    version = raw[len(SAMPLES_SIGNATURE)]
    if version != SAMPLES_VERSION:
        raise ValueError(
            f"version: a sample block of format {version}, this process reads {SAMPLES_VERSION}"
        )
    start = len(SAMPLES_MAGIC) + _HEADER_LENGTH.size
    if len(raw) < start:
        raise ValueError("truncated: no header")
    (length,) = _HEADER_LENGTH.unpack_from(raw, len(SAMPLES_MAGIC))
    if length > _MAX_HEADER or start + length > len(raw):
        raise ValueError("header: impossible length")
    try:
        header = json.loads(raw[start : start + length])
        cluster = _int(header["cluster"], "cluster", low=POOL)
        clustering = _int(header["clustering_version"], "clustering_version")
        n = _int(header["n"], "n")
        seq_len = _int(header["seq_len"], "seq_len", 1)
        n_inputs = _int(header["n_inputs"], "n_inputs", 1)
        m = _int(header["m"], "m")
        assets = _int(header["assets"], "assets")
        valuer = header["valuer"]
        if not isinstance(valuer, str):
            raise ValueError(f"valuer: {valuer!r}")
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header: {exc!r}") from None
    if n + m == 0:
        raise ValueError("empty: a block without samples or scored events")
    body = memoryview(raw)[start + length :]
    sizes = (n * seq_len * n_inputs * 4, n * 8, n * 8, m * 8, m * 8, m * 8, m * 8)
    if len(body) != sum(sizes):
        raise ValueError(f"length: {len(body)} bytes of samples where {sum(sizes)} belong")
    parts, at = [], 0
    for size, dtype in zip(sizes, ("<f4", "<f8", "<i8", "<i8", "<f8", "<f8", "<f8"), strict=True):
        parts.append(np.frombuffer(body[at : at + size], dtype=dtype))
        at += size
    x = parts[0].reshape(n, seq_len, n_inputs)
    y, values, valuations, z = parts[1], parts[4], parts[5], parts[6]
    # Windows hold NaN where a feature is unknown (the learner's normaliser fills it), never inf;
    # a scored event's z is NaN while its asset is warming.
    if np.isinf(x).any() or not np.all(np.isfinite(y)):
        raise ValueError("values: infinite window values or targets that are not finite")
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(valuations))) or np.isinf(z).any():
        raise ValueError("scored: values or valuations that are not finite, or an infinite error")
    return SampleBlock(
        cluster,
        clustering,
        x.astype(np.float32),
        y.astype(np.float64),
        parts[2].astype(np.int64),
        Scored(
            parts[3].astype(np.int64),
            values.astype(np.float64),
            valuations.astype(np.float64),
            z.astype(np.float64),
        ),
        valuer,
        assets,
    )


class SampleOutbox:
    """A valuer's samples, encoded into records as the engine hands them over (its trainer's
    sink); the service sends them with the batch's valuations, before it commits the offsets
    (in exactly-once mode inside the same transaction)."""

    def __init__(
        self,
        topic: str,
        clustering_version: Callable[[], int],
        *,
        instance: str = "",
        assets: Callable[[], dict[int, int]] | None = None,
    ) -> None:
        self.topic = topic
        self.partitions = 1  # of the topic; set once known (`ValuationService._start`)
        self.clustering_version = clustering_version
        self.instance = instance
        self.assets = assets  # this valuer's assets per cluster (asked once per `take`)
        self.sent = 0
        self._records: list[OutRecord] = []
        self._sizes: dict[int, int] | None = None

    def add(
        self,
        cluster: int,
        *,
        clusters: list[int],
        x: Float32Array,
        y: FloatArray,
        ts: IntArray,
        scored: Scored,
    ) -> None:
        partition = partition_of(cluster, clusters, self.partitions)
        key = str(cluster).encode()
        version = self.clustering_version()
        if self._sizes is None:
            self._sizes = self.assets() if self.assets is not None else {}
        assets = self._sizes.get(cluster, 0)
        records = max(-(-len(y) // SAMPLES_PER_RECORD), -(-len(scored) // SCORED_PER_RECORD))
        for i in range(records):
            part = slice(i * SAMPLES_PER_RECORD, (i + 1) * SAMPLES_PER_RECORD)
            block = SampleBlock(
                cluster,
                version,
                x[part],
                y[part],
                ts[part],
                scored[i * SCORED_PER_RECORD : (i + 1) * SCORED_PER_RECORD],
                self.instance,
                assets,
            )
            self._records.append(
                OutRecord(self.topic, key, encode_samples(block), "sample", partition=partition)
            )
        self.sent += len(y)

    def take(self) -> list[OutRecord]:
        """The records made since the last call."""
        records, self._records = self._records, []
        self._sizes = None
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
    # The owner's watch of the cluster (`watch.ClusterWatch.state_dict`) and the last training
    # samples record it had watched, (partition, offset): a learner restoring it does not
    # watch those again.
    watch: dict[str, Any] | None = None
    watched: tuple[int, int] | None = None


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
        "watch": record.watch,
        "watched": None if record.watched is None else list(record.watched),
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
        watch, watched = state.get("watch"), state.get("watched")
        if watch is not None and not isinstance(watch, dict):
            raise ValueError("state: watch must be a mapping")
        if watched is not None:
            if not isinstance(watched, list) or len(watched) != 2:
                raise ValueError(f"watched: {watched!r}")
            watched = tuple(_int(v, "watched") for v in watched)
        return ModelRecord(
            cluster=_int(state["cluster"], "cluster", low=POOL),
            version=_int(state["version"], "version"),
            clustering_version=_int(state["clustering_version"], "clustering_version"),
            learner=learner,
            policy=policy,
            covered=covered,
            watch=watch,
            watched=watched,
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
