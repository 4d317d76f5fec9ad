"""Pacing of a replay: when each event may leave, and a pacer that holds it back until then.

* neither `rate` nor `speed`: as fast as the producer goes;
* `rate=N`: at most N events per second (event i leaves no earlier than i / N s after the start);
* `speed=X`: event time runs X times faster than wall time (86400: one day of history a second).

A stall of the sender longer than `MAX_BEHIND_S` shifts the schedule instead of bursting to catch
up: the rate stays a cap, and event-time spacing is kept after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from streamval.errors import ConfigError
from streamval.stream.datasets.event_table import EventTable

MAX_SLEEP_S = 0.25
# Lateness the pacer still catches up (sleep granularity, a slow send); beyond it, it re-anchors.
MAX_BEHIND_S = 0.05


def pace_offsets(table: EventTable, rate: float | None, speed: float | None) -> list[float] | None:
    """Seconds after the start at which each event may leave, or None for no pacing."""
    if rate is not None and speed is not None:
        raise ConfigError("choose one of rate (events/s) and speed (event-time multiplier)")
    if rate is not None:
        if rate <= 0:
            raise ConfigError(f"rate must be positive, got {rate}")
        return [i / rate for i in range(len(table))]
    if speed is not None:
        if speed <= 0:
            raise ConfigError(f"speed must be positive, got {speed}")
        ts = table.frame["ts"].to_numpy()
        if len(ts) == 0:
            return []
        return [float(x) for x in (ts - ts[0]) / 1000.0 / speed]
    return None


class Pacer:
    """Holds event i back until `offsets[i]` seconds after the first `wait`, re-anchoring after
    a stall longer than `max_behind_s` instead of bursting to catch up."""

    def __init__(
        self,
        offsets: Sequence[float],
        *,
        max_behind_s: float = MAX_BEHIND_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.offsets = offsets
        self.max_behind_s = max_behind_s
        self.clock = clock
        self.sleep = sleep
        self.origin: float | None = None

    def wait(self, i: int) -> None:
        """Return when event `i` may leave."""
        now = self.clock()
        if self.origin is None:
            self.origin = now - self.offsets[i]
        due = self.origin + self.offsets[i]
        if now - due > self.max_behind_s:
            self.origin += now - due
            return
        # Sleeping in slices keeps pacing responsive to Ctrl-C.
        while (left := due - self.clock()) > 0:
            self.sleep(min(left, MAX_SLEEP_S))
