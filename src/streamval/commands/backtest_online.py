"""`streamval backtest --online`: the online protocol over named data sets or a file."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from streamval.backtest.online import OnlineConfig, Panel
from streamval.backtest.online_data import (
    NAMED,
    data_dir,
    file_panel,
    named_panel,
    read_events,
    restrict,
)
from streamval.backtest.online_report import run_online_backtest
from streamval.commands._common import settings_from_args
from streamval.errors import ConfigError

ALIASES = {"sp500": "sp500_2015_2020"}


def panels(args: argparse.Namespace) -> list[Panel]:
    """The panels `--dataset` names, with the `--events` files' events added."""
    name = ALIASES.get(args.dataset, args.dataset)
    extra = [m for path in args.events for m in read_events(path)]
    if name == "all" or name in NAMED:
        folder = data_dir(args.data_dir)
        names = NAMED if name == "all" else (name,)
        chosen = [named_panel(n, folder, args.max_assets, args.customers) for n in names]
    else:
        path = Path(args.dataset)
        if not path.is_file():
            raise ConfigError(f"--dataset {args.dataset!r}: not one of {NAMED}, all, or a file")
        chosen = [file_panel(path, wide=args.wide, channels=args.channels)]
    return [restrict(p, extra) for p in chosen]


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (as typed, without the output folder)."""
    argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).name == "streamval" else None
    if argv is not None:
        return "streamval " + shlex.join(argv)
    parts = ["streamval", "backtest", "--online", "--dataset", str(args.dataset)]
    for flag in ("warmup", "season", "max_assets"):
        value = getattr(args, flag)
        if value:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def run_online_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        config = OnlineConfig(
            warmup=args.warmup,
            season=args.season,
            ewma_alpha=args.ewma_alpha,
            window=args.window,
            alarm_within=args.alarm_within,
            engine=settings.engine,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    results = run_online_backtest(panels(args), config, args.out, command_line(args))
    for r in results:
        print(r.markdown)
    print(f"report written to {args.out}", file=sys.stderr)
    return 0
