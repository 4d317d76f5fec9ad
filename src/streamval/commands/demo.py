"""`streamval demo`: local broker, shock replay, engine, live table, report."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from streamval.commands._common import Subparsers, add_command, settings_from_args

# The exit status of a run ended by Ctrl-C or SIGTERM (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
The whole product on one machine, end to end.

Unless a cluster is configured (--bootstrap-servers, KAFKA_BOOTSTRAP_SERVERS or
kafka.bootstrap_servers), it starts a local Kafka broker in a temporary directory (Java 17+ and
Maven needed) and stops it at the end. It creates fresh demo topics, runs the valuation engine
service with Prometheus metrics on a free port (or --metrics-port), and replays the reference
paper's credit portfolio (24 monthly records per customer; a policy tightening in month 18
lowers the high-risk customers' credit scores) one month at a time, each once the engine has
valued the last and applied any clustering fit it started. While it runs, a table per cluster
shows events valued, rolling MAE, learning rate, drift alarms and assets (a plain table every
few seconds when the output is not a terminal).

When every replayed event has been valued it stops the service, reads the valuations and
metrics topics back and writes to --out (default ./demo-report): report.md, summary.json and
errors.png, the per-cluster error and learning rate around the shock with the drift alarms.

The engine uses the paper's settings unless changed with --set engine.KEY=VALUE. Ctrl-C or
SIGTERM stops the replay, the service and the broker, and exits with 130.
"""


def register(sub: Subparsers) -> None:
    from streamval.demo.options import DEFAULT_CUSTOMERS, QUICK_CUSTOMERS

    parser = add_command(
        sub,
        "demo",
        help="end-to-end demo: local broker, shock replay, engine, live table, report",
        description=DESCRIPTION,
    )
    parser.add_argument(
        "--customers",
        type=int,
        metavar="N",
        help=f"customers in the credit book (default {DEFAULT_CUSTOMERS:,}, the paper's; "
        f"{QUICK_CUSTOMERS:,} with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run for CI: {QUICK_CUSTOMERS:,} customers, under a minute of replay",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-report"),
        metavar="DIR",
        help="report folder (default ./demo-report)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, metavar="PORT", help="default: any free port"
    )
    parser.add_argument(
        "--rate", type=float, metavar="EV/S", help="replay at most this many events a second"
    )
    display = parser.add_mutually_exclusive_group()
    display.add_argument(
        "--live", dest="live", action="store_true", default=None, help="force the live table"
    )
    display.add_argument(
        "--plain", dest="live", action="store_false", help="print a plain table now and then"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the report is written, 130 when interrupted."""
    if args.log_level is None:
        # INFO lines would scroll the live table away; warnings and errors still show.
        args.log_level = "WARNING"
    settings = settings_from_args(args)
    if args.log_level == "WARNING":
        # A fresh broker answers NotCoordinator while it creates __consumer_offsets: kafka-python
        # warns about each retry, harmless, and it would bury the live table.
        logging.getLogger("kafka").setLevel(logging.ERROR)

    from rich.console import Console

    from streamval.demo import DEFAULT_CUSTOMERS, QUICK_CUSTOMERS, DemoOptions, run_demo

    customers = args.customers or (QUICK_CUSTOMERS if args.quick else DEFAULT_CUSTOMERS)
    if customers < 10:
        print("streamval demo: --customers must be at least 10", file=sys.stderr)
        return 2
    options = DemoOptions(
        customers=customers,
        out=args.out,
        quick=args.quick,
        metrics_port=args.metrics_port,
        rate=args.rate,
        live=args.live,
    )
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    console = Console()
    try:
        result = run_demo(settings, options, stop=stop, console=console)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result is None:
        print("streamval demo: interrupted; replay, service and broker stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    s = result.summary
    if result.metrics_url:
        console.print(f"Prometheus metrics were served at {result.metrics_url}/metrics")
    console.print(f"valued {s.valued:,} of {s.events:,} events")
    if s.shock_detected and s.first_shock_alarm is not None:
        a = s.first_shock_alarm
        console.print(
            f"drift alarm in cluster {a.cluster} (the shocked customers' cluster) at {a.when}, "
            f"{a.delay_months} month(s) after the policy tightening of {s.shock_time}"
        )
    elif s.alarms:
        console.print(
            f"drift alarms in cluster(s) {sorted({a.cluster for a in s.alarms})}, none in "
            f"cluster {s.shocked_cluster} (the shocked customers') near the shock"
        )
    else:
        console.print("no drift alarm fired")
    console.print(f"report: {result.report}")
    return 0
