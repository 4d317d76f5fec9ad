"""`streamval replay`: produce historical or generated events into Kafka, optionally with a shock."""

from __future__ import annotations

import argparse
import sys

from streamval.commands._common import add_command


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "replay", help="produce historical or generated events into Kafka, optionally with a shock [not implemented yet]", description=__doc__ or "")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("streamval replay: not implemented yet in this version", file=sys.stderr)
    return 2
