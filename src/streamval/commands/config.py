"""`streamval config`: print the effective settings (file < environment < flags)."""

from __future__ import annotations

import argparse
import json

from streamval.commands._common import Subparsers, add_command, settings_from_args


def register(sub: Subparsers) -> None:
    parser = add_command(
        sub,
        "config",
        help="show the effective settings and where each section comes from",
        description=(
            "Print the settings after merging the config file, STREAMVAL_* environment variables\n"
            "and flags, and validate them. Exits 2 with the bad key named when one is invalid.\n\n"
            "Environment variables: STREAMVAL_<SECTION>__<KEY>, e.g. STREAMVAL_ENGINE__LR=0.002;\n"
            "KAFKA_BOOTSTRAP_SERVERS sets kafka.bootstrap_servers."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    data = settings.model_dump(mode="json")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for section, values in data.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0
