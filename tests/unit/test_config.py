"""Settings: file < environment < flags, validated with the bad key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamval.config import kafka_client_config, load_settings, parse_set_flags
from streamval.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamval.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_design() -> None:
    s = load_settings(environ={})
    assert (s.topics.input, s.topics.dlq, s.topics.valuations, s.topics.metrics) == (
        "asset-events",
        "asset-events.dlq",
        "valuations",
        "valuation-metrics",
    )
    assert s.engine.hidden == [100, 50] and s.engine.seq_len == 12 and s.engine.lr == 1e-3
    assert s.engine.n_clusters == 3 and s.engine.detector == "cross_sectional"
    assert s.engine.drift_response == "fast_learner" and s.engine.persistence_expert
    assert s.engine.combiner_prior == 0.5
    assert s.monitoring.host == "127.0.0.1"


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "[engine]\nlr = 0.01\nseq_len = 6\nbatch_size = 8\n")
    env = {"STREAMVAL_ENGINE__LR": "0.02", "STREAMVAL_ENGINE__SEQ_LEN": "9"}
    s = load_settings(path, environ=env, overrides=parse_set_flags(["engine.lr=0.03"]))
    assert (s.engine.lr, s.engine.seq_len, s.engine.batch_size) == (0.03, 9, 8)


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[topics]\ninput = "in"\n')
    assert load_settings(environ={"STREAMVAL_CONFIG": str(path)}).topics.input == "in"


def test_kafka_bootstrap_env_and_passthrough() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "STREAMVAL_KAFKA__CLIENT__SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMVAL_KAFKA__CLIENT__SASL_MECHANISM": "PLAIN",
        "STREAMVAL_KAFKA__CONSUMER__FETCH_MAX_WAIT_MS": "100",
    }
    s = load_settings(environ=env)
    consumer = kafka_client_config(s, "consumer")
    assert consumer["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert consumer["security_protocol"] == "SASL_SSL" and consumer["fetch_max_wait_ms"] == 100
    assert "fetch_max_wait_ms" not in kafka_client_config(s, "producer")
    assert kafka_client_config(s, "admin")["sasl_mechanism"] == "PLAIN"


def test_reconnect_backoff_ceiling_is_short_by_default_and_overridable() -> None:
    """A client must see a returned broker within about a second, not kafka-python's 30 s."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092"}
    for role in ("consumer", "producer", "admin"):
        assert (
            kafka_client_config(load_settings(environ=env), role)[  # type: ignore[arg-type]
                "reconnect_backoff_max_ms"
            ]
            == 1000
        )
    env["STREAMVAL_KAFKA__CLIENT__RECONNECT_BACKOFF_MAX_MS"] = "5000"
    assert (
        kafka_client_config(load_settings(environ=env), "consumer")["reconnect_backoff_max_ms"]
        == 5000
    )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"overrides": {"engine.lr": -1}}, "engine.lr"),
        ({"overrides": {"engine.lr": "fast"}}, "engine.lr"),
        ({"overrides": {"engine.detector": "magic"}}, "engine.detector"),
        ({"overrides": {"engine.nope": 1}}, "engine.nope: unknown setting"),
        ({"overrides": {"nosection.x": 1}}, "nosection: unknown setting"),
        ({"environ": {"STREAMVAL_MONITORING__PORT": "99999"}}, "monitoring.port"),
        ({"environ": {"STREAMVAL_LR": "1"}}, "STREAMVAL_LR"),
        ({"overrides": {"kafka.client": {"sasl_mechanizm": "PLAIN"}}}, "sasl_mechanizm"),
    ],
)
def test_bad_settings_fail_fast_naming_the_key(kwargs: dict, needle: str) -> None:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_settings(**kwargs)


def test_error_says_where_the_value_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "[engine]\nbatch_size = 0\n")
    with pytest.raises(ConfigError, match=r"engine\.batch_size.*streamval\.toml"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match=r"engine\.batch_size.*environment"):
        load_settings(environ={"STREAMVAL_ENGINE__BATCH_SIZE": "0"})


def test_bad_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[engine\n"), environ={})
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        parse_set_flags(["engine.lr"])


def test_missing_bootstrap_is_explained() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        kafka_client_config(load_settings(environ={}), "consumer")


def test_ward_needs_euclidean() -> None:
    with pytest.raises(ConfigError, match=r"ward.*euclidean"):
        load_settings(environ={}, overrides={"engine.metric": "cosine"})
    s = load_settings(
        environ={}, overrides={"engine.metric": "cosine", "engine.linkage": "average"}
    )
    assert (s.engine.linkage, s.engine.metric) == ("average", "cosine")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            {"engine.n_clusters": 7},
            r"n_clusters = 7 must be 'auto' or within 1\.\.max_clusters \(6\)",
        ),
        ({"engine.n_clusters": 0}, r"n_clusters = 0"),
        ({"engine.n_clusters": 3, "engine.bootstrap_assets": 2}, r"bootstrap_assets >= 3"),
    ],
)
def test_cluster_count_must_be_reachable(overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(environ={}, overrides=overrides)
    raised = {**overrides, "engine.max_clusters": 8, "engine.bootstrap_assets": 30}
    if overrides.get("engine.n_clusters") == 7:
        assert load_settings(environ={}, overrides=raised).engine.n_clusters == 7
