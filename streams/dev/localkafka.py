"""A real single-node Apache Kafka (KRaft) on loopback, run from the jars kafka_download.py fetched.

``secure=True`` (``streams kafka --secure``) runs it like a managed Kafka: SASL_SSL (PLAIN, SCRAM)
and mTLS listeners only, SCRAM users made at format time, a fresh CA and broker certificate at
each start (localca.py), StandardAuthorizer ACLs (kafka_resources/server-secure.properties).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.dev.kafka_download import (
    JVM_OPTS,
    KAFKA_VERSION,
    RESOURCES,
    BrokerStartError,
    default_cache_dir,
    ensure_jars,
    java,
)
from streams.kafka_security import PLAINTEXT, KafkaSecurity, SaslMechanism

if TYPE_CHECKING:
    from streams.kafka_acls import AclBinding

__all__ = ["DEFAULT_PORT", "LocalKafka"]

DEFAULT_PORT = 9092

log = logging.getLogger(__name__)
# Brokers still running when the interpreter exits (a crashed test session) get stopped.
_live: set[LocalKafka] = set()


def _free_ports(count: int) -> list[int]:
    # All sockets stay bound until every port is picked, so the ports differ from each other.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def _cluster_id(bootstrap: str, security: KafkaSecurity) -> str | None:
    """Return the cluster id a metadata request to ``bootstrap`` reports."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="localkafka-probe",
        request_timeout_ms=3000,
        **security.client_kwargs(),
    )
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    cluster_id: str | None = cluster.get("cluster_id")
    return cluster_id


def _probe(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> str | None:
    # A private loop in a helper thread: works under a running loop (async fixtures), where
    # asyncio.run refuses, and never resets the caller's current loop as asyncio.run does.
    with ThreadPoolExecutor(1, thread_name_prefix="localkafka-probe") as pool:
        return pool.submit(asyncio.run, _cluster_id(bootstrap, security)).result()


def _accepts(port: int) -> bool:
    # A cheap gate before the metadata probe: aiokafka logs an ERROR per refused bootstrap.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@atexit.register
def _stop_live() -> None:
    for broker in list(_live):
        broker.stop(timeout_s=10.0)


class LocalKafka:
    """One Kafka broker+controller process on loopback, with its own run directory.

    From async code call the blocking methods through ``asyncio.to_thread``, e.g.
    ``await asyncio.to_thread(broker.restart)``, so the event loop keeps serving clients.
    """

    def __init__(
        self,
        libs_dir: Path | None = None,
        *,
        port: int | None = None,
        run_dir: Path | None = None,
        config: Mapping[str, str] | None = None,
        secure: bool = False,
        users: Iterable[str] = ("admin", "worker"),
        ssl_port: int | None = None,
    ) -> None:
        self.libs_dir = libs_dir
        free = _free_ports(4)
        self.port = free[0] if port is None else port
        # Three distinct free ports always leave two that differ from a given client port.
        self.controller_port, free_ssl = [p for p in free[1:] if p != self.port][:2]
        self.ssl_port = free_ssl if ssl_port is None else ssl_port
        self.secure = secure
        """SASL_SSL on ``port`` and mTLS on ``ssl_port`` instead of PLAINTEXT, with ACLs."""
        # "admin" is the super user that creates topics and ACLs; the others get only what
        # an ACL grants them.
        self.users = tuple(dict.fromkeys(("admin", *users))) if secure else ()
        self._own_run_dir = run_dir is None
        self.run_dir = Path(tempfile.mkdtemp(prefix="localkafka-")) if run_dir is None else run_dir
        self.log_path = self.run_dir / "server.log"
        self.started_in_s: float | None = None
        self.cluster_id: str | None = None
        self._config = dict(config or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def is_running(self) -> bool:
        """Whether the broker process exists and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def ssl_bootstrap(self) -> str:
        """The ``host:port`` of the mTLS listener (secure mode only)."""
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def secrets_dir(self) -> Path:
        """Passwords of the SCRAM/PLAIN users, one ``<user>.password`` file each (mode 0600)."""
        return self.run_dir / "secrets"

    @property
    def tls_dir(self) -> Path:
        """The CA (``ca.pem``), the broker's certificate and one client certificate per user."""
        return self.run_dir / "tls"

    def password(self, user: str) -> str:
        """The password of ``user`` (kept in :attr:`secrets_dir`, so a restart keeps it)."""
        return (self.secrets_dir / f"{user}.password").read_text()

    def security(
        self, user: str = "admin", mechanism: SaslMechanism = "SCRAM-SHA-512"
    ) -> KafkaSecurity:
        """How ``user`` connects to :attr:`bootstrap`: SASL_SSL with ``mechanism`` (PLAINTEXT
        when the broker is not secure)."""
        if not self.secure:
            return PLAINTEXT
        from pydantic import SecretStr

        return KafkaSecurity(
            protocol="SASL_SSL",
            mechanism=mechanism,
            username=user,
            password=SecretStr(self.password(user)),
            cafile=self.tls_dir / "ca.pem",
        )

    def mtls_security(self, user: str) -> KafkaSecurity:
        """How ``user`` connects to :attr:`ssl_bootstrap`: TLS with its client certificate."""
        return KafkaSecurity(
            protocol="SSL",
            cafile=self.tls_dir / "ca.pem",
            certfile=self.tls_dir / f"{user}.crt.pem",
            keyfile=self.tls_dir / f"{user}.key.pem",
        )

    def grant(self, bindings: list[AclBinding]) -> None:
        """Write ACLs as the super user ``admin`` (secure mode; blocking, see the class doc)."""
        from streams.kafka_acls import create_acls

        with ThreadPoolExecutor(1, thread_name_prefix="localkafka-acls") as pool:
            work = create_acls(self.bootstrap, self.security("admin"), bindings)
            pool.submit(asyncio.run, work).result()

    def start(self, timeout_s: float = 60.0) -> LocalKafka:
        """Format storage if needed, launch ``kafka.Kafka`` and wait until it answers metadata."""
        if self.is_running:
            return self
        if self.libs_dir is None:
            self.libs_dir = ensure_jars(default_cache_dir())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self._make_credentials()
        properties = self._write_properties()
        self._format(properties)
        self._process = self._launch("kafka.Kafka", str(properties))
        _live.add(self)
        started = time.monotonic()
        self.wait_ready(timeout_s)
        self.started_in_s = time.monotonic() - started
        log.info("kafka %s ready at %s in %.1f s", KAFKA_VERSION, self.bootstrap, self.started_in_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll with a metadata request until this broker answers with its own cluster id.

        Comparing cluster ids keeps another broker already on the port from passing for ours;
        ours then fails to bind and exits, and the log tail says so.

        Raises:
            BrokerStartError: the process exited or did not answer within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        last = f"nothing listens on port {self.port}"
        while True:
            if not self.is_running:
                code = self._process.returncode if self._process else None
                self.stop()
                raise BrokerStartError(self.failure(f"the broker exited with code {code}"))
            try:
                if _accepts(self.port):
                    cluster_id = _probe(self.bootstrap, self.security())
                    if cluster_id == self.cluster_id:
                        return
                    last = f"answered for cluster {cluster_id!r}, not ours {self.cluster_id!r}"
            except (KafkaError, OSError) as exc:  # OSError covers TimeoutError too
                last = repr(exc)
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerStartError(self.failure(f"not ready after {timeout_s:g} s ({last})"))
            time.sleep(0.25)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Send SIGTERM, wait up to ``timeout_s`` for a clean shutdown, then SIGKILL."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("kafka ignored SIGTERM for %.0f s; killing it", timeout_s)
                process.kill()
                process.wait()
        # Forgotten only once it is gone: if a second Ctrl-C interrupts the wait, atexit retries.
        self._process = None
        _live.discard(self)

    def restart(self, timeout_s: float = 60.0) -> None:
        """Stop the broker and start it again on the same ports and data."""
        self.stop()
        self.start(timeout_s)

    def close(self) -> None:
        """Stop the broker and delete the run directory if this object created it."""
        self.stop()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        """Return the last ``n`` lines of the broker's log (JVM output included)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:]) if n > 0 else ""

    def __enter__(self) -> LocalKafka:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"LocalKafka({self.bootstrap!r}, {state}, run_dir={str(self.run_dir)!r})"

    def _write_properties(self) -> Path:
        template = Template((RESOURCES / "server.properties").read_text())
        data_dir = self.run_dir / "data"
        text = template.substitute(
            port=self.port, controller_port=self.controller_port, data_dir=data_dir
        )
        if self.secure:
            secure = Template((RESOURCES / "server-secure.properties").read_text())
            # PLAIN logins are checked against the JAAS entries; SCRAM ones against the
            # credentials StorageTool wrote into the metadata at format time.
            plain_users = "".join(f' user_{u}="{self.password(u)}"' for u in self.users)
            text += "\n" + secure.substitute(
                port=self.port,
                ssl_port=self.ssl_port,
                controller_port=self.controller_port,
                tls_dir=self.tls_dir,
                broker_password=self.password("broker"),
                plain_users=plain_users,
            )
        extra = "".join(f"{key}={value}\n" for key, value in self._config.items())
        path = self.run_dir / "server.properties"
        path.write_text(text + ("\n# overrides\n" + extra if extra else ""))
        return path

    def _format(self, properties: Path) -> None:
        meta = self.run_dir / "data" / "meta.properties"
        if not meta.exists():
            # Kafka's Uuid.randomUuid() form, without a JVM round trip; like it, never a leading
            # "-", which the storage tool's argument parser would take for an option.
            cluster_id = "-"
            while cluster_id.startswith("-"):
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            args: tuple[str, ...] = ("format", "-t", cluster_id, "-c", str(properties))
            for user in self.users:
                for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                    args += (
                        "--add-scram",
                        f"{mechanism}=[name={user},password={self.password(user)}]",
                    )
            process = self._launch("kafka.tools.StorageTool", *args)
            try:
                code = process.wait(60)
            except subprocess.TimeoutExpired:
                code = None
                process.kill()
                process.wait()
            if code != 0:
                raise BrokerStartError(self.failure(f"StorageTool format failed (exit {code})"))
        # Read back, not remembered: a reused run dir keeps the id it was formatted with.
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                self.cluster_id = line.partition("=")[2].strip()

    def _make_credentials(self) -> None:
        try:
            from streams.dev.localca import LocalCA
        except ImportError as exc:  # a dev dependency: workers never need it
            raise BrokerStartError(
                f"secure mode makes its certificates with the `cryptography` package ({exc}); "
                "install the dev extra: pip install -e '.[dev]'"
            ) from None

        # Passwords once per run dir (SCRAM ones are fixed at format time); URL-safe, so they
        # need no quoting in the JAAS lines or StorageTool's [name=…,password=…] syntax.
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for user in ("broker", *self.users):
            path = self.secrets_dir / f"{user}.password"
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(18))
        # A new CA and certificates at every start: nothing stale, nothing to renew.
        shutil.rmtree(self.tls_dir, ignore_errors=True)
        self.tls_dir.mkdir(mode=0o700, parents=True)
        ca = LocalCA(self.tls_dir)
        ca.issue("broker", server=True)
        for user in self.users:
            ca.issue(user)

    def _launch(self, main_class: str, *args: str) -> subprocess.Popen[bytes]:
        assert self.libs_dir is not None
        # The java launcher expands the `libs/*` classpath itself; no shell is involved.
        classpath = ["-cp", str(self.libs_dir / "*"), main_class, *args]
        logging_config = f"-Dlog4j2.configurationFile={RESOURCES / 'log4j2.properties'}"
        cmd = [java(), *JVM_OPTS, logging_config, *classpath]
        with self.log_path.open("ab") as out:
            out.write(f"--- localkafka: {main_class} {' '.join(args)}\n".encode())
            out.flush()
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def failure(self, what: str) -> str:
        """``what`` went wrong, with the first ERROR of the latest launch and the log's tail."""
        # A fatal error is followed by hundreds of shutdown lines, so quote the first ERROR of
        # the latest launch (the text after our last marker line) above the tail.
        lines = self.log_tail(5000).rpartition("--- localkafka:")[2].splitlines()
        first = next((i for i, line in enumerate(lines) if "] ERROR " in line), None)
        text = f"kafka at {self.bootstrap}: {what}; log {self.log_path}"
        if first is not None:
            text += "\nfirst error:\n" + "\n".join(lines[first : first + 2])
        return text + "\nlast lines:\n" + "\n".join(lines[-30:])
