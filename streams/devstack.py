"""The whole system on one machine: a Kafka broker, the local ASR server and a worker.

Each part runs as its own process, exactly as in production, and is stopped on the way out.
``streams demo`` uses it to transcribe the bundled sample calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.config import Settings
from streams.localkafka import LocalKafka
from streams.topics import ensure_topics, topic_specs

__all__ = ["SAMPLES_DIR", "DevStack", "sample_events", "transcribe_samples"]

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
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

    def __init__(self, *, engine: str, file_roots: tuple[Path, ...], log: Callable[[str], None]):
        self.engine = engine
        self.file_roots = file_roots
        self.log = log
        self.run_dir = Path(tempfile.mkdtemp(prefix="streams-dev-"))
        self.broker: LocalKafka | None = None
        self.asr_url = ""
        self.children: list[_Child] = []

    def settings_env(self) -> dict[str, str]:
        """Environment of a worker in this stack."""
        assert self.broker is not None
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "STREAMS_ASR_BASE_URL": self.asr_url,
            "STREAMS_FILE_ROOTS": ",".join(str(p) for p in self.file_roots),
            "STREAMS_WEB_ENABLED": "false",
        }

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> _Child:
        log_path = self.run_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        child = _Child(name, proc, log_path)
        self.children.append(child)
        return child

    def start(self, workers: int = 1) -> None:
        """Start the broker, the ASR server and ``workers`` workers; raise if one cannot start."""
        t = time.perf_counter()
        self.broker = LocalKafka().start()
        self.log(f"Kafka {self.broker.bootstrap} ready in {time.perf_counter() - t:.1f} s")

        port = _free_port()
        self.asr_url = f"http://127.0.0.1:{port}"
        server = self._spawn(
            "asr-server",
            [
                "-m",
                "streams.asr_server.main",
                "--engine",
                self.engine,
                "--port",
                str(port),
                "--no-auth",
            ],
        )
        self._wait_http(server, f"{self.asr_url}/health", timeout_s=120)
        self.log(f"ASR server ({self.engine} engine) at {self.asr_url}")

        settings = Settings(kafka_bootstrap_servers=self.broker.bootstrap)
        asyncio.run(ensure_topics(self.broker.bootstrap, topic_specs(settings)))
        for i in range(workers):
            self._spawn(f"worker-{i}", ["-m", "streams", "worker"], self.settings_env())
        self.log(f"{workers} worker(s) started; logs in {self.run_dir}")

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
        if self.broker is not None:
            self.broker.close()


def sample_events(samples_dir: Path = SAMPLES_DIR) -> list[dict[str, Any]]:
    """The recording events of the bundled sample calls."""
    events = []
    for line in (samples_dir / "calls.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        spec = orjson.loads(line)
        path = samples_dir / spec.pop("file")
        events.append({"schema_version": 1, "audio_url": path.as_uri(), **spec})
    return events


async def transcribe_samples(
    stack: DevStack,
    events: list[dict[str, Any]],
    on_event: Callable[[dict[str, Any]], None],
    *,
    timeout_s: float = 600.0,
) -> list[dict[str, Any]]:
    """Publish ``events`` and pass every output event to ``on_event`` until all are terminal."""
    assert stack.broker is not None
    settings = Settings(kafka_bootstrap_servers=stack.broker.bootstrap)
    consumer = AIOKafkaConsumer(
        settings.topic_partial,
        settings.topic_final,
        settings.topic_failed,
        bootstrap_servers=stack.broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker.bootstrap)
    await consumer.start()
    await producer.start()
    pending = {event["recording_id"] for event in events}
    terminal: list[dict[str, Any]] = []
    try:
        for event in events:
            await producer.send_and_wait(
                settings.topic_recordings, orjson.dumps(event), key=event["recording_id"].encode()
            )
        async with asyncio.timeout(timeout_s):
            while pending:
                stack.check_children()
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        value = orjson.loads(record.value)
                        on_event(value)
                        if value.get("type") in ("final", "failed"):
                            pending.discard(value["recording_id"])
                            terminal.append(value)
    finally:
        await producer.stop()
        await consumer.stop()
    return terminal


@contextlib.contextmanager
def running(stack: DevStack, workers: int = 1) -> Iterator[DevStack]:
    """Start ``stack`` and always stop it."""
    try:
        stack.start(workers)
        yield stack
    finally:
        stack.stop()
