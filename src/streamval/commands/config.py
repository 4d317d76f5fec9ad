"""`streamval config`: print the effective settings (file < env < flags) and their origin."""

from __future__ import annotations

import argparse
import json
from typing import Any

from streamval.commands._common import Subparsers, add_command, settings_and_sources
from streamval.config import redact


def register(sub: Subparsers) -> None:
    parser = add_command(
        sub,
        "config",
        help="show the effective settings and where each one comes from",
        description=(
            "Print the settings after merging the config file, STREAMVAL_* environment variables\n"
            "and flags, and validate them. Exits 2 with the bad key named when one is invalid.\n"
            "Each setting says where it came from (default, the file, environment, flags);\n"
            "passwords, secrets and tokens are shown as ***.\n\n"
            "Environment variables: STREAMVAL_<SECTION>__<KEY>, e.g. STREAMVAL_ENGINE__LR=0.002;\n"
            "KAFKA_BOOTSTRAP_SERVERS sets kafka.bootstrap_servers."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    parser.set_defaults(func=run)


def origin(key: str, sources: dict[str, str]) -> str:
    """Where a dotted key's value came from: the most specific source that set it or a parent."""
    best = ""
    for set_key in sources:
        if (key == set_key or key.startswith(set_key + ".")) and len(set_key) > len(best):
            best = set_key
    if best:
        return sources[best]
    children = sorted({o for k, o in sources.items() if k.startswith(key + ".")})
    return ", ".join(children) + " (some keys)" if children else "default"


def run(args: argparse.Namespace) -> int:
    settings, sources = settings_and_sources(args)
    data: dict[str, Any] = redact(settings.model_dump(mode="json"))
    if args.json:
        out = {
            section: {
                key: {"value": value, "source": origin(f"{section}.{key}", sources)}
                for key, value in values.items()
            }
            for section, values in data.items()
        }
        print(json.dumps(out, indent=2))
        return 0
    for section, values in data.items():
        print(f"[{section}]")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}  # {origin(f'{section}.{key}', sources)}")
        print()
    return 0
