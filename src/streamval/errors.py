"""Exceptions raised by streamval.

    StreamvalError                 root of everything streamval raises on purpose
    ├── ConfigError                a setting is missing, unknown or invalid (names the key)
    ├── BrokerError                the local Kafka broker could not be prepared, started or stopped
    │   └── JavaNotFoundError      no `java` on PATH
    ├── DataError                  an input file (history, price table, scenario) is unusable
    └── CheckpointError            a checkpoint cannot be read or does not fit the engine

Bad *events* are not exceptions: they are dead-lettered (see `streamval.stream.contract.schema`).
"""

from __future__ import annotations


class StreamvalError(Exception):
    """Root of the exceptions streamval raises on purpose."""


class ConfigError(StreamvalError):
    """A configuration value is missing, unknown or invalid."""


class BrokerError(StreamvalError):
    """The local Kafka broker could not be prepared, started or stopped."""


class JavaNotFoundError(BrokerError):
    """No Java runtime was found to run the local broker."""


class DataError(StreamvalError):
    """An input data file is malformed; the message names the row or column."""


class CheckpointError(StreamvalError):
    """A checkpoint is unreadable or incompatible with the engine."""
