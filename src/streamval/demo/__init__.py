"""`streamval demo`: the whole product on one machine, from a cold start to a report.

It starts a local Kafka broker unless a cluster is configured, replays the reference paper's
credit portfolio through its policy tightening, runs the valuation service on it with a live
per-cluster table, and writes a report (report.md, summary.json, errors.png) built from what
the engine published on its output topics.

    options.py  what a run can be asked for (light: the CLI's help reads its defaults)
    runner.py   orchestration: broker, topics, service and replay threads, clean shutdown
    live.py     the live per-cluster table, read from the service's Prometheus registry
    report.py   the output topics read back, analysed, plotted and written
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamval.demo.options import DEFAULT_CUSTOMERS, QUICK_CUSTOMERS, DemoOptions

__all__ = [
    "ALARM_DELAY_BOUND_MONTHS",
    "DEFAULT_CUSTOMERS",
    "QUICK_CUSTOMERS",
    "DemoOptions",
    "DemoResult",
    "Summary",
    "run_demo",
]

# Loaded on first use: the runner and the report need pandas, torch and kafka-python.
_LAZY = {
    "ALARM_DELAY_BOUND_MONTHS": "streamval.demo.report",
    "Summary": "streamval.demo.report",
    "DemoResult": "streamval.demo.runner",
    "run_demo": "streamval.demo.runner",
}

if TYPE_CHECKING:
    from streamval.demo.report import ALARM_DELAY_BOUND_MONTHS, Summary
    from streamval.demo.runner import DemoResult, run_demo


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamval.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
