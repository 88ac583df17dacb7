"""Processes of the end-to-end benchmarks: the scripted server, workers, /proc readings.

Each part runs as its own process, so that the CPU and memory read from ``/proc`` belong to
one part alone. :class:`Deployment` puts one scenario's parts together on fresh topics.

``python -m tests.benchmarks.harness scripted-server CONFIG_JSON`` is how the server starts:
the scripted engine with a journal big enough for a whole scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.benchmarks.corpus import AudioFile, recording_events
from tests.benchmarks.kafka_io import Record, Topics, collect, publish

__all__ = [
    "Bench",
    "Deployment",
    "Profile",
    "ScriptedServer",
    "WorkerProcess",
    "cpu_seconds",
    "memory_kib",
    "percentile",
    "pid_of",
    "running",
]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_BANNER = re.compile(rb"listening on (http://\S+)")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a process (and of its waited-for children) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None when there are no values."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


@dataclass(frozen=True)
class Profile:
    """The scripted engine's pace: the latency a request sees from a recogniser."""

    first_delta_s: float = 0.05
    first_delta_per_audio_s: float = 0.0
    """Extra wait before the first delta per second of audio."""
    delta_interval_s: float = 0.02
    words_per_second: float = 2.5
    """Words in the transcript per second of audio; deltas carry ``words_per_delta`` each."""
    words_per_delta: int = 3
    transcript: str | None = None

    def recognition_s(self, audio_s: float) -> float:
        """Server time of one request of ``audio_s`` seconds under this profile."""
        words = (
            self.transcript.count(" ") + 1 if self.transcript else self.words_per_second * audio_s
        )
        deltas = max(1, round(words / self.words_per_delta))
        return (
            self.first_delta_s
            + self.first_delta_per_audio_s * audio_s
            + (deltas - 1) * self.delta_interval_s
        )


class ScriptedServer:
    """The project's scripted ASR server as a child process, and its journal."""

    def __init__(self, profile: Profile, log_dir: Path, name: str = "bench") -> None:
        self.profile = profile
        self.log_path = log_dir / f"{name}-asr-server.log"
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ScriptedServer:
        config = {**asdict(self.profile), "journal_size": 1_000_000}
        command = [sys.executable, "-m", "tests.benchmarks.harness", "scripted-server"]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [*command, orjson.dumps(config).decode()], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while not (found := _BANNER.search(self.log_path.read_bytes())):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ASR server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.url = found.group(1).decode()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            _stop(self._proc)

    @property
    def pid(self) -> int:
        """Process id of the server."""
        assert self._proc is not None
        return self._proc.pid

    def journal(self) -> dict[str, dict[str, Any]]:
        """The journal by request id (every request since the last reset)."""
        entries = httpx.get(f"{self.url}/scripted/journal", timeout=60).json()["entries"]
        return {entry["request_id"]: entry for entry in entries}

    def reset(self) -> None:
        """Forget the journal."""
        httpx.post(f"{self.url}/scripted/reset", timeout=10).raise_for_status()


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class WorkerProcess:
    """A child process (``streams worker`` or the baseline) with its log and /proc readings."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> WorkerProcess:
        """Start it in a scratch directory (faust writes its data directory there)."""
        workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env, "PYTHONPATH": str(Path.cwd())},
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.time()
        return self

    @property
    def pid(self) -> int:
        """Process id (the worker must have been started)."""
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        """Raise with the log tail if the process died."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.command[2:]} exited:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.proc is not None:
            _stop(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process printed."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running(*workers: WorkerProcess) -> Iterator[tuple[WorkerProcess, ...]]:
    """Start the workers and always stop them."""
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def _serve_scripted(config_json: str) -> None:
    from streams.asr_server.main import serve
    from streams.asr_server.scripted import ScriptedConfig

    config = ScriptedConfig(**orjson.loads(config_json))
    serve("scripted", "127.0.0.1", 0, None, config, max_audio_s=600.0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["scripted-server"]:
        _serve_scripted(sys.argv[2])
    else:
        sys.exit(f"usage: python -m {__spec__.name} scripted-server CONFIG_JSON")


def pid_of(marker: str) -> int | None:
    """The process whose command line contains ``marker`` (e.g. the broker's run directory)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (proc / "cmdline").read_bytes():
                    return int(proc.name)
    return None


@dataclass
class Bench:
    """What the scenarios share: the broker, the audio, where results and logs go."""

    bootstrap: str
    broker_pid: int | None
    corpus: list[AudioFile]
    audio_root: Path
    results: Path
    logs: Path
    quick: bool
    profile: bool


class Deployment:
    """One scenario's system: fresh topics, the scripted server and service workers."""

    def __init__(
        self,
        bench: Bench,
        profile: Profile,
        *,
        name: str,
        partitions: int,
        concurrency: int,
        output_partitions: int | None = None,
    ) -> None:
        self.bench = bench
        self.name = name
        self.partitions = partitions
        self.concurrency = concurrency
        self.output_partitions = output_partitions
        self.server = ScriptedServer(profile, bench.logs, name)
        self.topics = Topics(bench.bootstrap, f"bench-{name}-{uuid.uuid4().hex[:6]}")
        self.workers: list[WorkerProcess] = []
        self._warmed = 0

    def __enter__(self) -> Deployment:
        self.server.__enter__()
        asyncio.run(self.topics.create(self.partitions, self.output_partitions))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.__exit__()

    def add_worker(self) -> WorkerProcess:
        """Start one more ``streams worker`` in the consumer group."""
        env = self.topics.worker_env(
            self.server.url, self.partitions, self.concurrency, self.bench.audio_root
        )
        log_path = self.bench.logs / f"{self.name}-worker-{len(self.workers)}.log"
        worker = WorkerProcess([sys.executable, "-m", "streams", "worker"], env, log_path)
        self.workers.append(worker.start())
        return worker

    def add_baseline(self, threads: int) -> WorkerProcess:
        """Start the hand-written consumer (``baseline_worker.py``) instead of the service."""
        topics = self.topics
        command = [sys.executable, "-m", "tests.benchmarks.baseline_worker"]
        command += ["--bootstrap", self.bench.bootstrap, "--topic", topics.recordings]
        command += ["--partial-topic", topics.outputs["partial"]]
        command += ["--final-topic", topics.outputs["final"], "--group", f"{topics.prefix}-base"]
        command += ["--asr-url", self.server.url, "--threads", str(threads)]
        log_path = self.bench.logs / f"{self.name}-baseline-{len(self.workers)}.log"
        worker = WorkerProcess(command, {}, log_path)
        self.workers.append(worker.start())
        return worker

    @property
    def durations(self) -> dict[str, float]:
        """Length of each corpus recording, by audio URL."""
        return {f.path.as_uri(): f.duration_s for f in self.bench.corpus}

    def check(self) -> None:
        """Raise if a worker died."""
        for worker in self.workers:
            worker.check()

    def events(self, count: int, *, start: int = 0) -> list[dict[str, Any]]:
        """``count`` recording events over the corpus, spread evenly over the partitions."""
        return recording_events(
            self.bench.corpus, count, self.topics.prefix, partitions=self.partitions, start=start
        )

    async def warm_up(self, count: int = 1, timeout_s: float = 180.0) -> None:
        """Push ``count`` short recordings through, so that imports and connections are done."""
        short = min(self.bench.corpus, key=lambda f: f.duration_s)
        events = recording_events(
            [short], count, f"{self.topics.prefix}-warm{self._warmed}", partitions=self.partitions
        )
        self._warmed += 1
        await publish(self.bench.bootstrap, self.topics.recordings, events)
        await self.terminal({str(e["recording_id"]) for e in events}, timeout_s=timeout_s)
        self.server.reset()

    async def terminal(self, ids: set[str], *, timeout_s: float) -> dict[str, Record]:
        """Wait for the terminal event of every recording in ``ids``; return them by id."""
        found: dict[str, Record] = {}
        read = 0

        def done(records: list[Record]) -> bool:
            nonlocal read
            for record in records[read:]:
                found.setdefault(record.value["recording_id"], record)
            read = len(records)
            return ids <= found.keys()

        topics = [self.topics.outputs["final"], self.topics.outputs["failed"]]
        await collect(self.bench.bootstrap, topics, done, timeout_s=timeout_s, check=self.check)
        return {key: found[key] for key in ids}
