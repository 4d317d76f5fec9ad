"""EngineMetrics, ReplayMetrics and MetricsServer: names, labels, series lifecycle, endpoints."""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streamval import __version__
from streamval.config import MonitoringSettings
from streamval.monitoring import EngineMetrics, LearnerMetrics, MetricsServer, ReplayMetrics
from streamval.monitoring.metrics import KNOWN_DETECTORS
from streamval.stream.contract.outputs import (
    ClusteringStats,
    ClusterSnapshot,
    DriftAlarm,
    ErrorStats,
)

ALLOWED_LABELS = {"cluster", "partition", "reason", "detector", "window", "kind", "name", "version"}


def snapshot(
    cluster: int,
    *,
    updates: int = 10,
    assets: int = 40,
    lr: float = 1e-3,
    rolling_mae: float | None = 0.5,
    total_mae: float | None = 0.4,
    drift_alarms: int = 0,
    skipped: int = 0,
    silhouette: float | None = 0.6,
    clustering: ClusteringStats | None = None,
) -> ClusterSnapshot:
    def stats(mae: float | None, n: int) -> ErrorStats:
        if mae is None:
            return ErrorStats(n=0, mae=None, rmse=None, r2=None)
        return ErrorStats(n=n, mae=mae, rmse=mae * 1.3, r2=0.8)

    return ClusterSnapshot(
        cluster=cluster,
        ts_ms=1_700_000_000_000,
        assets=assets,
        rolling=stats(rolling_mae, 500),
        total=stats(total_mae, 5000),
        drift_alarms=drift_alarms,
        lr=lr,
        updates=updates,
        model_version=updates,
        skipped_samples=skipped,
        silhouette=silhouette,
        clustering=clustering or ClusteringStats(clusters=2, fits=1, silhouette=0.55),
    )


def exercised_engine_metrics() -> EngineMetrics:
    """An EngineMetrics on which every method has been called at least once."""
    m = EngineMetrics()
    for partition in range(3):
        m.consumed(partition, 100)
        m.consumer_lag(partition, 42)
    m.dead_lettered("invalid_json", 2)
    m.dead_lettered("late")
    m.duplicates(3)
    m.update_clusters([snapshot(0), snapshot(1, rolling_mae=None, total_mae=None)])
    m.published(0, 90)
    m.published(1, 10)
    m.drift_alarm(
        DriftAlarm(cluster=0, detector="adwin", ts_ms=1, error_before=0.1, error_after=0.4, lr=5e-3)
    )
    m.processing_latency(0.012)
    m.event_time_lag(3 * 365 * 86_400.0)
    m.checkpoint_written(1_700_000_000.0)
    m.batch(0.05, 250)
    m.pooled_model(queued=0, trained=320, skipped=0)
    return m


def exercised_learner_metrics() -> LearnerMetrics:
    """A LearnerMetrics on which every method but `identify` has been called at least once."""
    m = LearnerMetrics()
    m.received(300)
    m.trained(256, 2)
    m.published(2)
    m.rejected("version")
    m.late(4)
    m.lag(1, 17)
    m.update_clusters([snapshot(0), snapshot(1, rolling_mae=None, total_mae=None)])
    m.drift_alarm(
        DriftAlarm(cluster=0, detector="adwin", ts_ms=1, error_before=0.1, error_after=0.4, lr=5e-3)
    )
    return m


def exercised_replay_metrics() -> ReplayMetrics:
    m = ReplayMetrics()
    m.produced(1000)
    m.marker("FOMC +75bp", kind="policy", event_ts_ms=1_655_251_200_000)
    return m


def families(registry: CollectorRegistry) -> list[prometheus_client.Metric]:
    text = prometheus_client.generate_latest(registry).decode()
    return list(text_string_to_metric_families(text))


def sample_names(registry: CollectorRegistry) -> set[str]:
    return {s.name for f in families(registry) for s in f.samples}


def value(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


# -- names and labels ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [exercised_engine_metrics, exercised_learner_metrics, exercised_replay_metrics]
)
def test_names_follow_prometheus_conventions(make: object) -> None:
    registry = make().registry  # type: ignore[operator]
    fams = families(registry)
    assert fams
    for fam in fams:
        assert fam.name.startswith("streamval_"), fam.name
        names = {s.name for s in fam.samples}
        if fam.type == "counter":
            assert f"{fam.name}_total" in names, fam.name
        else:
            assert not fam.name.endswith("_total"), f"{fam.type} {fam.name} must not end in _total"
        if fam.type == "histogram":
            assert fam.name.endswith(("_seconds", "_events")), fam.name
        if "timestamp" in fam.name:
            assert fam.type == "gauge" and fam.name.endswith("_timestamp_seconds"), fam.name
        for forbidden in ("_milliseconds", "_ms", "_minutes", "_hours"):
            assert forbidden not in fam.name, fam.name


@pytest.mark.parametrize(
    "make", [exercised_engine_metrics, exercised_learner_metrics, exercised_replay_metrics]
)
def test_labels_are_bounded_and_never_asset_id(make: object) -> None:
    registry = make().registry  # type: ignore[operator]
    seen: set[str] = set()
    for fam in families(registry):
        for sample in fam.samples:
            seen |= set(sample.labels) - {"le"}
    assert "asset_id" not in seen
    assert seen <= ALLOWED_LABELS, seen - ALLOWED_LABELS


def test_expected_engine_metrics_are_exported() -> None:
    names = sample_names(exercised_engine_metrics().registry)
    expected = {
        "streamval_build_info",
        "streamval_events_consumed_total",
        "streamval_dead_letters_total",
        "streamval_duplicate_events_total",
        "streamval_valuations_published_total",
        "streamval_cluster_mae",
        "streamval_cluster_rmse",
        "streamval_cluster_r2",
        "streamval_cluster_error_samples",
        "streamval_cluster_learning_rate",
        "streamval_cluster_assets",
        "streamval_cluster_model_version",
        "streamval_cluster_model_updates_total",
        "streamval_cluster_skipped_samples_total",
        "streamval_cluster_drift_alarms",
        "streamval_drift_alarms_total",
        "streamval_processing_latency_seconds_bucket",
        "streamval_event_time_lag_seconds_bucket",
        "streamval_consumer_lag_messages",
        "streamval_last_checkpoint_timestamp_seconds",
        "streamval_batch_duration_seconds_bucket",
        "streamval_batch_events_bucket",
        "streamval_cluster_silhouette",
        "streamval_clustering_silhouette",
        "streamval_clustering_churn_ratio",
        "streamval_clustering_fits_total",
        "streamval_clustering_switches_total",
    }
    assert expected <= names, expected - names


def test_build_info_carries_version() -> None:
    assert value(EngineMetrics().registry, "streamval_build_info", version=__version__) == 1.0
    assert (
        value(EngineMetrics(version="9.9.9").registry, "streamval_build_info", version="9.9.9")
        == 1.0
    )
    assert value(ReplayMetrics().registry, "streamval_build_info", version=__version__) == 1.0


def test_instances_have_their_own_registries() -> None:
    a, b = EngineMetrics(), EngineMetrics()
    a.consumed(0, 5)
    assert value(a.registry, "streamval_events_consumed_total", partition="0") == 5.0
    assert value(b.registry, "streamval_events_consumed_total", partition="0") is None
    assert "streamval_events_consumed_total" not in sample_names(prometheus_client.REGISTRY)


# -- semantics -----------------------------------------------------------------------------


def test_counters_count() -> None:
    m = EngineMetrics()
    m.consumed(1)
    m.consumed(1, 4)
    m.dead_lettered("late", 2)
    m.duplicates()
    m.published(2, 7)
    r = m.registry
    assert value(r, "streamval_events_consumed_total", partition="1") == 5.0
    assert value(r, "streamval_dead_letters_total", reason="late") == 2.0
    assert value(r, "streamval_duplicate_events_total") == 1.0
    assert value(r, "streamval_valuations_published_total", cluster="2") == 7.0


def test_partition_series_removed_after_revoke() -> None:
    m = EngineMetrics()
    for partition in (0, 1, 2):
        m.consumed(partition, 10)
        m.consumer_lag(partition, 100 + partition)
    m.partitions_revoked([0, 2, 7])  # 7 was never owned: ignored
    r = m.registry
    for gone in ("0", "2"):
        assert value(r, "streamval_events_consumed_total", partition=gone) is None
        assert value(r, "streamval_consumer_lag_messages", partition=gone) is None
    assert value(r, "streamval_events_consumed_total", partition="1") == 10.0
    assert value(r, "streamval_consumer_lag_messages", partition="1") == 101.0
    exposition = prometheus_client.generate_latest(r).decode()
    assert 'partition="0"' not in exposition and 'partition="2"' not in exposition


def test_update_clusters_sets_gauges_and_drops_missing_errors() -> None:
    m = EngineMetrics()
    m.update_clusters(
        [snapshot(0, lr=5e-3, assets=12, rolling_mae=0.7, total_mae=0.3, drift_alarms=2)]
    )
    r = m.registry
    assert value(r, "streamval_cluster_mae", cluster="0", window="rolling") == 0.7
    assert value(r, "streamval_cluster_mae", cluster="0", window="total") == 0.3
    assert value(r, "streamval_cluster_rmse", cluster="0", window="rolling") == pytest.approx(0.91)
    assert value(r, "streamval_cluster_r2", cluster="0", window="total") == 0.8
    assert value(r, "streamval_cluster_error_samples", cluster="0", window="rolling") == 500
    assert value(r, "streamval_cluster_learning_rate", cluster="0") == 5e-3
    assert value(r, "streamval_cluster_assets", cluster="0") == 12
    assert value(r, "streamval_cluster_drift_alarms", cluster="0") == 2
    # the rolling window emptied (e.g. a re-fit): no NaN, no series
    m.update_clusters([snapshot(0, rolling_mae=None)])
    assert value(r, "streamval_cluster_mae", cluster="0", window="rolling") is None
    assert value(r, "streamval_cluster_error_samples", cluster="0", window="rolling") == 0
    assert "NaN" not in prometheus_client.generate_latest(r).decode()


def test_model_updates_mirror_engine_totals() -> None:
    m = EngineMetrics()
    r = m.registry
    m.update_clusters([snapshot(0, updates=10)])
    assert value(r, "streamval_cluster_model_updates_total", cluster="0") == 10
    m.update_clusters([snapshot(0, updates=25)])
    assert value(r, "streamval_cluster_model_updates_total", cluster="0") == 25
    m.update_clusters([snapshot(0, updates=25)])
    assert value(r, "streamval_cluster_model_updates_total", cluster="0") == 25
    # restored from an older checkpoint: the counter restarts rather than going negative
    m.update_clusters([snapshot(0, updates=4)])
    assert value(r, "streamval_cluster_model_updates_total", cluster="0") == 4


def test_clustering_series_follow_the_snapshots() -> None:
    m = EngineMetrics()
    r = m.registry
    stats = ClusteringStats(clusters=2, fits=3, silhouette=0.7, churn=0.01, switches=5)
    m.update_clusters([snapshot(0, silhouette=0.8, clustering=stats), snapshot(1, silhouette=None)])
    assert value(r, "streamval_cluster_silhouette", cluster="0") == 0.8
    assert value(r, "streamval_cluster_silhouette", cluster="1") is None  # no NaN series
    assert value(r, "streamval_clustering_silhouette") == 0.7
    assert value(r, "streamval_clustering_churn_ratio") == 0.01
    assert value(r, "streamval_clustering_fits_total") == 3
    assert value(r, "streamval_clustering_switches_total") == 5
    later = ClusteringStats(clusters=2, fits=4, silhouette=0.6, churn=0.0, switches=9)
    m.update_clusters([snapshot(0, clustering=later)])
    assert value(r, "streamval_clustering_fits_total") == 4
    assert value(r, "streamval_clustering_switches_total") == 9
    assert value(r, "streamval_clustering_churn_ratio") == 0.0
    # restored from an older checkpoint: the counters restart rather than going negative
    m.update_clusters([snapshot(0, clustering=ClusteringStats(fits=1))])
    assert value(r, "streamval_clustering_fits_total") == 1
    m.retire_clusters([0])
    assert value(r, "streamval_cluster_silhouette", cluster="0") is None


def test_skipped_samples_mirror_engine_totals_and_start_at_zero() -> None:
    m = EngineMetrics()
    r = m.registry
    m.update_clusters([snapshot(0)])
    assert value(r, "streamval_cluster_skipped_samples_total", cluster="0") == 0
    m.update_clusters([snapshot(0, skipped=128)])
    m.update_clusters([snapshot(0, skipped=384)])
    assert value(r, "streamval_cluster_skipped_samples_total", cluster="0") == 384


def test_the_pooled_models_samples_are_absent_until_reported() -> None:
    m = EngineMetrics()
    r = m.registry
    assert value(r, "streamval_pooled_model_samples", kind="trained") is None
    m.pooled_model(queued=12, trained=640, skipped=64)
    kinds = ("queued", "trained", "skipped")
    got = [value(r, "streamval_pooled_model_samples", kind=k) for k in kinds]
    assert got == [12, 640, 64]


def test_drift_counters_exist_at_zero_before_the_first_alarm() -> None:
    m = EngineMetrics()
    r = m.registry
    m.update_clusters([snapshot(0), snapshot(1)])
    for cluster in ("0", "1"):
        for detector in KNOWN_DETECTORS:
            assert (
                value(r, "streamval_drift_alarms_total", cluster=cluster, detector=detector) == 0.0
            )
        assert value(r, "streamval_valuations_published_total", cluster=cluster) == 0.0
    m.drift_alarm(
        DriftAlarm(cluster=1, detector="adwin", ts_ms=5, error_before=0.1, error_after=0.5, lr=5e-3)
    )
    assert value(r, "streamval_drift_alarms_total", cluster="1", detector="adwin") == 1.0
    assert value(r, "streamval_drift_alarms_total", cluster="0", detector="adwin") == 0.0
    assert set(KNOWN_DETECTORS) == {"cross_sectional", "adwin", "page_hinkley", "kswin"}


def test_retired_clusters_lose_their_gauges_at_once_and_their_counters_later() -> None:
    m = EngineMetrics(retired_ttl_s=60.0)
    r = m.registry
    m.update_clusters([snapshot(0), snapshot(1, updates=4)])
    m.published(1, 3)
    m.drift_alarm(
        DriftAlarm(cluster=1, detector="adwin", ts_ms=5, error_before=0.1, error_after=0.5, lr=5e-3)
    )
    m.retire_clusters([1])
    # Gauges of a cluster that is gone would freeze their last value: removed at once.
    for gauge in ("streamval_cluster_mae", "streamval_cluster_learning_rate"):
        assert f'{gauge}{{cluster="1"' not in exposition(r)
    assert value(r, "streamval_cluster_mae", cluster="0", window="rolling") == 0.5
    # Counters keep their final values for a scrape and for increase() windows.
    m.update_clusters([snapshot(0)])
    assert value(r, "streamval_valuations_published_total", cluster="1") == 3
    assert value(r, "streamval_drift_alarms_total", cluster="1", detector="adwin") == 1
    assert value(r, "streamval_cluster_model_updates_total", cluster="1") == 4


def test_retired_cluster_counters_go_after_the_grace_period() -> None:
    m = EngineMetrics(retired_ttl_s=0.0)
    r = m.registry
    m.update_clusters([snapshot(0), snapshot(1)])
    m.published(1, 3)
    m.retire_clusters([1])
    assert 'cluster="1"' not in exposition(r)
    assert value(r, "streamval_cluster_mae", cluster="0", window="rolling") == 0.5
    # A cluster id seen again (ids are not reused by the engine, but a restore may bring one
    # back) starts afresh.
    m.update_clusters([snapshot(1, updates=3)])
    assert value(r, "streamval_cluster_model_updates_total", cluster="1") == 3
    assert value(r, "streamval_valuations_published_total", cluster="1") == 0


def exposition(registry: prometheus_client.CollectorRegistry) -> str:
    return prometheus_client.generate_latest(registry).decode()


def test_histograms_cover_their_ranges() -> None:
    m = EngineMetrics()
    r = m.registry
    m.event_time_lag(3 * 365 * 86_400.0)  # a replay of three-year-old history
    m.event_time_lag(-2.0)  # clock skew: counted as 0
    m.processing_latency(0.003)
    m.batch(0.2, 500)
    five_years, two_years = (
        "1.5768e+08",
        "6.3072e+07",
    )  # 5 and 2 years, as the exposition writes them
    assert value(r, "streamval_event_time_lag_seconds_bucket", le=five_years) == 2.0
    assert value(r, "streamval_event_time_lag_seconds_bucket", le=two_years) == 1.0
    assert value(r, "streamval_processing_latency_seconds_bucket", le="0.005") == 1.0
    assert value(r, "streamval_batch_events_bucket", le="500.0") == 1.0
    assert value(r, "streamval_batch_events_bucket", le="250.0") == 0.0
    assert value(r, "streamval_batch_duration_seconds_sum") == pytest.approx(0.2)


def test_checkpoint_time() -> None:
    m = EngineMetrics()
    m.checkpoint_written(1_700_000_123.5)
    assert value(m.registry, "streamval_last_checkpoint_timestamp_seconds") == 1_700_000_123.5
    before = time.time()
    m.checkpoint_written()
    got = value(m.registry, "streamval_last_checkpoint_timestamp_seconds")
    assert got is not None and before <= got <= time.time()


def test_replay_markers_keep_one_series_per_kind() -> None:
    m = ReplayMetrics()
    r = m.registry
    m.produced(10)
    m.marker("FOMC +25bp", kind="policy", event_ts_ms=1_647_388_800_000)
    m.marker("COVID crash", kind="crash", event_ts_ms=1_584_316_800_000)
    m.marker("FOMC +50bp", kind="policy", event_ts_ms=1_651_622_400_000)
    assert value(r, "streamval_replay_events_produced_total") == 10
    assert value(r, "streamval_replay_markers_total", kind="policy") == 2
    assert value(r, "streamval_replay_markers_total", kind="crash") == 1
    event_time = "streamval_replay_last_marker_event_timestamp_seconds"
    assert value(r, event_time, kind="policy", name="FOMC +25bp") is None
    assert value(r, event_time, kind="policy", name="FOMC +50bp") == 1_651_622_400.0
    assert value(r, event_time, kind="crash", name="COVID crash") == 1_584_316_800.0
    wall = value(
        r, "streamval_replay_last_marker_timestamp_seconds", kind="policy", name="FOMC +50bp"
    )
    assert wall is not None and abs(wall - time.time()) < 60
    gauges = [s for f in families(r) if f.name == event_time for s in f.samples]
    assert len(gauges) == 2


# -- promtool ------------------------------------------------------------------------------


@pytest.mark.prometheus
@pytest.mark.parametrize(
    "make", [exercised_engine_metrics, exercised_learner_metrics, exercised_replay_metrics]
)
def test_promtool_check_metrics_is_clean(make: object) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package `prometheus`); it is required")
    text = prometheus_client.generate_latest(make().registry)  # type: ignore[operator]
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "", proc.stdout.decode()


@pytest.mark.prometheus
def test_promtool_check_metrics_catches_a_bad_name() -> None:
    """The lint above can fail: a gauge ending in _total is reported."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package `prometheus`); it is required")
    registry = CollectorRegistry()
    prometheus_client.Gauge(
        "streamval_things_total", "A gauge misnamed as a counter.", registry=registry
    )
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=prometheus_client.generate_latest(registry),
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert b"_total" in proc.stdout + proc.stderr


# -- endpoints -----------------------------------------------------------------------------


def get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    metrics = exercised_engine_metrics()
    state = {"ready": False, "reason": "restoring checkpoint"}
    srv = MetricsServer(
        metrics.registry, port=0, ready=lambda: (bool(state["ready"]), str(state["reason"]))
    )
    srv.state = state  # type: ignore[attr-defined]
    with srv:
        yield srv


def test_server_picks_a_free_port(server: MetricsServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_metrics_endpoint_serves_text_format(server: MetricsServer) -> None:
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type
    assert 'streamval_events_consumed_total{partition="0"} 100.0' in body
    assert "asset_id=" not in body
    parsed = {f.name for f in text_string_to_metric_families(body)}
    assert {"streamval_events_consumed", "streamval_cluster_mae", "streamval_build_info"} <= parsed


def test_metrics_endpoint_negotiates_openmetrics(server: MetricsServer) -> None:
    status, content_type, body = get(
        server.port, "/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_healthz(server: MetricsServer) -> None:
    assert get(server.port, "/healthz")[0::2] == (200, "ok\n")


def test_readyz_follows_the_callback(server: MetricsServer) -> None:
    assert get(server.port, "/readyz")[0::2] == (503, "restoring checkpoint\n")
    server.state.update(ready=True, reason="")  # type: ignore[attr-defined]
    assert get(server.port, "/readyz")[0::2] == (200, "ready\n")


def test_readyz_without_callback_and_with_a_failing_one() -> None:
    with MetricsServer(CollectorRegistry(), port=0) as srv:
        assert get(srv.port, "/readyz")[0] == 200

    def broken() -> tuple[bool, str]:
        raise RuntimeError("consumer gone")

    with MetricsServer(CollectorRegistry(), port=0, ready=broken) as srv:
        status, _, body = get(srv.port, "/readyz")
        assert status == 503 and "consumer gone" in body
        assert get(srv.port, "/healthz")[0] == 200


def test_unknown_path_is_404(server: MetricsServer) -> None:
    assert get(server.port, "/nope")[0] == 404


def test_stop_releases_the_port() -> None:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    port = srv.port
    assert get(port, "/healthz")[0] == 200
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with socket.socket() as sock:  # the port can be bound again
        sock.bind(("127.0.0.1", port))


def test_default_port_is_the_monitoring_setting() -> None:
    assert MetricsServer(CollectorRegistry()).port == MonitoringSettings().port == 9108


def test_interval_gauges_and_dropped_features_follow_the_snapshots() -> None:
    from dataclasses import replace

    m = EngineMetrics()
    r = m.registry
    m.update_clusters([snapshot(0)])  # no interval yet: no gauge, counter at 0
    assert value(r, "streamval_cluster_interval_coverage", cluster="0") is None
    assert value(r, "streamval_cluster_dropped_feature_values_total", cluster="0") == 0
    served = replace(
        snapshot(0), interval_coverage=0.91, interval_width=3.2, dropped_feature_values=7
    )
    m.update_clusters([served])
    assert value(r, "streamval_cluster_interval_coverage", cluster="0") == 0.91
    assert value(r, "streamval_cluster_interval_width", cluster="0") == 3.2
    assert value(r, "streamval_cluster_dropped_feature_values_total", cluster="0") == 7
    m.retire_clusters([0])
    assert value(r, "streamval_cluster_interval_coverage", cluster="0") is None


# -- the valuer/learner split ----------------------------------------------------------------


def test_a_valuer_exports_no_cluster_series_but_its_valuations_by_cluster() -> None:
    m = EngineMetrics(cluster_series=False)
    m.update_clusters([snapshot(0, drift_alarms=2), snapshot(1)])
    m.published(0, 5)
    m.drift_alarm(
        DriftAlarm(cluster=0, detector="adwin", ts_ms=1, error_before=0.1, error_after=0.4, lr=5e-3)
    )
    cluster_labelled = {
        f.name.removesuffix("_created")
        for f in families(m.registry)
        if any("cluster" in sample.labels for sample in f.samples)
    }
    assert cluster_labelled == {"streamval_valuations_published"}
    assert value(m.registry, "streamval_valuations_published_total", cluster="1") == 0.0
    assert value(m.registry, "streamval_clustering_silhouette") == 0.55  # process-wide: kept


def test_a_learner_exports_its_clusters_under_the_engines_names_and_retires_moved_ones() -> None:
    learner, engine = LearnerMetrics(retired_ttl_s=0.0), EngineMetrics()
    snaps = [snapshot(0, drift_alarms=1, updates=7), snapshot(3, rolling_mae=None)]
    learner.update_clusters(snaps)
    engine.update_clusters(snaps)
    for name, labels in [
        ("streamval_cluster_mae", {"cluster": "0", "window": "rolling"}),
        ("streamval_cluster_rmse", {"cluster": "0", "window": "total"}),
        ("streamval_cluster_r2", {"cluster": "3", "window": "total"}),
        ("streamval_cluster_error_samples", {"cluster": "3", "window": "rolling"}),
        ("streamval_cluster_learning_rate", {"cluster": "0"}),
        ("streamval_cluster_assets", {"cluster": "3"}),
        ("streamval_cluster_model_version", {"cluster": "0"}),
        ("streamval_cluster_model_updates_total", {"cluster": "0"}),
        ("streamval_cluster_drift_alarms", {"cluster": "0"}),
        ("streamval_drift_alarms_total", {"cluster": "3", "detector": "adwin"}),
    ]:
        got = learner.registry.get_sample_value(name, labels)
        assert got is not None and got == engine.registry.get_sample_value(name, labels), name
    rolling_3 = {"cluster": "3", "window": "rolling"}
    assert learner.registry.get_sample_value("streamval_cluster_mae", rolling_3) is None
    assert value(learner.registry, "streamval_learner_clusters") == 2
    learner.retire_clusters([3])  # moved to another learner
    learner.update_clusters(snaps[:1])
    assert value(learner.registry, "streamval_cluster_assets", cluster="3") is None
    assert value(learner.registry, "streamval_cluster_model_updates_total", cluster="3") is None
    assert value(learner.registry, "streamval_learner_clusters") == 1
    learner.trained(32, 2)
    learner.lag(0, 5)
    learner.partitions_revoked([0])
    assert value(learner.registry, "streamval_learner_samples_trained_total") == 32
    assert value(learner.registry, "streamval_learner_training_steps_total") == 2
    assert value(learner.registry, "streamval_learner_lag_messages", partition="0") is None
