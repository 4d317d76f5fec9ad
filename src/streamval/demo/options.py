"""What a demo run can be asked for: book size, report folder, metrics port, pacing, display.

Kept apart from the runner so that `streamval --help` can show the defaults without loading
pandas, torch and the Kafka client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The paper's book: 5,000 customers x 24 months = 120,000 events, about 1.5 minutes of valuing
# on 2 cores with the paper's engine settings.
DEFAULT_CUSTOMERS = 5000
# Quick mode: 24,000 events, about 20 s of valuing. Below ~1,000 customers the shocked cluster
# holds too few high-risk customers (about 50 at 300 customers) for ADWIN to be sure of the
# change within the six post-shock months, and no alarm fires.
QUICK_CUSTOMERS = 1000


@dataclass(frozen=True)
class DemoOptions:
    """What the user chose: book size, report folder, metrics port, pacing, display."""

    customers: int = DEFAULT_CUSTOMERS
    out: Path = Path("demo-report")
    quick: bool = False
    metrics_port: int = 0
    rate: float | None = None
    live: bool | None = None  # None: a live table when the console is a terminal
