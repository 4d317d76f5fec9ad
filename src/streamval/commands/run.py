"""`streamval run`: consume asset-events, publish valuations and metrics (the engine service)."""

from __future__ import annotations

import argparse
import sys

from streamval.commands._common import add_command


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = add_command(sub, "run", help="consume asset-events, publish valuations and metrics (the engine service) [not implemented yet]", description=__doc__ or "")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("streamval run: not implemented yet in this version", file=sys.stderr)
    return 2
