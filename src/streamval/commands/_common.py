"""Options shared by every command: config file, `--set` overrides, logging."""

from __future__ import annotations

import argparse
from typing import Any, TypeAlias

from streamval.config import (
    Settings,
    load_settings_with_sources,
    parse_set_flags,
    secret_values,
)
from streamval.logs import register_secrets, setup_logging

# The object `add_subparsers()` returns; argparse types it only in the stubs.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def common_options() -> argparse.ArgumentParser:
    """A parent parser with the options every command accepts."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings")
    group.add_argument("--config", metavar="FILE", help="TOML settings file (or STREAMVAL_CONFIG)")
    group.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one setting, e.g. --set engine.lr=0.002 (repeatable)",
    )
    group.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka cluster to use (or KAFKA_BOOTSTRAP_SERVERS); default: the local broker",
    )
    group.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    group.add_argument("--log-format", choices=["json", "text"])
    return parent


def add_command(
    sub: Subparsers,
    name: str,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """Add a subcommand that takes the common options and keeps its description's line breaks."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        parents=[common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Load settings with the command's flags applied on top, and set up logging from them."""
    return settings_and_sources(args, **overrides)[0]


def settings_and_sources(
    args: argparse.Namespace, **overrides: Any
) -> tuple[Settings, dict[str, str]]:
    """`settings_from_args` plus where each non-default setting came from."""
    flags = parse_set_flags(args.set)
    if args.bootstrap_servers:
        flags["kafka.bootstrap_servers"] = args.bootstrap_servers
    if args.log_level:
        flags["logging.level"] = args.log_level
    if args.log_format:
        flags["logging.format"] = args.log_format
    flags.update({k: v for k, v in overrides.items() if v is not None})
    settings, sources = load_settings_with_sources(args.config, overrides=flags)
    setup_logging(settings.logging.level, settings.logging.format)
    register_secrets(secret_values(settings))
    return settings, sources
