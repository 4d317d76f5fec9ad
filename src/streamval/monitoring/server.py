"""The monitoring HTTP endpoints: `/metrics`, `/healthz` and `/readyz`.

    /metrics   the registry in the Prometheus text format (or OpenMetrics when the scraper
               asks for it in `Accept`), through prometheus_client's own encoders
    /healthz   200 "ok" while the process serves requests (liveness: restart me if not)
    /readyz    200 "ready" when the `ready()` callback says so, else 503 with its reason
               (readiness: e.g. the consumer has not restored its checkpoint or joined its group)

A stdlib `ThreadingHTTPServer` on daemon threads: a slow scraper cannot block the poll loop nor
keep the process alive at exit. `stop()` shuts the server down and closes its socket.

    >>> from prometheus_client import CollectorRegistry
    >>> with MetricsServer(CollectorRegistry(), port=0) as server:
    ...     server.port > 0
    True
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["MetricsServer", "ReadyCheck"]

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]

# shutdown() waits for serve_forever's loop to notice; it polls every 0.5 s by default. A short
# interval keeps stop() (and so test teardown and service shutdown) fast.
_POLL_INTERVAL_S = 0.1
_TEXT = "text/plain; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, ready: ReadyCheck | None
    ) -> None:
        self.registry = registry
        self.ready = ready
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._reply(200, encoder(self.server.registry), content_type)
        elif path == "/healthz":
            self._reply(200, b"ok\n", _TEXT)
        elif path == "/readyz":
            ok, reason = self._readiness()
            self._reply(200 if ok else 503, f"{reason}\n".encode(), _TEXT)
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n", _TEXT)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _readiness(self) -> tuple[bool, str]:
        check = self.server.ready
        if check is None:
            return True, "ready"
        try:
            ok, reason = check()
        except Exception as exc:  # a failing check means "not ready", never a crashed server
            log.warning("readiness check failed: %s", exc)
            return False, f"readiness check failed: {exc}"
        return ok, reason or ("ready" if ok else "not ready")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every few seconds would flood stderr; keep them at debug level.
        log.debug("%s - %s", self.address_string(), format % args)


class MetricsServer:
    """Serves one registry's metrics and the health endpoints on `host:port`.

    `port=0` binds a free port, readable as `.port` once started. The host defaults to loopback;
    a container sets `monitoring.host = 0.0.0.0` so Prometheus can reach it.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 9108,
        ready: ReadyCheck | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self._requested_port = port
        self.ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:9108."""
        host = "127.0.0.1" if self.host in {"0.0.0.0", ""} else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Bind and serve on a daemon thread; returns self. Raises OSError if the port is taken."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self._requested_port), self.registry, self.ready)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"metrics-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics on %s/metrics (health: /healthz, /readyz)", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
