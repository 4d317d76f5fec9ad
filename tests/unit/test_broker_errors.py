"""The local broker fails with a clear message when Java or Maven Central is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamval.config import BrokerSettings
from streamval.errors import BrokerError, JavaNotFoundError
from streamval.stream.kafka.broker import LocalBroker
from streamval.stream.kafka.jars import find_java, resolve_classpath


def test_missing_java_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match=r"Java 17.*KAFKA_BOOTSTRAP_SERVERS"):
        find_java()
    broker = LocalBroker(BrokerSettings(home=tmp_path / "b", cache_dir=tmp_path / "c"))
    with pytest.raises(JavaNotFoundError):
        broker.start()
    assert broker.state() is None


def test_unreachable_maven_central_is_explained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A stand-in mvn that fails the way Maven does without network.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(
        "#!/bin/sh\necho '[ERROR] Failed to execute goal: Could not transfer artifact "
        "org.apache.kafka:kafka_2.13:pom:4.1.1 from/to central: Network is unreachable'\nexit 1\n"
    )
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BrokerError, match=r"(?s)Maven Central.*Network is unreachable"):
        resolve_classpath(BrokerSettings(cache_dir=tmp_path / "cache"))


def test_missing_maven_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="Maven"):
        resolve_classpath(BrokerSettings(cache_dir=tmp_path / "cache"))


def test_status_of_a_broker_that_never_ran(tmp_path: Path) -> None:
    broker = LocalBroker(BrokerSettings(home=tmp_path))
    assert broker.state() is None
    assert broker.stop() is False
    with pytest.raises(BrokerError, match="no local broker"):
        _ = broker.bootstrap
