"""The local broker's runtime: Kafka's jars from Maven Central, cached once, and a ``java``.

There is no Debian broker package and no PyPI wheel with the Kafka jars, so the broker's runtime
classpath is copied from Maven Central with ``mvn dependency:copy-dependencies`` into a
self-contained cache, then ``kafka.Kafka`` runs straight from it (docs/kafka-faust.md §2).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

__all__ = [
    "JVM_OPTS",
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "RESOURCES",
    "BrokerStartError",
    "default_cache_dir",
    "ensure_jars",
    "java",
]

# The newest release on Maven Central (2026-11-23; 4.4.1 and 4.5.0 do not resolve). Faust's
# maintainers ran their live suite on 4.0.0 with aiokafka 0.14, which still uses protocol versions
# inside the 4.x baselines (KIP-896); the tests in tests/integration confirm it on this version.
KAFKA_VERSION = "4.4.0"
# kafka-server 4.4.0 brings log4j-api/log4j-core 2.25.5 (`mvn dependency:tree`) but no SLF4J
# binding; log4j-slf4j-impl must match log4j-core exactly.
LOG4J_VERSION = "2.25.5"

RESOURCES = Path(__file__).with_name("kafka_resources")
"""The pom, the broker properties and the log4j2 configuration."""
_MARKER = ".complete"
# The tarball's kafka-run-class.sh defaults minus its 1 GB fixed heap, which a test broker on a
# 2-core CI machine does not need; ExitOnOutOfMemoryError turns a wedged JVM into a clear exit.
JVM_OPTS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
JVM_OPTS += ["-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent"]
JVM_OPTS += ["-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    """The broker's jars could not be fetched, or it failed to format, start or answer in time."""


def default_cache_dir(base: Path | None = None) -> Path:
    """Return ``$STREAMS_CACHE_DIR``, or ``.cache`` under ``base`` (the current directory)."""
    return Path(base or ".", os.environ.get("STREAMS_CACHE_DIR") or ".cache").resolve()


def ensure_jars(cache_dir: Path) -> Path:
    """Return ``<cache_dir>/kafka-<version>/libs``, downloading the broker's jars once.

    Raises:
        BrokerStartError: ``mvn`` is missing or failed; its output is in the message.
    """
    cache_dir = cache_dir.resolve()
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    if _libs_complete(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerStartError("`mvn` is not on PATH; it is needed once to fetch the Kafka jars")
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Test sessions and the dev CLI may start at once; one downloads, the others wait and reuse.
    with (libs.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _libs_complete(libs):
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        started = time.monotonic()
        # The local repo lives in the cache too, so nothing touches ~/.m2.
        cmd = [mvn, "-q", "-B", "-f", str(RESOURCES / "pom.xml"), "dependency:copy-dependencies"]
        cmd += [f"-Dmaven.repo.local={cache_dir / 'm2'}", f"-DoutputDirectory={libs}"]
        cmd += ["-DincludeScope=runtime", f"-Dkafka.version={KAFKA_VERSION}"]
        cmd += [f"-Dlog4j.version={LOG4J_VERSION}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired as exc:
            raise BrokerStartError(f"mvn took over {exc.timeout:.0f} s: {cmd}") from exc
        jars = {p.name: p.stat().st_size for p in libs.glob("*.jar")} if libs.is_dir() else {}
        if done.returncode != 0 or f"kafka_2.13-{KAFKA_VERSION}.jar" not in jars:
            output = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
            what = f"mvn could not fetch the Kafka {KAFKA_VERSION} jars (exit {done.returncode})"
            raise BrokerStartError(f"{what}:\n{output}")
        # Written last, so an interrupted download is redone instead of half-used; the sizes
        # catch a jar truncated or replaced later.
        marker = {"kafka": KAFKA_VERSION, "log4j": LOG4J_VERSION, "jars": jars}
        (libs / _MARKER).write_text(json.dumps(marker, indent=1))
        log.info("fetched %d jars into %s in %.1f s", len(jars), libs, time.monotonic() - started)
    return libs


def _libs_complete(libs: Path) -> bool:
    try:
        marker = json.loads((libs / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("kafka") == KAFKA_VERSION
        and marker.get("log4j") == LOG4J_VERSION
        and isinstance(marker.get("jars"), dict)
        and all(
            (libs / jar).is_file() and (libs / jar).stat().st_size == size
            for jar, size in marker["jars"].items()
        )
    )


def java() -> str:
    """The ``java`` of ``$JAVA_HOME``, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home, "bin", "java")) if java_home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise BrokerStartError("no `java` on PATH or in $JAVA_HOME; Kafka 4.x needs Java 17+")
    return java
