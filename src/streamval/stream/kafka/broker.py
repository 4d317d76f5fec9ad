"""A local single-node Apache Kafka broker (KRaft, broker+controller in one JVM) for dev and tests.

The jars come from Maven Central (`streamval.stream.kafka.jars`). The broker listens on
127.0.0.1, keeps its data and log under `BrokerSettings.home`, and is described by a state file
there, so `streamval kafka status|down` from another process can find it.

When `KAFKA_BOOTSTRAP_SERVERS` is set nothing is started: see `resolve_bootstrap`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from streamval.config import BrokerSettings, Settings
from streamval.errors import BrokerError, ConfigError
from streamval.stream.kafka.jars import find_java, resolve_classpath

log = logging.getLogger(__name__)

READY_LINE = "Kafka Server started"
STATE_FILE = "broker.json"
PORTS_FILE = "ports.json"
# SIGTERM lets the broker close its log segments cleanly; a controlled shutdown of a single node
# takes 1-5 s, so 30 s is ample before escalating to SIGKILL.
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="INFO"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
  </Loggers>
</Configuration>
"""


@dataclass(frozen=True)
class BrokerState:
    """What a running local broker left in its state file."""

    pid: int
    host: str
    port: int
    controller_port: int
    kafka_version: str
    started_at: float

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the parent dies, so tests never orphan a JVM."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalBroker:
    """Start, watch and stop a single-node KRaft broker whose state lives in `settings.home`.

    Use as a context manager in tests (`die_with_parent=True` so a crashed test run cannot leave
    a JVM behind), or `start()` detached for `streamval kafka up`.
    """

    def __init__(self, settings: BrokerSettings, *, die_with_parent: bool = False) -> None:
        self.settings = settings
        self.die_with_parent = die_with_parent
        self.home = settings.home
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def state_file(self) -> Path:
        return self.home / STATE_FILE

    def state(self) -> BrokerState | None:
        """The state of the broker recorded in `home`, if it is still running."""
        try:
            state = BrokerState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        return state if _is_our_broker(state.pid, self.home) else None

    def address(self) -> str | None:
        """host:port the local broker runs (or last ran) on, from its home; None if never."""
        state = self.state()
        if state is not None:
            return state.bootstrap
        port = self._previous_ports()[0]
        return f"{self.settings.host}:{port}" if port else None

    @property
    def bootstrap(self) -> str:
        state = self.state()
        if state is None:
            raise BrokerError(f"no local broker is running in {self.home}")
        return state.bootstrap

    def start(self) -> BrokerState:
        """Start the broker unless it already runs; return once it accepts connections."""
        running = self.state()
        if running is not None:
            return running
        java = find_java()
        classpath = resolve_classpath(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        host = self.settings.host
        previous = self._previous_ports()
        port = self.settings.port or previous[0] or free_port(host)
        controller_port = previous[1] if previous[1] and previous[1] != port else free_port(host)
        if port_open(host, port):
            raise BrokerError(f"port {host}:{port} is already in use; set broker.port to another")
        props = self._write_config(port, controller_port)
        log4j = self.home / "log4j2.xml"
        log4j.write_text(_LOG4J2)
        jvm = [
            java,
            f"-Xmx{self.settings.heap}",
            f"-Xms{self.settings.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            classpath,
        ]
        data = self.home / "data"
        if not (data / "meta.properties").exists():
            self._format(jvm, props)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with self.log_file.open("ab") as out:
            offset = out.tell()
            self._proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(props)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        state = BrokerState(
            pid=self._proc.pid,
            host=host,
            port=port,
            controller_port=controller_port,
            kafka_version=self.settings.kafka_version,
            started_at=time.time(),
        )
        self.state_file.write_text(json.dumps(asdict(state)))
        (self.home / PORTS_FILE).write_text(
            json.dumps({"port": port, "controller_port": controller_port})
        )
        self._wait_ready(offset, host, port)
        log.info(
            "Kafka broker ready",
            extra={"bootstrap": state.bootstrap, "seconds": round(time.monotonic() - t0, 1)},
        )
        return state

    def stop(self) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`). False if none ran."""
        state = self.state()
        pid = state.pid if state else (self._proc.pid if self._proc else None)
        if pid is None:
            return False
        _terminate(pid, self._proc)
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return True

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the broker log, for error messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no broker log)"

    def _previous_ports(self) -> tuple[int | None, int | None]:
        """Ports of the last run, so a restarted broker keeps its address."""
        try:
            old = json.loads((self.home / PORTS_FILE).read_text())
            return int(old["port"]), int(old["controller_port"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None, None

    def _write_config(self, port: int, controller_port: int) -> Path:
        host = self.settings.host
        props = self.home / "server.properties"
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # A static voter set (formatted without --standalone) keeps working if ports change.
            "controller.quorum.voters": f"1@{host}:{controller_port}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(8 * 1024 * 1024),
        }
        props.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return props

    def _format(self, jvm: list[str], props: Path) -> None:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # StorageTool would read a leading '-' as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        proc = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BrokerError(
                f"formatting the broker's storage failed:\n{proc.stdout}{proc.stderr}"
            )

    def _wait_ready(self, offset: int, host: str, port: int) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited with code {self._proc.returncode} while starting; "
                    f"its log ({self.log_file}) ends with:\n{self.log_tail()}"
                )
            with self.log_file.open("rb") as fh:
                fh.seek(offset)
                if READY_LINE.encode() in fh.read() and port_open(host, port):
                    return
            time.sleep(0.1)
        self.stop()
        raise BrokerError(
            f"the Kafka broker did not start within {self.settings.start_timeout_s:.0f} s; its log "
            f"({self.log_file}) ends with:\n{self.log_tail()}"
        )


def _is_our_broker(pid: int, home: Path) -> bool:
    """Whether `pid` is alive and is a broker JVM whose config lives in `home`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline and str(home / "server.properties").encode() in cmdline


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.1)
    log.warning("broker did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=10)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def resolve_bootstrap(settings: Settings) -> str:
    """The cluster to use: `kafka.bootstrap_servers` if set, else the running local broker."""
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    state = LocalBroker(settings.broker).state()
    if state is None:
        raise ConfigError(
            "no Kafka cluster configured: set KAFKA_BOOTSTRAP_SERVERS "
            "(or kafka.bootstrap_servers), "
            "or start a local broker with `streamval kafka up`"
        )
    return state.bootstrap
