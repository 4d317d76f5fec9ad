"""docker/: compose.yaml is a valid Compose file and every service agrees with the engine defaults.

No Docker engine runs in CI, so the stack is checked statically: the Compose JSON Schema, the
ports, listeners and topic names against `streamval.config` defaults, the Prometheus targets
against the engine service, and the Grafana provisioning against the dashboard.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml

from streamval.config import MonitoringSettings, TopicSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_SCHEMA = REPO.parent / "shared" / "schemas" / "compose-spec.json"
SERVICES = {"kafka", "topics", "engine", "replay", "prometheus", "grafana"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DOCKER / "compose.yaml")
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    return data


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (DOCKER / "grafana" / "dashboards" / "streamval.json").read_text()
    )
    return data


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    provisioning = load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    (ds,) = provisioning["datasources"]
    result: dict[str, Any] = ds
    return result


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def published_ports(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes ("host:container" strings)."""
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}


def network_ports(service: dict[str, Any]) -> set[int]:
    """Container ports reachable inside the compose network (published or exposed)."""
    return published_ports(service) | {int(str(p)) for p in service.get("expose", [])}


def test_only_loopback_is_published_and_no_metrics_port_at_all(
    services: dict[str, Any],
) -> None:
    """Issue 10 item 8: nothing listens on every host interface; metrics stay in the network."""
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), (name, mapping)
    assert not services["engine"].get("ports") and not services["replay"].get("ports")


def scrape_targets(config: dict[str, Any], job: str) -> list[str]:
    (scrape,) = [s for s in config["scrape_configs"] if s["job_name"] == job]
    return [t for sc in scrape["static_configs"] for t in sc["targets"]]


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (resolved against docker/) of the service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            out[target] = (DOCKER / source).resolve()
    return out


def iter_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.extend(panel.get("panels", []) if panel.get("type") == "row" else [panel])
    return out


# -- compose -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    """The Compose spec is draft-07 (its `$schema` URL lacks the `#` that jsonschema keys on)."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_validates_against_the_compose_spec(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    compose_validator.validate(compose)


def test_schema_validation_catches_mistakes(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["engine"]["depends_on"]["topics"]["condition"] = "service_finished"
    with pytest.raises(jsonschema.ValidationError):
        compose_validator.validate(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["engine"]["portz"] = ["9108:9108"]
    with pytest.raises(jsonschema.ValidationError):
        compose_validator.validate(broken)


def test_all_services_are_there(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_kafka_is_a_single_kraft_node_reachable_as_the_engine_expects(
    services: dict[str, Any],
) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    e = env(kafka)
    assert set(e["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(entry.split("://") for entry in e["KAFKA_LISTENERS"].split(","))
    advertised = dict(entry.split("://") for entry in e["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert e["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert e["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    protocols = dict(
        entry.split(":") for entry in e["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocols)
    # every client of the broker uses the advertised in-network listener
    internal = advertised[e["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    host, port = internal.split(":")
    assert host == "kafka" and listeners[e["KAFKA_INTER_BROKER_LISTENER_NAME"]] == f":{port}"
    for name in ("topics", "engine", "replay"):
        assert env(services[name])["KAFKA_BOOTSTRAP_SERVERS"] == internal, name
    voter_id, voter = e["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert voter_id == str(e["KAFKA_NODE_ID"])
    assert f":{voter.split(':')[1]}" == listeners[e["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    # a single node needs its internal topics at replication 1
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
    ):
        assert e[key] == "1", key
    assert e["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    # the host listener is published and advertised as localhost
    host_listener = next(k for k, v in advertised.items() if v.startswith("localhost:"))
    assert int(advertised[host_listener].split(":")[1]) in published_ports(kafka)
    assert "healthcheck" in kafka


def test_topics_come_from_the_engine_defaults(services: dict[str, Any]) -> None:
    topics = TopicSettings()
    assert services["topics"]["command"] == ["kafka", "topics"]  # creates TopicSettings' topics
    for name, service in services.items():
        overrides = {k: v for k, v in env(service).items() if k.startswith("STREAMVAL_TOPICS__")}
        assert not overrides, f"{name} overrides topic settings: {overrides}"
    assert env(services["kafka"])["KAFKA_NUM_PARTITIONS"] == str(topics.partitions)
    assert env(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # documentation inside the stack names the same topics
    assert topics.dlq in (DOCKER / "prometheus" / "alerts.yml").read_text()
    compose_text = (DOCKER / "compose.yaml").read_text()
    for topic in (topics.input, topics.dlq, topics.valuations, topics.metrics):
        assert topic in compose_text


def test_streamval_services_depend_on_topic_creation(services: dict[str, Any]) -> None:
    for name in ("engine", "replay"):
        assert (
            services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        )
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["topics", "engine", "replay"])
def test_streamval_environment_is_valid_settings(services: dict[str, Any], name: str) -> None:
    settings = load_settings(environ=env(services[name]))
    assert settings.kafka.bootstrap_servers == "kafka:9092"


def test_engine_service(services: dict[str, Any]) -> None:
    engine = services["engine"]
    assert engine["command"][0] == "run" and "--instance-id" in engine["command"]
    settings = load_settings(environ=env(engine))
    assert settings.monitoring.host == "0.0.0.0"
    assert settings.monitoring.port == MonitoringSettings().port
    assert MonitoringSettings().port in network_ports(engine)
    assert settings.consumer.checkpoint_dir is not None
    assert engine["build"]["dockerfile"] == "docker/Dockerfile"
    assert (
        DOCKER / engine["build"]["context"] / engine["build"]["dockerfile"]
    ).resolve() == DOCKER / "Dockerfile"


def test_replay_service(services: dict[str, Any], prometheus_config: dict[str, Any]) -> None:
    replay = services["replay"]
    command = replay["command"]
    assert command[0] == "replay"
    assert command[command.index("--dataset") + 1] == "credit"
    assert "--shock" not in command  # the credit book carries the month-18 tightening itself
    # Fed rate changes from the data folder mounted read-only, by default the one beside the clone.
    folder = command[command.index("--markers") + 1]
    host, target, mode = replay["volumes"][0].rsplit(":", 2)
    assert (target, mode) == (folder, "ro")
    assert host == "${STREAMVAL_DATA_DIR:-../../shared/data}"
    assert (DOCKER / "../../shared/data").resolve() == (REPO.parent / "shared" / "data").resolve()
    port = int(command[command.index("--metrics-port") + 1])
    settings = load_settings(environ=env(replay))
    assert settings.monitoring.host == "0.0.0.0"
    assert port != MonitoringSettings().port
    assert port in network_ports(replay)
    assert scrape_targets(prometheus_config, "streamval-replay") == [f"replay:{port}"]
    assert replay["depends_on"]["engine"]["condition"] == "service_healthy"


# -- prometheus ----------------------------------------------------------------------------


def test_prometheus_scrapes_the_engine_service(
    services: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    (target,) = scrape_targets(prometheus_config, "streamval-engine")
    host, port = target.split(":")
    assert host == "engine" and host in services
    assert (
        int(port)
        == MonitoringSettings().port
        == load_settings(environ=env(services["engine"])).monitoring.port
    )


def test_prometheus_service_mounts_its_config(
    services: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    prom = services["prometheus"]
    mounts = bind_mounts(prom)
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = Path(config_flag.split("=", 1)[1])
    assert mounts[str(config_path.parent)] == DOCKER / "prometheus"
    assert (DOCKER / "prometheus" / config_path.name).exists()
    for rule_file in prometheus_config["rule_files"]:
        assert (DOCKER / "prometheus" / rule_file).exists(), rule_file
    assert 9090 in published_ports(prom)


# -- grafana -------------------------------------------------------------------------------


def test_grafana_datasource_points_at_the_prometheus_service(
    services: dict[str, Any], datasource: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    match = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"])
    assert match, datasource["url"]
    assert match.group(1) in services and services[match.group(1)]["image"].startswith(
        "prom/prometheus"
    )
    assert int(match.group(2)) in published_ports(services["prometheus"])
    assert datasource["jsonData"]["timeInterval"] == prometheus_config["global"]["scrape_interval"]


def test_grafana_provisioning_mounts(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == DOCKER / "grafana" / "provisioning"
    providers = load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "streamval.yml")[
        "providers"
    ]
    (provider,) = providers
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == DOCKER / "grafana" / "dashboards"
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (DOCKER / "grafana" / "dashboards" / Path(home).name).exists()


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "streamval"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36


def test_every_panel_uses_the_provisioned_datasource_and_has_promql(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    panels = iter_panels(dashboard)
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"]["uid"] == datasource["uid"], title
        targets = panel.get("targets", [])
        assert targets, f"{title} has no query"
        for target in targets:
            assert target["expr"].strip(), title
            assert target.get("datasource", panel["datasource"])["uid"] == datasource["uid"], title
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, title


def test_dashboard_covers_the_required_views(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for p in iter_panels(dashboard) for t in p["targets"])
    for metric in (
        "streamval_events_consumed_total",  # throughput
        "streamval_cluster_mae",  # per-cluster errors
        "streamval_cluster_learning_rate",
        "streamval_consumer_lag_messages",
        "streamval_processing_latency_seconds_bucket",
        "streamval_dead_letters_total",
        "streamval_cluster_assets",
        "streamval_last_checkpoint_timestamp_seconds",
        "streamval_broker_reachable",  # reliability (issue 10)
        "streamval_send_failures_total",
        "streamval_dead_letters_truncated_total",
        "streamval_expired_assets_total",
        "streamval_checkpoint_pause_seconds_bucket",
    ):
        assert metric in exprs, metric
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def test_annotations_for_drift_alarms_and_replay_markers(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    annotations = {a["name"]: a for a in dashboard["annotations"]["list"]}
    drift, markers = annotations["Drift alarms"], annotations["Replay markers"]
    for annotation in (drift, markers):
        assert annotation["datasource"]["uid"] == datasource["uid"]
        assert annotation["enable"] is True
    assert "streamval_drift_alarms_total" in drift["expr"]
    assert "streamval_replay_last_marker_timestamp_seconds" in markers["expr"]
    assert markers["useValueForTime"] is True  # placed at the time the replay crossed the marker
    assert "{{name}}" in markers["titleFormat"]


# -- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile() -> None:
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert re.fullmatch(r"FROM python:3\.\d+-slim", instructions[0])
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["streamval"]' in instructions
    assert f"EXPOSE {MonitoringSettings().port}" in instructions
    assert any(line.startswith("RUN pip install .") for line in instructions)
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and "!src/" in ignore and "!pyproject.toml" in ignore
