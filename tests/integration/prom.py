"""Test harness: a real Prometheus server, and the PromQL of the dashboard and the alert rules.

`PrometheusServer` runs Debian's `prometheus` binary on a free loopback port with a temporary
config that scrapes the given targets every second and loads `docker/prometheus/alerts.yml`
(evaluated every second), so a test can check what Grafana and the alerts would see:

    with PrometheusServer({"streamval-engine": [f"127.0.0.1:{server.port}"]}) as prom:
        prom.wait_for_targets()
        assert not prom.queries_without_data(dashboard_queries())

`dashboard_queries()` and `alert_queries()` read the shipped dashboard JSON and alert rules, with
Grafana's variables ($__rate_interval, ...) replaced by fixed durations, so the same list serves
this module's synthetic test and a live test against the engine consuming a replay.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
ALERTS_YML = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DOCKER / "prometheus" / "alerts_test.yml"
DASHBOARD_JSON = DOCKER / "grafana" / "dashboards" / "streamval.json"
DATASOURCES_YML = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Grafana's built-in variables, as fixed values good for a 1 s scrape interval: a rate window
# of 1m spans about 60 samples; $__range is the dashboard's default time range.
GRAFANA_VARIABLES: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "30m",
    "__range_s": "1800",
    "__range_ms": "1800000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")

# A fresh Prometheus binds and replays its (empty) WAL in well under a second; on a loaded CI
# machine with two cores allow generous time before calling it broken.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def promtool() -> str:
    """Path of `promtool`; its absence is a failure of the test environment, not a skip."""
    path = shutil.which("promtool")
    if path is None:
        raise FileNotFoundError("promtool not found on PATH (Debian package `prometheus`)")
    return path


def prometheus_binary() -> str:
    """Path of `prometheus`; missing is an error (see `promtool`)."""
    path = shutil.which("prometheus")
    if path is None:
        raise FileNotFoundError("prometheus not found on PATH (Debian package `prometheus`)")
    return path


def substitute_variables(expr: str, values: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) with `values`; unknown ones raise."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


@dataclass(frozen=True)
class Query:
    """One PromQL expression from the dashboard or the alert rules, ready to run."""

    source: (
        str  # e.g. "panel 'Throughput' A", "annotation 'Drift alarms'", "alert StreamvalEngineDown"
    )
    promql: str


def load_dashboard(path: Path = DASHBOARD_JSON) -> dict[str, Any]:
    """The dashboard JSON."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including panels nested in collapsed rows; row headers excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def prometheus_annotations(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's annotation queries that run on a Prometheus datasource."""
    return [
        a
        for a in dashboard.get("annotations", {}).get("list", [])
        if (a.get("datasource") or {}).get("type") == "prometheus"
    ]


def dashboard_queries(path: Path = DASHBOARD_JSON) -> list[Query]:
    """Every panel target and Prometheus annotation of the dashboard, variables substituted."""
    dashboard = load_dashboard(path)
    out = [
        Query(
            f"panel {panel['title']!r} {target.get('refId', '?')}",
            substitute_variables(target["expr"]),
        )
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    out += [
        Query(f"annotation {a['name']!r}", substitute_variables(a["expr"]))
        for a in prometheus_annotations(dashboard)
    ]
    return out


def alert_queries(path: Path = ALERTS_YML) -> list[Query]:
    """Every alerting and recording rule expression of the rule file."""
    rules = yaml.safe_load(path.read_text())
    return [
        Query(f"alert {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PrometheusError(RuntimeError):
    """Prometheus failed to start, or its HTTP API answered with an error."""


class PrometheusServer:
    """A real Prometheus scraping `jobs` (job name -> host:port targets) every second.

    The job names should be those of docker/prometheus/prometheus.yml (`streamval-engine`,
    `streamval-replay`) so that queries selecting on `job` behave as in the compose stack.
    """

    def __init__(
        self,
        jobs: Mapping[str, Sequence[str]],
        *,
        rule_files: Sequence[Path] = (ALERTS_YML,),
        interval_s: int = 1,
    ) -> None:
        self.jobs = {name: list(targets) for name, targets in jobs.items()}
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.interval_s = interval_s
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The Prometheus configuration this server runs with."""
        interval = f"{self.interval_s}s"
        return {
            "global": {
                "scrape_interval": interval,
                "evaluation_interval": interval,
                "scrape_timeout": interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": targets}]}
                for name, targets in self.jobs.items()
            ],
        }

    def start(self) -> PrometheusServer:
        """Start Prometheus and wait until /-/ready answers."""
        binary = prometheus_binary()
        self._dir = tempfile.TemporaryDirectory(prefix="streamval-prometheus-")
        root = Path(self._dir.name)
        config = root / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self._log = root / "prometheus.log"
        self.port = free_port()
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate Prometheus (SIGTERM, then SIGKILL) and delete its data; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The end of Prometheus' own log, for failure messages."""
        if self._log is None or not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    # -- HTTP API ---------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError on an error answer."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the result's samples (vector) or a one-element list (scalar)."""
        data = self.api("query", query=promql)
        result = data["result"]
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": result}]
        return list(result)

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), as /api/v1/alerts lists them."""
        return list(self.api("alerts")["alerts"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets with their health."""
        return list(self.api("targets")["activeTargets"])

    # -- waiting ----------------------------------------------------------------------------

    def wait_for_targets(self, timeout_s: float = 20.0) -> None:
        """Wait until every target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout_s
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return
            time.sleep(0.2)
        raise PrometheusError(f"targets not up after {timeout_s} s: {targets}")

    def wait_for_data(self, promql: str, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Poll `promql` until it returns at least one sample; the last (possibly empty) answer."""
        deadline = time.monotonic() + timeout_s
        result = self.query(promql)
        while not result and time.monotonic() < deadline:
            time.sleep(0.25)
            result = self.query(promql)
        return result

    def queries_without_data(
        self, queries: Sequence[Query], timeout_s: float = 30.0
    ) -> list[Query]:
        """The queries that still return nothing after `timeout_s` (shared by all of them)."""
        deadline = time.monotonic() + timeout_s
        pending = list(queries)
        while True:
            pending = [q for q in pending if not self.query(q.promql)]
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(0.25)

    def wait_for_alert(
        self, name: str, state: str = "firing", timeout_s: float = 20.0
    ) -> list[dict[str, Any]]:
        """Poll until alert `name` is in `state`; the matching alerts (empty on timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [
                a
                for a in self.alerts()
                if a["labels"].get("alertname") == name and a["state"] == state
            ]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.25)
