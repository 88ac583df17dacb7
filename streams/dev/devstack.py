"""The whole system on one machine: a Kafka broker, the local ASR server and workers.

Each part is its own ``streams`` command in its own process session, exactly as in
production: Ctrl-C in the terminal reaches only the parent, which then stops the parts in
order (workers first, so they commit; the broker last). ``streams dev`` runs it in the
foreground and ``streams demo`` transcribes the bundled sample calls on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from streams.client import Connection, Follower, send
from streams.config import Settings
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import ensure_topics, topic_specs

__all__ = ["DevStack", "running", "sigterm_as_interrupt", "transcribe_samples"]

_KAFKA_READY = re.compile(rb"ready at (\S+:\d+)")
_ASR_READY = re.compile(rb"listening on (http://\S+)")


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    read_to: int = 0

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def new_lines(self) -> list[str]:
        """Lines written to the log since the last call."""
        with self.log_path.open("rb") as log:
            log.seek(self.read_to)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self.read_to += end
        return data[:end].decode(errors="replace").splitlines()

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DevStack:
    """Starts and stops the broker, the ASR server and the workers of a local run."""

    def __init__(
        self,
        *,
        engine: str,
        file_roots: tuple[Path, ...],
        log: Callable[[str], None],
        kafka_port: int = 0,
        asr_port: int = 0,
        metrics: bool = True,
    ) -> None:
        self.engine = engine
        self.file_roots = file_roots
        self.log = log
        self.kafka_port = kafka_port
        self.asr_port = asr_port
        self.metrics = metrics
        self.run_dir = Path(tempfile.mkdtemp(prefix="streams-dev-"))
        self.bootstrap = ""
        self.asr_url = ""
        self.metrics_urls: list[str] = []
        self.children: list[_Child] = []
        self.security: KafkaSecurity = PLAINTEXT
        """How this stack's clients and workers reach its broker (a local PLAINTEXT one)."""

    def settings_env(self) -> dict[str, str]:
        """Environment of a worker in this stack."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            # The stack's own broker, whatever KAFKA_SECURITY_PROTOCOL says for another.
            **self.security.env(),
            "STREAMS_ASR_BASE_URL": self.asr_url,
            "STREAMS_FILE_ROOTS": ",".join(str(p) for p in self.file_roots),
            "STREAMS_WEB_ENABLED": "true" if self.metrics else "false",
        }

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> _Child:
        log_path = self.run_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streams", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                # Own session: the terminal's Ctrl-C reaches only us, and we stop in order.
                start_new_session=True,
            )
        child = _Child(name, proc, log_path)
        self.children.append(child)
        return child

    def start(self, workers: int = 1) -> None:
        """Start the broker, the ASR server and ``workers`` workers; raise if one cannot start."""
        t = time.perf_counter()
        kafka = self._spawn("kafka", ["kafka", "--port", str(self.kafka_port)])
        # The first run downloads the Kafka jars from Maven Central (about 10 s).
        self.bootstrap = self._wait_line(kafka, _KAFKA_READY, timeout_s=300)
        took = time.perf_counter() - t
        self.log(f"Kafka at {self.bootstrap} (pid {kafka.proc.pid}, {took:.1f} s)")

        t = time.perf_counter()
        server = self._spawn(
            "asr-server",
            ["asr-server", "--engine", self.engine, "--port", str(self.asr_port), "--no-auth"],
        )
        # The whisper engine loads its model before it listens.
        self.asr_url = self._wait_line(server, _ASR_READY, timeout_s=300)
        self._wait_http(server, f"{self.asr_url}/health", timeout_s=30)
        took = time.perf_counter() - t
        self.log(
            f"ASR server ({self.engine} engine) at {self.asr_url} "
            f"(pid {server.proc.pid}, {took:.1f} s)"
        )

        settings = Settings(kafka_bootstrap_servers=self.bootstrap)
        asyncio.run(ensure_topics(self.bootstrap, topic_specs(settings), security=self.security))
        for i in range(workers):
            env = self.settings_env()
            if self.metrics:
                port = _free_port()
                env["STREAMS_WEB_PORT"] = str(port)
                self.metrics_urls.append(f"http://127.0.0.1:{port}/metrics")
            worker = self._spawn(f"worker-{i}", ["worker"], env)
            self.log(f"worker-{i} started (pid {worker.proc.pid})")
        self.log(f"Logs in {self.run_dir}")

    def _wait_line(self, child: _Child, pattern: re.Pattern[bytes], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = pattern.search(child.log_path.read_bytes())
            if found:
                return found.group(1).decode()
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"{child.name} not ready after {timeout_s} s:\n{child.tail()}")

    def _wait_http(self, child: _Child, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited:\n{child.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{child.name} not ready after {timeout_s} s:\n{child.tail()}")

    def check_children(self) -> None:
        """Raise if a child process died."""
        for child in self.children:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited unexpectedly:\n{child.tail()}")

    def stop(self) -> None:
        """Stop workers first (they commit), then the server, then the broker."""
        for child in reversed(self.children):
            child.stop()


async def transcribe_samples(
    stack: DevStack,
    events: list[dict[str, Any]],
    on_event: Callable[[dict[str, Any]], None],
    *,
    timeout_s: float = 600.0,
) -> list[dict[str, Any]]:
    """Publish ``events`` and pass every output event to ``on_event`` until all are terminal."""
    settings = Settings(kafka_bootstrap_servers=stack.bootstrap)
    connection = Connection(stack.bootstrap, stack.security)
    outputs = [settings.topic_partial, settings.topic_final, settings.topic_failed]
    pending = {event["recording_id"] for event in events}
    terminal: list[dict[str, Any]] = []
    async with Follower(connection, outputs, from_beginning=True) as follower:
        await send(connection, settings.topic_recordings, events)
        async with asyncio.timeout(timeout_s):
            while pending:
                stack.check_children()
                for event, _raw in await follower.poll(timeout_s=0.5):
                    on_event(event)
                    if event.get("type") in ("final", "failed"):
                        pending.discard(event["recording_id"])
                        terminal.append(event)
    return terminal


@contextlib.contextmanager
def running(stack: DevStack, workers: int = 1) -> Iterator[DevStack]:
    """Start ``stack`` and always stop it."""
    try:
        stack.start(workers)
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs.

    SIGTERM (docker stop, kill) must end in the same orderly shutdown as Ctrl-C.
    """
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
