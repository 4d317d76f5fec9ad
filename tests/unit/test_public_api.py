"""The package root's public API: the exported names, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import streamval

EXPORTED = [
    "AssetEvent",
    "BatchResult",
    "BrokerError",
    "CheckpointError",
    "ClusterSnapshot",
    "ConfigError",
    "DataError",
    "DriftAlarm",
    "Engine",
    "EngineSettings",
    "ErrorStats",
    "EventTable",
    "LocalBroker",
    "Reason",
    "Rejection",
    "Settings",
    "StreamvalError",
    "Valuation",
    "ValuationService",
    "__version__",
    "load_settings",
    "parse_event",
    "read_long_table",
    "read_wide_prices",
    "replay",
]


def test_all_is_sorted_and_pinned() -> None:
    assert streamval.__all__ == sorted(streamval.__all__)
    assert streamval.__all__ == EXPORTED


def test_every_exported_name_resolves() -> None:
    for name in streamval.__all__:
        assert getattr(streamval, name) is not None, name
    assert streamval.Engine.__module__ == "streamval.engine"


def test_unknown_names_are_attribute_errors() -> None:
    try:
        _ = streamval.NoSuchThing  # type: ignore[attr-defined]
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_the_package_and_the_cli_leaves_torch_unloaded() -> None:
    code = (
        "import sys, streamval, streamval.cli; "
        "from streamval import AssetEvent, EngineSettings; "
        "print(sorted(m for m in ('torch', 'sklearn', 'river') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
