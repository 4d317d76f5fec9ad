"""Broker outages: retry with backoff up to a bound, then stop with a clear message.

Every call that needs the broker (poll's probe, send + flush, commit) reports to one `Outage`:
`failed(exc)` when it could not reach it (returns how long to back off; raises `OutageError`
once the broker has been unreachable for longer than `consumer.outage_timeout_s`), `ok()` when
it worked again. Outages are counted and timed for the metrics and readiness.

    >>> clock = iter([0.0, 10.0, 20.0, 400.0]).__next__
    >>> outage = Outage(300.0, "kafka:9092", clock=clock)
    >>> outage.failed(TimeoutError("no answer")) > 0
    True
    >>> outage.ok(), outage.count
    (10.0, 1)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from streamval.errors import BrokerError

log = logging.getLogger(__name__)

# Backoff between retries: doubling from 0.2 s to 5 s, so a broker that comes back is used
# again within 5 s, and a long outage costs one attempt per 5 s per call site.
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0


class OutageError(BrokerError):
    """The broker stayed unreachable for longer than the configured bound."""


class Outage:
    """Tracks whether the broker is reachable; see the module docstring."""

    def __init__(
        self,
        bound_s: float,
        where: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_start: Callable[[], None] | None = None,
        on_end: Callable[[float], None] | None = None,
    ) -> None:
        self.bound_s = bound_s
        self.where = where
        self.count = 0
        self.since: float | None = None
        self._clock = clock
        self._attempts = 0
        self._on_start = on_start
        self._on_end = on_end
        self._last_error = ""

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException, what: str = "") -> float:
        """The broker could not be reached; the seconds to wait before retrying."""
        now = self._clock()
        self._last_error = f"{what + ': ' if what else ''}{type(exc).__name__}: {exc}"
        if self.since is None:
            self.since = now
            self.count += 1
            self._attempts = 0
            log.warning(
                "Kafka unreachable, retrying with backoff",
                extra={"bootstrap": self.where, "error": self._last_error, "bound_s": self.bound_s},
            )
            if self._on_start is not None:
                self._on_start()
        elapsed = now - self.since
        if elapsed > self.bound_s:
            raise OutageError(
                f"the Kafka cluster at {self.where} has been unreachable for {elapsed:.0f} s, "
                f"longer than consumer.outage_timeout_s ({self.bound_s:g} s); last error: "
                f"{self._last_error}. Nothing was committed for the events in flight: a restart "
                "re-reads them"
            )
        self._attempts += 1
        return float(min(_BACKOFF_MAX_S, _BACKOFF_MIN_S * 2 ** (self._attempts - 1)))

    def ok(self) -> float:
        """The broker answered; the length of the outage that ended (0 if there was none)."""
        if self.since is None:
            return 0.0
        seconds = self._clock() - self.since
        self.since = None
        log.warning("Kafka reachable again", extra={"after_s": round(seconds, 1)})
        if self._on_end is not None:
            self._on_end(seconds)
        return seconds

    def elapsed(self) -> float:
        """Seconds since the current outage began (0 when there is none)."""
        return 0.0 if self.since is None else self._clock() - self.since
