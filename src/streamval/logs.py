"""Structured logging: one JSON object (or a plain line) per record on stderr.

`LogOnce` logs the first occurrence of each kind of problem (e.g. a dead-letter reason) and stays
quiet for the rest, so a flood of bad input cannot flood the logs; counters carry the totals.

Credentials never reach the logs: `register_secrets` (called with the settings' passwords and
tokens when a command starts) makes both formatters replace them with `***` wherever they
appear, in messages, extra fields and tracebacks, whichever library logged them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SECRETS: set[str] = set()
REDACTED = "***"


def register_secrets(values: Any) -> None:
    """Scrub these strings from every log line from now on (values shorter than 4 characters
    would blank out ordinary words, and are left alone)."""
    _SECRETS.update(str(v) for v in values if v and len(str(v)) >= 4)


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, default=str))


class TextFormatter(logging.Formatter):
    """Human-readable line with `key=value` extras appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return scrub(line)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for a CLI process; libraries' chatter stays at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Expected while a group forms or after a broker restart (kafka-python retries them), yet
    # logged as warnings that look like faults; real trouble shows as an outage or an error.
    handler.addFilter(_ExpectedRetries())


class _ExpectedRetries(logging.Filter):
    """Demote kafka-python's warnings about retriable coordinator errors to debug."""

    EXPECTED = ("NotCoordinator", "CoordinatorNotAvailable", "CoordinatorLoadInProgress")

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.WARNING
            and record.name.startswith("kafka.")
            and any(name in record.getMessage() for name in self.EXPECTED)
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class LogOnce:
    """Log each distinct `kind` once per process (or per instance), at WARNING.

    >>> once = LogOnce(logging.getLogger("doc"))
    >>> once("invalid_json", "first bad message"), once("invalid_json", "second")
    (True, False)
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()

    def __call__(self, kind: str, message: str, **fields: Any) -> bool:
        if kind in self._seen:
            return False
        self._seen.add(kind)
        self._logger.warning(
            "%s (further %r problems are counted, not logged)", message, kind, extra=fields
        )
        return True
