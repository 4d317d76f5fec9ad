"""`streamval demo`: the whole product on one machine, from a cold start to a report.

It starts a local Kafka broker unless a cluster is configured, replays the reference paper's
credit portfolio through its policy tightening, runs the valuation service on it with a live
per-cluster table, and writes a report (report.md, summary.json, errors.png) built from what
the engine published on its output topics.

    runner.py   orchestration: broker, topics, service and replay threads, clean shutdown
    live.py     the live per-cluster table, read from the service's Prometheus registry
    report.py   the output topics read back, analysed, plotted and written
"""

from __future__ import annotations

from streamval.demo.report import ALARM_DELAY_BOUND_MONTHS, Summary
from streamval.demo.runner import (
    DEFAULT_CUSTOMERS,
    QUICK_CUSTOMERS,
    DemoOptions,
    DemoResult,
    run_demo,
)

__all__ = [
    "ALARM_DELAY_BOUND_MONTHS",
    "DEFAULT_CUSTOMERS",
    "QUICK_CUSTOMERS",
    "DemoOptions",
    "DemoResult",
    "Summary",
    "run_demo",
]
