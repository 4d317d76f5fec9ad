"""`streamval` command line: one subcommand per module in `streamval.commands`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamval import __version__
from streamval.commands import COMMANDS
from streamval.errors import StreamvalError

DESCRIPTION = """\
streamval values assets from a stream of events. It reads asset time-series events from Kafka
(topic asset-events), groups similar assets into clusters, keeps one LSTM per cluster that learns
online from every labelled event, raises a cluster's learning rate when a drift detector sees a
sudden change (a policy tightening, a crash), and publishes valuations and error metrics to Kafka
(topics valuations, valuation-metrics) and to Prometheus.

Settings come from a TOML file (--config), STREAMVAL_* environment variables and flags, in that
order of precedence; `streamval config` prints the result. Without KAFKA_BOOTSTRAP_SERVERS the
commands use a local single-node broker (`streamval kafka up`).
"""

EPILOG = """\
examples:
  streamval demo                       replay a policy-tightening shock through a local broker
  streamval kafka up                   start a local Kafka broker (KRaft) and print its address
  streamval run                        consume asset-events, publish valuations and metrics
  streamval replay --dataset credit    produce the built-in credit portfolio into asset-events
  streamval backtest --out report/     offline accuracy report against the baselines
"""


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each command module adds its own subparser."""
    parser = argparse.ArgumentParser(
        prog="streamval",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streamval` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except StreamvalError as exc:
        print(f"streamval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
