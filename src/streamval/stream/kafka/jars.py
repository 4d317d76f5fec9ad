"""The local broker's runtime: a Java executable and Apache Kafka's jars from Maven Central.

`resolve_classpath` runs `mvn dependency:build-classpath` on a generated POM once and caches the
classpath in a file (the jars themselves stay in ~/.m2), so the only prerequisites are Java 17+
and Maven.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from streamval.config import BrokerSettings
from streamval.errors import BrokerError, JavaNotFoundError

log = logging.getLogger(__name__)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamval.local</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- Not a declared dependency of kafka_2.13: without a binding the broker logs nothing. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def find_java() -> str:
    """Path of the `java` executable (JAVA_HOME first), or `JavaNotFoundError`."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise JavaNotFoundError(
            "Java not found: the local Kafka broker needs Java 17 or newer on PATH (or JAVA_HOME). "
            "Install it (Debian: apt-get install openjdk-17-jre-headless) or point streamval at an "
            "existing cluster with KAFKA_BOOTSTRAP_SERVERS."
        )
    return found


def resolve_classpath(settings: BrokerSettings) -> str:
    """The broker's classpath, resolved from Maven Central once and cached."""
    cache = settings.cache_dir / f"kafka-{settings.kafka_version}-log4j-{settings.log4j_version}"
    cp_file = cache / "classpath.txt"
    if cp_file.exists():
        classpath = cp_file.read_text().strip()
        if classpath and all(Path(p).exists() for p in classpath.split(os.pathsep)):
            return classpath
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(
            "Maven (mvn) not found: it resolves the Kafka jars from Maven Central. Install it "
            "(Debian: apt-get install maven) or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster."
        )
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "pom.xml").write_text(
        _POM.format(kafka=settings.kafka_version, log4j=settings.log4j_version)
    )
    log.info("resolving Kafka %s jars from Maven Central", settings.kafka_version)
    proc = subprocess.run(
        [mvn, "-B", "-q", "dependency:build-classpath", f"-Dmdep.outputFile={cp_file}"],
        cwd=cache,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not cp_file.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BrokerError(
            f"could not resolve org.apache.kafka:kafka_2.13:{settings.kafka_version} from Maven "
            f"Central (is the network to Maven Central reachable, and does the version exist?). "
            f"Maven said:\n{tail}"
        )
    return cp_file.read_text().strip()
