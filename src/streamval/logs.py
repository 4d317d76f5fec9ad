"""Structured logging: one JSON object (or a plain line) per record on stderr.

`LogOnce` logs the first occurrence of each kind of problem (e.g. a dead-letter reason) and stays
quiet for the rest, so a flood of bad input cannot flood the logs; counters carry the totals.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


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
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable line with `key=value` extras appended."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once for a CLI process; libraries' chatter stays at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kafka", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


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
