"""The demo's orchestration: broker, topics, engine service, replay, live view, report.

    run_demo(settings, options, stop=event)
      1. Kafka       the configured cluster, or a local broker in a temporary home, stopped and
                     removed at the end (its JVM also dies with this process: PR_SET_PDEATHSIG)
      2. topics      four fresh topics named demo-<run id>.<topic>, one partition each
      3. service     `ValuationService` on a thread, `MetricsServer` on a free (or given) port
      4. replay      the paper's credit book (policy tightening at month 18) on a second thread,
                     with a marker at the shock on the metrics topic, one month at a time: the
                     next once the service has valued the last and applied any clustering fit it
                     started (`_pace`)
      5. watch       the live table until every replayed event has been valued
                     (`service.published == events`), then a clean service stop (final snapshots)
      6. report      both output topics read back; report.md, summary.json, errors.png

Setting `stop` (the CLI does on SIGINT/SIGTERM) ends the run at the next check: the replay
stops at its next progress callback, the service finishes its batch, the broker stops, and
`run_demo` returns None.

Why one partition: the replay sends the book month by month. With several partitions the
consumer may read one partition's month 20 before another's month 10, blurring exactly the
moment the demo is about; one partition keeps the stream in event-time order, as in the paper.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live

from streamval.config import Settings
from streamval.demo.live import Progress, cluster_rows, plain_table, rich_table
from streamval.demo.options import DEFAULT_CUSTOMERS, QUICK_CUSTOMERS, DemoOptions
from streamval.demo.report import DemoFacts, Summary, analyse, read_json, write_report
from streamval.errors import BrokerError, StreamvalError
from streamval.stream.datasets.credit import CreditPortfolio, generate
from streamval.stream.kafka.broker import LocalBroker
from streamval.stream.kafka.jars import find_java
from streamval.stream.kafka.topics import ensure_topics, topic_names
from streamval.stream.replay.markers import Marker

if TYPE_CHECKING:
    from streamval.consumers.service import ValuationService

__all__ = ["DEFAULT_CUSTOMERS", "QUICK_CUSTOMERS", "DemoOptions", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)

# Snapshots (and so the live table's MAE, lr and assets columns) refresh this often.
SNAPSHOT_INTERVAL_S = 1.0
# The live table redraws this often in a terminal; the plain table prints this often elsewhere.
LIVE_REFRESH_S = 0.25
PLAIN_EVERY_S = 10.0
# After the replay, the service values what is left in well under a minute (bounded work per
# poll); no progress for this long means it is stuck, and the demo fails instead of hanging.
STALL_TIMEOUT_S = 180.0
# A service thread finishes its batch, flushes and closes within seconds of stop(); the final
# flush is bounded by the service's own 60 s flush timeout.
JOIN_TIMEOUT_S = 90.0
# The replay holds each month until the service has valued the last and applied a clustering
# fit it started: valuing 5,000 customers' month takes seconds, a fit's subprocess up to 20 s to
# start on a loaded machine; past this the replay goes on (warned) rather than wait forever.
MONTH_WAIT_S = 120.0


@dataclass(frozen=True)
class DemoResult:
    """A finished demo: its summary and where the report is."""

    summary: Summary
    report: Path
    metrics_url: str | None


class _InterruptError(Exception):
    """`stop` was set: unwind and clean up."""


class _Worker(threading.Thread):
    """A daemon thread that keeps its target's exception for the main thread to re-raise."""

    def __init__(self, name: str, target: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        try:
            self._target_fn()
            self.finished = True
        except BaseException as exc:  # re-raised on the main thread by _watch
            self.error = exc


def run_demo(
    settings: Settings, options: DemoOptions, *, stop: threading.Event, console: Console
) -> DemoResult | None:
    """Run the whole demo (see the module docstring); None if `stop` was set before the end."""
    from streamval.engine import set_torch_threads

    set_torch_threads(settings.engine)
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        with _kafka(settings, console, stop) as (cluster, home):
            seconds["broker start"] = time.monotonic() - t0
            demo = _demo_settings(cluster, options)
            ensure_topics(demo, topic_names(demo), partitions=1)
            book = generate(n_customers=options.customers)
            result = _run(
                demo, options, book, stop=stop, console=console, seconds=seconds, home=home
            )
    except _InterruptError:
        return None
    seconds["total"] = time.monotonic() - t0
    result.summary.seconds.update(seconds)
    write_report(result.summary, options.out)
    return result


@contextlib.contextmanager
def _kafka(
    settings: Settings, console: Console, stop: threading.Event
) -> Iterator[tuple[Settings, str | None]]:
    """The configured cluster as is, or a local broker in a temporary home for the demo."""
    if settings.kafka.bootstrap_servers:
        yield settings, None
        return
    find_java()  # a clear error before anything is created
    home = Path(tempfile.mkdtemp(prefix="streamval-demo-"))
    broker_settings = settings.broker.model_copy(update={"home": home / "broker"})
    # Started on the main thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits.
    broker = LocalBroker(broker_settings, die_with_parent=True)
    try:
        console.print(f"starting a local Kafka broker in {home} ...")
        state = broker.start()
        console.print(f"local Kafka broker at {state.bootstrap}")
        _check(stop)
        yield settings.with_bootstrap(state.bootstrap), str(home)
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


def _demo_settings(settings: Settings, options: DemoOptions) -> Settings:
    """Fresh topic names and group for this run, frequent snapshots, the chosen metrics port."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"demo-{run_id}."
    t = settings.topics
    topics = t.model_copy(
        update={
            "input": prefix + t.input,
            "dlq": prefix + t.dlq,
            "valuations": prefix + t.valuations,
            "metrics": prefix + t.metrics,
            "partitions": 1,
        }
    )
    consumer = settings.consumer.model_copy(
        update={
            "group_id": f"streamval-demo-{run_id}",
            "metrics_interval_s": SNAPSHOT_INTERVAL_S,
            "checkpoint_dir": None,
        }
    )
    monitoring = settings.monitoring.model_copy(update={"port": options.metrics_port})
    return settings.model_copy(
        update={"topics": topics, "consumer": consumer, "monitoring": monitoring}
    )


def _run(
    settings: Settings,
    options: DemoOptions,
    book: CreditPortfolio,
    *,
    stop: threading.Event,
    console: Console,
    seconds: dict[str, float],
    home: str | None,
) -> DemoResult:
    """Service + replay + live view, then read the topics back and analyse them."""
    # Heavy imports (torch) only once Kafka is up.
    from streamval.consumers.service import ValuationService, serve_metrics
    from streamval.stream.replay.producer import replay

    service = ValuationService(settings)
    metrics = service.metrics
    server = serve_metrics(service)
    if server is not None:
        console.print(f"metrics: {server.url}/metrics")
    url = server.url if server else None
    events = len(book.table)
    replayed = [0]

    abort = threading.Event()  # ends a replay still running when the demo fails

    def on_progress(n: int) -> None:
        replayed[0] = n
        if stop.is_set() or abort.is_set():
            raise _InterruptError

    def before_month(sent: int, ts_ms: int) -> None:
        _pace(service, sent, ts_ms, lambda: stop.is_set() or abort.is_set())

    markers = []
    if book.shock_ts_ms is not None:
        markers.append(Marker(book.shock_ts_ms, "policy tightening", "tightening", "credit"))
    service_thread = _Worker("demo-service", service.run)
    replay_thread = _Worker(
        "demo-replay",
        lambda: replay(
            settings,
            book.table,
            rate=options.rate,
            markers=markers,
            on_progress=on_progress,
            before_time=before_month,
            create_topics=False,
        ),
    )
    t0 = time.monotonic()
    try:
        service_thread.start()
        replay_thread.start()
        with _Display(options, console) as show:

            def progress() -> Progress:
                return Progress(events, replayed[0], service.published, url)

            _watch(
                lambda: service.published,
                events,
                [service_thread, replay_thread],
                stop,
                lambda: show(cluster_rows(metrics.registry), progress()),
            )
        seconds["valuing"] = time.monotonic() - t0
    finally:
        abort.set()
        service.stop()
        service_thread.join(JOIN_TIMEOUT_S)
        replay_thread.join(JOIN_TIMEOUT_S)
        if server is not None:
            server.stop()
    if service_thread.error is not None:
        raise service_thread.error
    t1 = time.monotonic()
    valuations = read_json(settings, settings.topics.valuations)
    metric_messages = read_json(settings, settings.topics.metrics)
    seconds["read back"] = time.monotonic() - t1
    facts = DemoFacts(
        customers=options.customers,
        events=events,
        shock_ts_ms=book.shock_ts_ms,
        month_ts_ms=book.month_ts_ms,
        shocked_assets=frozenset(book.customers.index[book.customers["shocked"]]),
        engine=settings.engine,
        bootstrap=settings.kafka.bootstrap_servers or "",
        local_broker_home=home,
        metrics_url=url,
        quick=options.quick,
    )
    summary = analyse(valuations, metric_messages, facts)
    return DemoResult(summary=summary, report=options.out / "report.md", metrics_url=url)


def _pace(service: ValuationService, sent: int, ts_ms: int, stopping: Callable[[], bool]) -> None:
    """Hold the replay until the service has valued the `sent` events and has no clustering
    fit pending. In a real book a month passes between two records of a customer; compressed
    into seconds, a fit running in the background would land at whatever month the replay had
    reached by then (right before the shock, say: a cluster too new for its detector to have
    seen a calm month), and every run would tell another story."""
    deadline = time.monotonic() + MONTH_WAIT_S
    while service.published < sent or getattr(service.engine, "fit_pending", False):
        if stopping():
            raise _InterruptError
        if time.monotonic() > deadline:
            log.warning(
                "replay goes on before the engine caught up",
                extra={"valued": service.published, "sent": sent, "ts_ms": ts_ms},
            )
            return
        time.sleep(0.02)


def _watch(
    valued: Callable[[], int],
    events: int,
    workers: list[_Worker],
    stop: threading.Event,
    refresh: Callable[[], None],
) -> None:
    """Refresh the view until `valued() >= events`; raise on a failed worker, a stall or `stop`."""
    last, last_change = -1, time.monotonic()
    while True:
        n = valued()
        refresh()
        _check(stop)
        for worker in workers:
            if worker.error is not None:
                if isinstance(worker.error, _InterruptError):
                    raise _InterruptError
                raise worker.error
        if n >= events:
            return
        if n != last:
            last, last_change = n, time.monotonic()
        if not workers[0].is_alive():
            raise BrokerError(f"the valuation service stopped after {n} of {events} valuations")
        replay_done = all(w.finished for w in workers[1:])
        if replay_done and time.monotonic() - last_change > STALL_TIMEOUT_S:
            raise StreamvalError(
                f"no valuation for {STALL_TIMEOUT_S:.0f} s after the replay ended "
                f"({n} of {events} valued)"
            )
        stop.wait(LIVE_REFRESH_S)


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise _InterruptError


class _Display:
    """A context whose value renders the rows: a rich Live table, or plain text now and then."""

    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.live = console.is_terminal if options.live is None else options.live
        self.console = console
        self._live: Live | None = None
        self._last_plain = 0.0
        self._last: tuple[list[Any], Progress] | None = None

    def __enter__(self) -> Callable[[list[Any], Progress], None]:
        if self.live:
            self._live = Live(console=self.console, refresh_per_second=1 / LIVE_REFRESH_S)
            self._live.__enter__()
        return self.show

    def show(self, rows: list[Any], progress: Progress) -> None:
        self._last = (rows, progress)
        if self._live is not None:
            self._live.update(rich_table(rows, progress))
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = time.monotonic()
            print(plain_table(rows, progress), flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
        elif self._last is not None:
            print(plain_table(*self._last), flush=True)
