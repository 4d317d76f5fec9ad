"""Settings: a TOML file, then `STREAMVAL_*` environment variables, then CLI flags (last wins).

Every setting has a dotted key, `section.name`, and three ways to set it:

    file     [engine]\\nlr = 0.002            (path from --config or STREAMVAL_CONFIG)
    env      STREAMVAL_ENGINE__LR=0.002       (double underscore separates levels)
    flag     --set engine.lr=0.002            (or a command's own flag, e.g. --bootstrap-servers)

`KAFKA_BOOTSTRAP_SERVERS` is honoured as `kafka.bootstrap_servers`. Kafka client settings
(SASL/SSL and the rest) pass through to kafka-python under `kafka.client` (both clients),
`kafka.consumer` and `kafka.producer`; unknown kafka-python keys are rejected at start.
Validation fails fast with a `ConfigError` naming the key and where its value came from.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from streamval.errors import ConfigError

ENV_PREFIX = "STREAMVAL_"


def time_ms(text: str) -> int:
    """Epoch ms of an RFC 3339 time or an integer epoch-ms string; ValueError otherwise."""
    from datetime import UTC, datetime

    stripped = str(text).strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time or epoch ms: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    """Where the Kafka cluster is and how to talk to it."""

    bootstrap_servers: str | None = Field(
        None, description="host:port[,host:port]; unset = start/use the local broker"
    )
    client: dict[str, Any] = Field(
        default_factory=dict, description="kafka-python settings for both clients (SASL, SSL...)"
    )
    consumer: dict[str, Any] = Field(
        default_factory=dict, description="KafkaConsumer-only settings"
    )
    producer: dict[str, Any] = Field(
        default_factory=dict, description="KafkaProducer-only settings"
    )

    @field_validator("client", "consumer", "producer")
    @classmethod
    def _known_kafka_python_keys(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        from kafka import KafkaConsumer, KafkaProducer

        known = {
            "client": set(KafkaConsumer.DEFAULT_CONFIG) | set(KafkaProducer.DEFAULT_CONFIG),
            "consumer": set(KafkaConsumer.DEFAULT_CONFIG),
            "producer": set(KafkaProducer.DEFAULT_CONFIG),
        }[info.field_name]
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown kafka-python setting(s) {unknown}")
        return value


class TopicSettings(_Section):
    """Topic names (DESIGN.md defaults) and how to create them."""

    input: str = "asset-events"
    dlq: str = "asset-events.dlq"
    valuations: str = "valuations"
    metrics: str = "valuation-metrics"
    clusterings: str = Field(
        "",
        description="compacted, 1 partition: the deployment's latest clustering (scale-out); "
        "empty = '<consumer.group_id>.clusterings', one per consumer group",
    )
    profiles: str = Field(
        "",
        description="compacted, key asset id: each process's assets' profiles, so the "
        "clustering owner fits on all assets; empty = '<consumer.group_id>.profiles'",
    )
    training_samples: str = Field(
        "",
        description="key cluster id: the labelled samples valuers send to learners "
        "(consumer.role); empty = '<consumer.group_id>.training-samples'",
    )
    models: str = Field(
        "",
        description="compacted, key cluster id: each cluster's latest model snapshot, written "
        "by its learner, served by the valuers; empty = '<consumer.group_id>.models'",
    )
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)


class BrokerSettings(_Section):
    """The local single-node KRaft broker used for development, tests and the demo."""

    kafka_version: str = "4.1.1"
    log4j_version: str = "2.24.3"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = pick a free port")
    home: Path = Field(
        Path.home() / ".local" / "state" / "streamval" / "broker",
        description="state directory of `streamval kafka up`: data, log, state file",
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "streamval" / "kafka",
        description="resolved classpaths (the jars themselves stay in ~/.m2)",
    )
    heap: str = "512m"
    start_timeout_s: float = Field(120.0, gt=0)


class ConsumerSettings(_Section):
    """The consumer service (`streamval run`)."""

    group_id: str = "streamval"
    group_instance_id: str | None = Field(
        None,
        description="static group membership (KIP-345), unique per process: a member restarted "
        "within the session timeout gets its partitions back without a rebalance",
    )
    client_id: str = "streamval"
    max_poll_records: int = Field(500, ge=1)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    poll_timeout_ms: int = Field(500, ge=1)
    max_message_bytes: int = Field(64 * 1024, ge=64)
    accept_late: bool = False
    exactly_once: bool = False
    checkpoint_dir: Path | None = None
    checkpoint_interval_s: float = Field(30.0, gt=0)
    history: Path | None = Field(
        None,
        description="long table (CSV/Parquet: asset_id, ts, value, then features and "
        "attributes) the engine learns from before consuming, unless a checkpoint restores it",
    )
    metrics_interval_s: float = Field(10.0, gt=0)
    profile_interval_s: float = Field(
        5.0,
        gt=0,
        description="how often this process publishes the profiles of its assets that changed "
        "(first ready, then grown by 1/8 and by at least 8 values) on the profiles topic",
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    min_event_time: str = Field(
        "1900-01-01T00:00:00Z",
        description="events dated before this (RFC 3339 or epoch ms) go to the DLQ as out_of_range",
    )
    max_event_time_ahead_s: float = Field(
        86_400.0,
        ge=0,
        description="events dated more than this after their record's broker timestamp go to "
        "the DLQ as out_of_range (one far-future event would make its asset's later ones late)",
    )
    max_abs_value: float = Field(1e15, gt=0, description="|value| beyond this is out_of_range")
    max_abs_feature: float = Field(1e15, gt=0, description="|feature| beyond this is out_of_range")
    dlq_max_bytes: int = Field(
        256 * 1024,
        ge=1024,
        description="a dead-letter copy larger than this is truncated (header error.truncated); "
        "keep it below the producer's max_request_size and the DLQ topic's max.message.bytes",
    )
    outage_timeout_s: float = Field(
        300.0,
        gt=0,
        description="how long the broker may be unreachable before the service exits with an "
        "error (it retries with backoff until then)",
    )
    rejoin_after_s: float = Field(
        120.0,
        gt=0,
        description="with no partition assigned for this long while the broker answers, the "
        "group join is taken as stuck and the consumer is re-created (it joins afresh)",
    )
    max_partition_wait_ms: int = Field(
        1000,
        ge=0,
        description="event-time order across partitions: how long to hold back the other "
        "partitions while one with known lag has nothing fetched (as Kafka Streams' "
        "max.task.idle.ms)",
    )
    commit_every_polls: int = Field(
        1, ge=1, description="commit offsets (asynchronously, after the flush) every N batches"
    )
    role: Literal["all", "valuer", "learner"] = Field(
        "all",
        description="all = value and learn in this process; valuer = value, send the labelled "
        "samples to the training-samples topic and serve the models topic's snapshots; "
        "learner = train the clusters of its training-samples partitions, publish snapshots",
    )
    model_every_steps: int = Field(
        1, ge=1, description="a learner publishes a cluster's snapshot every N training steps"
    )
    takeover_lookback: int = Field(
        10_000,
        ge=0,
        description="records per input partition re-read before the committed offset when this "
        "process takes over a partition its checkpoint does not cover, to rebuild the assets' "
        "windows without valuing or learning them again (an asset needs engine.seq_len of them); "
        "0 disables",
    )

    @field_validator("min_event_time")
    @classmethod
    def _parseable_time(cls, value: str) -> str:
        time_ms(value)
        return value.strip()

    @property
    def min_event_time_ms(self) -> int:
        """`min_event_time` as epoch milliseconds."""
        return time_ms(self.min_event_time)


class EngineSettings(_Section):
    """The valuation engine: clustering, per-cluster learners, drift adaptation."""

    seed: int = 0
    n_clusters: int | Literal["auto"] = 3
    clustering: Literal["hierarchical", "kmeans"] = Field(
        "hierarchical", description="Agglomerative Ward (paper) or KMeans"
    )
    linkage: Literal["ward", "average", "complete", "single"] = Field(
        "ward", description="agglomerative linkage (ward needs the euclidean metric)"
    )
    metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean"
    max_clusters: int = Field(6, ge=2)
    bootstrap_assets: int = Field(30, ge=2)
    min_history: int = Field(12, ge=2)
    refit_every: int = Field(0, ge=0, description="events between re-fits; 0 = only after drift")
    refit_on_drift: bool = Field(True, description="re-fit the clustering after a drift alarm")
    fit_max_assets: int = Field(
        2000, ge=2, description="assets sampled for a (re-)fit; Ward needs O(n^2) memory"
    )
    # Clustering that converges and holds still (models/profiles.py, models/clustering.py).
    profile_pseudo_count: float = Field(
        6.0,
        ge=0,
        description="observations of population value an asset's series statistics "
        "are shrunk toward (early noise does not decide its cluster)",
    )
    switch_margin: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="another centroid must be closer by this share of the "
        "distance to the asset's own before it moves (online and at re-fits)",
    )
    switch_checks: int = Field(
        4, ge=1, description="consecutive checks the margin must hold before an asset moves"
    )
    n_resamples: int = Field(
        4, ge=1, description="bootstrap resamples whose agreement scores each K with 'auto'"
    )
    max_features: int = Field(
        8, ge=0, description="dynamic feature slots; later names are dropped (warned, counted)"
    )
    seq_len: int = Field(12, ge=2)
    cell: Literal["lstm", "gru", "linear"] = Field(
        "lstm", description="per-cluster model; linear = ridge-like model on the same window"
    )
    hidden: list[int] = Field(default_factory=lambda: [100, 50])
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    ridge_alpha: float = Field(1e-3, ge=0, description="L2 penalty of the linear cell")
    batch_size: int = Field(
        32, ge=1, description="fresh samples per optimizer step of a cluster (each trained once)"
    )
    buffer_size: int = Field(2048, ge=1, description="replay reservoir per cluster")
    replay_fraction: float = Field(
        0.5, ge=0, lt=1, description="share of replayed old samples in a training step"
    )
    pooling: Literal["cluster", "shared", "global"] = Field(
        "cluster",
        description="what the models are shared by: cluster = one model per cluster (the "
        "paper); shared = one network for every asset with a residual output head per cluster; "
        "global = one network for every asset, nothing per cluster",
    )
    training: Literal["background", "sync"] = Field(
        "background",
        description="background: a trainer thread learns while the engine values (the "
        "service); sync: steps run inline at deterministic points (backtests, tests)",
    )
    max_backlog: int = Field(
        4096,
        ge=1,
        description="queued samples per cluster beyond which a lagging background trainer "
        "subsamples (counted); bounds how stale a serving model can be",
    )
    catch_up_steps: int = Field(
        8,
        ge=1,
        description="a background trainer that is behind trains up to this many queued steps "
        "of a cluster as one larger step (each sample still once; cheaper per sample than "
        "subsampling); 1 = never merge",
    )
    asset_ttl: int = Field(
        0, ge=0, description="event-time ms after which an idle asset is forgotten; 0 = never"
    )
    detector: Literal["cross_sectional", "adwin", "page_hinkley", "kswin"] = Field(
        "cross_sectional",
        description="cross_sectional: a cluster's mean standardised error per event-time step "
        "(models/shocks.py); adwin, page_hinkley, kswin: river detectors on each event's error",
    )
    detector_params: dict[str, float] = Field(
        default_factory=dict, description="keyword arguments of the river detector, e.g. delta"
    )
    shock_rate: float = Field(
        0.002, gt=0, lt=1, description="cross_sectional: false-alarm rate per step on calm data"
    )
    shock_calibration: int = Field(
        250,
        ge=5,
        description="cross_sectional: a cluster's first steps (with min_assets), calibrating "
        "the threshold (per-event ADWIN watches meanwhile); shorter calibrations gave "
        "heavy-tailed panels (equities) low thresholds",
    )
    shock_calibration_max: int = Field(
        2000,
        ge=5,
        description="cross_sectional: the calibration keeps every judged step and is recomputed "
        "each time it doubles, up to this many steps (then frozen)",
    )
    shock_refractory: int = Field(10, ge=0, description="steps without a new alarm after one")
    shock_min_assets: int = Field(2, ge=1, description="assets a step needs to be judged")
    shock_step_ms: int = Field(
        0, ge=0, description="event-time bucket of a step; 0 = events sharing an event time"
    )
    drift_response: Literal["fast_learner", "boost", "none"] = Field(
        "fast_learner",
        description="on an alarm: fast_learner = a shadow copy at a higher lr, served only once "
        "it wins; boost = the cluster's lr raised (lr_boost, lr_half_life); none = count only",
    )
    persistence_expert: bool = Field(
        True, description="serve a combination of persistence and the model (models/experts.py)"
    )
    pooled_expert: bool = Field(
        True,
        description="pooling = cluster: once there are two clusters, one more network learns "
        "every cluster's samples and joins each cluster's expert mix (twice the learning work)",
    )
    combiner_eta: float = Field(10.0, gt=0, description="hedge learning rate per step")
    combiner_share: float = Field(0.001, ge=0, lt=1, description="fixed share per step")
    combiner_prior: float = Field(
        0.5,
        gt=0,
        le=1,
        description="initial and fixed-share weight of the learned experts (rest: persistence)",
    )
    combiner_delta: float = Field(0.25, gt=0, description="units: Huber delta of expert losses")
    combiner_gate_tstat: float = Field(
        3.0,
        ge=0,
        description="serve the learned change only while the t-statistic of its squared-error "
        "gain over persistence per step is above this (else persistence); 0 = always serve it",
    )
    combiner_gate_alpha: float = Field(
        0.005, gt=0, lt=1, description="EW weight of a step in that gain's mean and variance"
    )
    fast_lr_mult: float = Field(10.0, gt=0, description="fast learner's lr / lr")
    fast_shadow_steps: int = Field(5, ge=2, description="steps a fast learner is only scored")
    fast_min_tstat: float = Field(
        -2.0, lt=0, description="t-statistic of its loss minus the served loss needed to serve it"
    )
    fast_init_weight: float = Field(0.1, gt=0, lt=1, description="its weight once served")
    fast_max_steps: int = Field(60, ge=2, description="steps after which it is folded or retired")
    fast_fold_ratio: float = Field(
        0.9, gt=0, description="folded into the stable model if its loss ratio is below this"
    )
    lr_boost: float = Field(5.0, ge=1)
    lr_half_life: float = Field(50.0, gt=0, description="optimizer updates for the boost to halve")
    reset_moments_on_drift: bool = True
    drift_replay_fraction: float = Field(0.1, ge=0, lt=1)
    metrics_window: int = Field(500, ge=1)
    # -- robust valuations and prediction intervals ------------------------------------------
    scale: Literal["change", "level"] = Field(
        "change",
        description="per-asset unit of the model: change = robust mean |change| (default); "
        "level = running mean |value| (the engine before this setting)",
    )
    scale_horizon: int = Field(50, ge=1, description="events: EW mean |change| of an asset")
    scale_winsor: float = Field(5.0, gt=0, description="a change enters the scale clipped here")
    scale_floor: float = Field(1e-4, ge=0, description="unit >= scale_floor * |last value|")
    scale_prior_n: float = Field(
        10.0, ge=0, description="changes' worth of the peers' relative scale in a short history"
    )
    spike_guard: float = Field(
        50.0, ge=0, description="units: a larger change is held until the next value; 0 = off"
    )
    input_clip: float = Field(5.0, ge=0, description="units: a window step's change clip; 0 = off")
    change_clip: float = Field(8.0, ge=0, description="units: served change bound; 0 = off")
    loss: Literal["huber", "mse"] = "huber"
    huber_delta: float = Field(1.0, gt=0, description="units: Huber loss threshold")
    target_winsor: float = Field(5.0, ge=0, description="units: training target clip; 0 = off")
    interval_coverage: float = Field(0.9, gt=0, lt=1, description="valuation interval coverage")
    interval_gamma: float = Field(0.005, gt=0, description="ACI step per scored event")
    interval_cap: int = Field(50, ge=1, description="events an event-time step counts at most")
    interval_window: int = Field(2000, ge=20, description="conformity scores kept per cluster")
    interval_horizon: int = Field(20, ge=1, description="events: an asset's EW mean |error|")
    torch_threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads; small LSTMs gain nothing from more, and the "
        "broker client and the metrics server need the rest of the CPU; 0 = torch's default",
    )

    @model_validator(mode="after")
    def _ward_is_euclidean(self) -> EngineSettings:
        if self.linkage == "ward" and self.metric != "euclidean":
            raise ValueError("linkage 'ward' needs metric 'euclidean'")
        return self

    @model_validator(mode="after")
    def _recurrent_cells_have_layers(self) -> EngineSettings:
        if self.cell != "linear" and not self.hidden:
            raise ValueError(f"hidden: the {self.cell!r} cell needs at least one layer")
        return self

    @model_validator(mode="after")
    def _calibration_within_its_cap(self) -> EngineSettings:
        if self.shock_calibration_max < self.shock_calibration:
            raise ValueError(
                f"shock_calibration_max = {self.shock_calibration_max} must be at least "
                f"shock_calibration ({self.shock_calibration})"
            )
        return self

    @model_validator(mode="after")
    def _clusters_within_bounds(self) -> EngineSettings:
        k = self.n_clusters
        if k != "auto" and not 1 <= k <= self.max_clusters:
            raise ValueError(
                f"n_clusters = {k} must be 'auto' or within 1..max_clusters ({self.max_clusters})"
            )
        if k != "auto" and k > self.bootstrap_assets:
            raise ValueError(f"n_clusters = {k} needs bootstrap_assets >= {k}")
        return self


class MonitoringSettings(_Section):
    """Prometheus /metrics and health endpoints."""

    enabled: bool = True
    host: str = Field("127.0.0.1", description="loopback by default; containers set 0.0.0.0")
    port: int = Field(9108, ge=0, le=65535)
    stall_after_s: float = Field(
        60.0, gt=0, description="/readyz turns not ready when the poll loop is stuck this long"
    )


class LoggingSettings(_Section):
    """Structured logs on stderr."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "text"


class Settings(_Section):
    """All settings, one section per concern."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    def with_bootstrap(self, bootstrap: str) -> Settings:
        """A copy pointing at `bootstrap` (e.g. the local broker that was just started)."""
        kafka = self.kafka.model_copy(update={"bootstrap_servers": bootstrap})
        return self.model_copy(update={"kafka": kafka})

    def clusterings_topic(self) -> str:
        """The clusterings topic: `topics.clusterings`, else one named after the consumer group
        (as Kafka Streams names its internal topics after the application id)."""
        return self.topics.clusterings or f"{self.consumer.group_id}.clusterings"

    def profiles_topic(self) -> str:
        """The profiles topic: `topics.profiles`, else one named after the consumer group."""
        return self.topics.profiles or f"{self.consumer.group_id}.profiles"

    def training_samples_topic(self) -> str:
        """Labelled samples from valuers to learners: `topics.training_samples`, else one named
        after the consumer group."""
        return self.topics.training_samples or f"{self.consumer.group_id}.training-samples"

    def models_topic(self) -> str:
        """The cluster models' snapshots: `topics.models`, else one named after the group."""
        return self.topics.models or f"{self.consumer.group_id}.models"

    @model_validator(mode="after")
    def _split_roles_train_per_cluster(self) -> Settings:
        if self.consumer.role != "all" and self.engine.pooling != "cluster":
            raise ValueError(
                f"consumer.role={self.consumer.role!r} needs engine.pooling='cluster' (a learner "
                f"owns whole cluster models; {self.engine.pooling!r} shares one between clusters)"
            )
        return self


def _parse_scalar(text: str) -> Any:
    """Env and --set values: JSON when it parses (numbers, lists, objects), else the string."""
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _assign(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not key.startswith(
            ("kafka.client", "kafka.consumer", "kafka.producer")
        ):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Dotted keys from `STREAMVAL_SECTION__KEY` variables (and `KAFKA_BOOTSTRAP_SERVERS`)."""
    out: dict[str, Any] = {}
    if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        out["kafka.bootstrap_servers"] = environ["KAFKA_BOOTSTRAP_SERVERS"]
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"{name}: environment settings look like {ENV_PREFIX}SECTION__KEY, e.g. "
                f"{ENV_PREFIX}ENGINE__LR=0.002"
            )
        out[".".join(parts)] = _parse_scalar(raw)
    return out


def parse_set_flags(items: list[str]) -> dict[str, Any]:
    """`--set section.key=value` flags as dotted keys."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = _parse_scalar(value)
    return out


def load_settings(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge file, environment and flag overrides (in that order) and validate the result."""
    return load_settings_with_sources(path, environ=environ, overrides=overrides)[0]


def load_settings_with_sources(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Like `load_settings`, plus where each setting that is not a default came from:
    dotted key -> the config file's path, "environment" or "flags"."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    source: dict[str, str] = {}
    path = path or environ.get(ENV_PREFIX + "CONFIG") or None
    if path is not None:
        file = Path(path)
        try:
            with file.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        for key, value in _flatten(data).items():
            _assign(tree, key.split("."), value)
            source[key] = str(file)
    for origin, layer in (
        ("environment", env_overrides(environ)),
        ("flags", dict(overrides or {})),
    ):
        for key, value in layer.items():
            if value is None:
                continue
            _assign(tree, key.split("."), value)
            source[key] = origin
    try:
        return Settings.model_validate(tree), source
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            origin = next(
                (o for k, o in source.items() if key.startswith(k) or k.startswith(key)), ""
            )
            where = f" (from {origin})" if origin else ""
            message = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {message}{where}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


# Keys whose values are credentials: shown as "***" by `streamval config` and scrubbed from logs.
SECRET_MARKERS = ("password", "secret", "token", "credential", "sasl_oauth")
REDACTED = "***"


def is_secret(key: str) -> bool:
    """Whether a setting (its last dotted part) holds a credential."""
    name = key.rsplit(".", 1)[-1].lower()
    return any(marker in name for marker in SECRET_MARKERS)


def redact(tree: Any, prefix: str = "") -> Any:
    """A copy of a settings dump with every credential replaced by `REDACTED`."""
    if isinstance(tree, Mapping):
        return {
            k: (
                REDACTED
                if is_secret(f"{prefix}{k}") and v is not None
                else redact(v, f"{prefix}{k}.")
            )
            for k, v in tree.items()
        }
    return tree


def secret_values(settings: Settings) -> list[str]:
    """The credentials among the settings (for scrubbing logs)."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                key = f"{prefix}{k}"
                if is_secret(key) and isinstance(v, str | bytes) and v:
                    out.append(v.decode() if isinstance(v, bytes) else v)
                else:
                    walk(v, key + ".")

    walk(settings.model_dump(), "")
    return out


RECONNECT_BACKOFF_MAX_MS = 1000


def kafka_client_config(
    settings: Settings, role: Literal["consumer", "producer", "admin"]
) -> dict[str, Any]:
    """kafka-python keyword arguments for a client of `role`, bootstrap servers included."""
    if not settings.kafka.bootstrap_servers:
        raise ConfigError(
            "kafka.bootstrap_servers is not set: set KAFKA_BOOTSTRAP_SERVERS, or run "
            "`streamval kafka up` and use the address it prints"
        )
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers.split(","),
        # kafka-python lets its reconnect backoff grow to 30 s and applies it to metadata
        # refreshes too: after a broker outage a client stayed blind to the returned broker for
        # up to 30 s (longer than a short consumer.outage_timeout_s). 1 s is the Java client's
        # default ceiling. User settings below still override it.
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    if role == "admin":
        from kafka import KafkaAdminClient

        admin_keys = set(KafkaAdminClient.DEFAULT_CONFIG)
        config.update({k: v for k, v in settings.kafka.client.items() if k in admin_keys})
        return config
    config.update(settings.kafka.client)
    if role == "consumer":
        config.update(settings.kafka.consumer)
    elif role == "producer":
        config.update(settings.kafka.producer)
    return config
