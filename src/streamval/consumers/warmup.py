"""Warm start: the engine learns from a history file before it consumes its first event.

Without it, a fresh engine values with the warming fallback (persistence) until each asset has
`seq_len` values and, before `bootstrap_assets` assets have `min_history` values, keeps every
asset in one provisional cluster. `warm_up` runs the history through the same test-then-train
step as live events, in batches of the live batch size, and then fits the clustering on what it
has seen even if fewer than `bootstrap_assets` assets qualified, so the first live event meets
fitted clusters, trained models and full windows.

The history must end before the live stream begins: it sets each asset's last event time, so a
live event not newer than its asset's last history event is late (DLQ) or a duplicate (dropped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streamval.engine import Engine
from streamval.stream.contract.schema import AssetEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmUp:
    """What the engine learned from the history."""

    events: int
    refused: int  # late or duplicate rows of the history itself
    assets: int
    clusters: list[int]
    seconds: float


def warm_up(
    engine: Engine,
    events: Iterable[AssetEvent],
    *,
    batch_size: int = 500,
    on_progress: Callable[[int], None] | None = None,
) -> WarmUp:
    """Value and learn from `events` (event-time order) as if consumed, discarding the outputs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    t0 = time.monotonic()
    n = refused = 0
    batch: list[AssetEvent] = []

    def run() -> None:
        nonlocal n, refused
        result = engine.process(batch)
        n += len(batch)
        refused += len(result.late) + len(result.duplicates)
        batch.clear()
        if on_progress is not None:
            on_progress(n)

    for event in events:
        batch.append(event)
        if len(batch) >= batch_size:
            run()
    if batch:
        run()
    if not engine.fitted:
        engine.refit()  # the history is all there is to bootstrap from
    out = WarmUp(
        events=n,
        refused=refused,
        assets=len(engine.assignments()),
        clusters=engine.clusters,
        seconds=time.monotonic() - t0,
    )
    log.info(
        "warmed up from history",
        extra={
            "events": out.events,
            "refused": out.refused,
            "assets": out.assets,
            "clusters": out.clusters,
            "seconds": round(out.seconds, 1),
        },
    )
    return out
