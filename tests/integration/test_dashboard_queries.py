"""Every dashboard query returns data from a real Prometheus scraping `MetricsServer`s.

The engine, a learner and the replay are stood in for by `EngineMetrics` / `LearnerMetrics` /
`ReplayMetrics` fed with plausible values on a background thread while Prometheus scrapes them
every second. The engine runs in the default role (`all`) and exports cluster 0-2; the learner owns
cluster 7, as in a split deployment, so each cluster's series come from one process. This proves
the harness in `prom.py`, and that the dashboard and the alert rules use the metric names the code
exports.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.integration.prom import PrometheusServer, Query, alert_queries, dashboard_queries

from streamval.monitoring import EngineMetrics, LearnerMetrics, MetricsServer, ReplayMetrics
from streamval.stream.contract.outputs import (
    ClusteringStats,
    ClusterSnapshot,
    DriftAlarm,
    ErrorStats,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

CLUSTERS = (0, 1, 2)
LEARNED = 7  # the cluster the learner owns
PARTITIONS = (0, 1, 2)


@dataclass
class Feeder:
    """Calls the metrics API as a consumer and a replay would, every `period_s`, until stopped."""

    engine: EngineMetrics
    replay: ReplayMetrics
    learner: LearnerMetrics
    period_s: float = 0.1
    drift_every: int = 10  # ticks between drift alarms, after the first scrapes

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._rng = random.Random(7)
        self._updates = dict.fromkeys(CLUSTERS, 0)
        self._alarms = dict.fromkeys(CLUSTERS, 0)

    def __enter__(self) -> Feeder:
        self._tick(0)  # the cluster series exist (drift counters at 0) before the first scrape
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        tick = 1
        while not self._stop.wait(self.period_s):
            self._tick(tick)
            tick += 1

    def _tick(self, tick: int) -> None:
        rng, m = self._rng, self.engine
        now = time.time()
        batch = 0
        for partition in PARTITIONS:
            n = rng.randint(20, 60)
            batch += n
            m.consumed(partition, n)
            m.consumer_lag(partition, rng.randint(0, 500))
        m.dead_lettered("invalid_json", rng.randint(0, 2))
        m.dead_lettered("late", rng.randint(0, 1))
        m.duplicates(rng.randint(0, 1))
        for cluster in CLUSTERS:
            m.published(cluster, batch // len(CLUSTERS))
        for _ in range(20):
            m.processing_latency(rng.lognormvariate(-4.5, 0.6))  # ~10 ms
            m.event_time_lag(3 * 365 * 86_400.0 + rng.uniform(0, 86_400.0))  # replaying 2022
        m.batch(rng.uniform(0.02, 0.2), batch)
        if tick % 10 == 0:
            m.checkpoint_written(now)
        if tick and tick % self.drift_every == 0:
            cluster = CLUSTERS[(tick // self.drift_every) % len(CLUSTERS)]
            m.drift_alarm(DriftAlarm(cluster, "adwin", int(now * 1000), 0.02, 0.06, 5e-3))
            self._alarms[cluster] += 1
        snapshots = []
        clustering = ClusteringStats(
            clusters=len(CLUSTERS),
            fits=1 + tick // self.drift_every,
            silhouette=0.6,
            churn=0.01 if tick >= self.drift_every else None,
            switches=tick // 5,
        )
        for cluster in CLUSTERS:
            self._updates[cluster] += rng.randint(0, 3)
            rolling = ErrorStats(
                n=500, mae=0.02 + 0.01 * cluster, rmse=0.03 + 0.01 * cluster, r2=0.9
            )
            total = ErrorStats(n=5_000 + tick, mae=0.02, rmse=0.03, r2=0.92)
            snapshots.append(
                ClusterSnapshot(
                    cluster=cluster,
                    ts_ms=int(now * 1000),
                    assets=[1800, 900, 300][cluster],
                    rolling=rolling,
                    total=total,
                    drift_alarms=self._alarms[cluster],
                    lr=1e-3 * (5 if self._alarms[cluster] else 1),
                    updates=self._updates[cluster],
                    model_version=self._updates[cluster],
                    silhouette=0.5 + 0.1 * cluster,
                    clustering=clustering,
                    interval_coverage=0.88 + 0.01 * cluster,
                    interval_width=1.5 + 0.2 * cluster,
                    dropped_feature_values=tick,
                    fast_learner="shadow" if self._alarms[cluster] else "none",
                    fast_learners=self._alarms[cluster],
                    expert_weights={"persistence": 0.4, "stable": 0.6},
                )
            )
        m.update_clusters(snapshots)
        m.pooled_model(queued=tick % 32, trained=320 * tick, skipped=0)
        self.replay.produced(batch)
        self._learn(tick, now)
        if tick % 15 == 0:
            self.replay.marker(
                f"FOMC hike {tick // 15}", kind="policy", event_ts_ms=1_647_388_800_000 + tick
            )

    def _learn(self, tick: int, now: float) -> None:
        """A learner owning cluster 7: its samples, steps, snapshots and lag."""
        rng, m = self._rng, self.learner
        m.received(rng.randint(100, 200))
        m.trained(128, 2)
        m.published(1)
        m.lag(0, 400 + tick)
        if tick % 7 == 0:
            m.rejected("version")
        if tick and tick % self.drift_every == 0:
            m.drift_alarm(DriftAlarm(LEARNED, "cross_sectional", int(now * 1000), 0.9, 3.1, 5e-3))
        self._updates[LEARNED] = self._updates.get(LEARNED, 0) + 2
        m.update_clusters(
            [
                ClusterSnapshot(
                    cluster=LEARNED,
                    ts_ms=int(now * 1000),
                    assets=600,
                    rolling=ErrorStats(n=500, mae=0.05, rmse=0.07, r2=0.85),
                    total=ErrorStats(n=5_000 + tick, mae=0.04, rmse=0.06, r2=0.9),
                    drift_alarms=tick // self.drift_every,
                    lr=1e-3,
                    updates=self._updates[LEARNED],
                    model_version=self._updates[LEARNED],
                )
            ]
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[PrometheusServer]:
    """Engine and replay metrics servers, fed continuously, scraped by a real Prometheus."""
    engine, replay, learner = EngineMetrics(), ReplayMetrics(), LearnerMetrics()
    with (
        MetricsServer(engine.registry, port=0) as engine_server,
        MetricsServer(replay.registry, port=0) as replay_server,
        MetricsServer(learner.registry, port=0) as learner_server,
        Feeder(engine, replay, learner),
        PrometheusServer(
            {
                "streamval-engine": [f"127.0.0.1:{engine_server.port}"],
                "streamval-replay": [f"127.0.0.1:{replay_server.port}"],
                "streamval-learner": [f"127.0.0.1:{learner_server.port}"],
            }
        ) as prom,
    ):
        prom.wait_for_targets()
        yield prom


def test_every_dashboard_query_returns_data(stack: PrometheusServer) -> None:
    empty = stack.queries_without_data(dashboard_queries(), timeout_s=30)
    assert not empty, "no data for:\n" + "\n".join(f"{q.source}: {q.promql}" for q in empty)


def test_a_misspelled_metric_is_reported(stack: PrometheusServer) -> None:
    """The check above can fail: a query for a name the code does not export finds no data."""
    typo = Query("panel 'typo' A", "sum(rate(streamval_event_consumed_total[1m]))")
    assert stack.queries_without_data([typo], timeout_s=2) == [typo]


def test_panel_values_are_plausible(stack: PrometheusServer) -> None:
    # irate: a [1m] rate divides by the whole minute, and the series are only seconds old
    throughput = stack.wait_for_data("sum(irate(streamval_events_consumed_total[10s]))")
    assert 300 < float(throughput[0]["value"][1]) < 5000  # ~1,200 events/s fed
    latency = "streamval_processing_latency_seconds_bucket"
    p99 = stack.wait_for_data(f"histogram_quantile(0.99, sum by (le) (rate({latency}[1m])))")
    assert 0.001 < float(p99[0]["value"][1]) < 1.0
    populations = stack.wait_for_data("streamval_cluster_assets")
    assert {s["metric"]["cluster"]: float(s["value"][1]) for s in populations} == {
        "0": 1800.0,
        "1": 900.0,
        "2": 300.0,
        "7": 600.0,  # from the learner that owns it
    }
    # One series per cluster, whichever process reports it: a sum by cluster counts none twice.
    owners = stack.wait_for_data('count by (cluster) (streamval_cluster_mae{window="rolling"})')
    assert {s["metric"]["cluster"]: float(s["value"][1]) for s in owners} == {
        "0": 1.0,
        "1": 1.0,
        "2": 1.0,
        "7": 1.0,
    }
    (learned,) = stack.wait_for_data('streamval_cluster_mae{cluster="7", window="rolling"}')
    assert learned["metric"]["job"] == "streamval-learner"
    assert not stack.query('streamval_cluster_mae{asset_id!=""}')


def test_replay_marker_annotation_is_placed_at_the_wall_clock_time(stack: PrometheusServer) -> None:
    (annotation,) = [q for q in dashboard_queries() if q.source == "annotation 'Replay markers'"]
    result = stack.wait_for_data(annotation.promql)
    assert result and result[0]["metric"]["kind"] == "policy"
    assert result[0]["metric"]["name"].startswith("FOMC hike")
    assert abs(float(result[0]["value"][1]) / 1000 - time.time()) < 60


def test_every_alert_expression_evaluates(stack: PrometheusServer) -> None:
    queries = alert_queries()
    assert len(queries) == 12
    for q in queries:
        stack.query(q.promql)  # raises PrometheusError on a bad expression or a type error


def test_rules_are_loaded_and_the_cluster_drift_alert_fires(stack: PrometheusServer) -> None:
    firing = stack.wait_for_alert("StreamvalClusterDrift", timeout_s=20)
    assert firing, stack.alerts()
    assert {a["labels"]["cluster"] for a in firing} <= {"0", "1", "2", "7"}
    # Each cluster's alarms from the one process that reports it: 7's from its learner.
    jobs = {(a["labels"]["cluster"], a["labels"]["job"]) for a in firing}
    assert all(job == ("streamval-learner" if c == "7" else "streamval-engine") for c, job in jobs)
    rules = stack.api("rules")["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} == {
        q.source.removeprefix("alert ") for q in alert_queries()
    }
