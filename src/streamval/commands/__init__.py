"""One module per `streamval` subcommand; each has `register(subparsers)`."""

from __future__ import annotations

from types import ModuleType

from streamval.commands import backtest, config, demo, kafka, replay, run

COMMANDS: list[ModuleType] = [demo, run, replay, backtest, kafka, config]

__all__ = ["COMMANDS"]
