"""Topic administration: idempotent creation of the topics streamval reads and writes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamval.config import Settings, kafka_client_config

log = logging.getLogger(__name__)

# The largest model snapshot the models topic (and its producers) accept.
MODEL_MESSAGE_BYTES = 16 * 1024 * 1024


def topic_names(settings: Settings) -> list[str]:
    """The four topics of the event contract and the internal ones, as configured."""
    t = settings.topics
    return [
        t.input,
        t.dlq,
        t.valuations,
        t.metrics,
        settings.clusterings_topic(),
        settings.profiles_topic(),
        settings.training_samples_topic(),
        settings.models_topic(),
    ]


def internal_topics(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Topics whose shape is fixed, whatever `topics.partitions` says: name -> (partitions,
    configs). The clusterings topic holds one key, and compaction keeps its latest value; the
    profiles topic one key per asset, the models topic one per cluster (a snapshot may be larger
    than the broker's default 1 MiB message limit)."""
    compact = {"cleanup.policy": "compact"}
    models = {**compact, "max.message.bytes": str(MODEL_MESSAGE_BYTES)}
    return {
        settings.clusterings_topic(): (1, compact),
        settings.profiles_topic(): (settings.topics.partitions, compact),
        settings.models_topic(): (settings.topics.partitions, models),
    }


def admin_client(settings: Settings) -> KafkaAdminClient:
    """An admin client for the configured cluster (SASL/SSL settings included)."""
    return KafkaAdminClient(client_id="streamval-admin", **kafka_client_config(settings, "admin"))


def ensure_topics(
    settings: Settings,
    names: Iterable[str] | None = None,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
    configs: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create whichever of `names` do not exist yet; return the ones created.

    Safe to call from several processes at once: a topic created by someone else in between
    counts as existing. Internal topics (`internal_topics`) keep their own partitions and configs.
    """
    wanted = list(names if names is not None else topic_names(settings))
    partitions = partitions or settings.topics.partitions
    replication = replication_factor or settings.topics.replication_factor
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        created: list[str] = []
        fixed = internal_topics(settings)
        for name in missing:
            n, own = fixed.get(name, (partitions, dict(configs or {})))
            topic = NewTopic(name, n, replication, topic_configs=own)
            try:
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        _wait_for_metadata(admin, wanted, timeout_s)
        if created:
            log.info("created topics", extra={"topics": created, "partitions": partitions})
        return created
    finally:
        admin.close()


def _wait_for_metadata(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """Block until every topic has leaders for all its partitions (producers need them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            described: list[dict[str, Any]] = admin.describe_topics(names)
            ready = all(
                t.get("error_code", 0) == 0
                and t["partitions"]
                and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in t["partitions"])
                for t in described
            )
        except KafkaError:
            ready = False
        if ready or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def describe(settings: Settings) -> dict[str, int]:
    """Partition count of every topic on the cluster (internal topics excluded)."""
    admin = admin_client(settings)
    try:
        # kafka-python 3 names the topic "name", 2.x "topic".
        counts = {
            t.get("name", t.get("topic")): len(t["partitions"]) for t in admin.describe_topics()
        }
        return {name: n for name, n in counts.items() if name and not name.startswith("__")}
    finally:
        admin.close()
