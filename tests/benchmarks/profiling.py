"""Sampling profiles of a running process with py-spy, summarised as the frames that cost most.

py-spy samples from outside the process (ptrace; root or ``CAP_SYS_PTRACE``), so the worker
runs unmodified; ``--nonblocking`` keeps it from pausing the worker at each sample, at the
price of the odd torn stack. The raw output is the collapsed-stack format flamegraph tools
read; :func:`summarise` folds it into self and inclusive shares of the busy samples.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["Spy", "summarise"]

# Leaf frames where a thread waits rather than works (blocking I/O, locks, the event loop's
# poll); py-spy's --nonblocking mode cannot always tell them from work.
_IDLE = (
    "EpollSelector.select (selectors.py",
    "Condition.wait (threading.py",
    "SocketIO.readinto (socket.py",
    "_worker (concurrent/futures/thread.py",
)


class Spy:
    """``py-spy record`` on one process for as long as the ``with`` block runs."""

    def __init__(self, pid: int, out: Path, *, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """Path of py-spy next to this interpreter or on PATH, or None."""
        beside = Path(sys.executable).with_name("py-spy")
        return str(beside) if beside.exists() else shutil.which("py-spy")

    def __enter__(self) -> Spy:
        exe = self.available()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        command = [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate)]
        command += ["--format", "raw", "--nonblocking", "--threads", "-o", str(self.out)]
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            self._proc.wait(timeout=60)


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Busy samples, and the frames with the largest self and inclusive shares of them."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames or frames[-1].startswith(_IDLE):
            continue
        if any("<frozen importlib" in f for f in frames):
            continue  # start-up imports, not the steady state being measured
        n = int(count)
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            if "(streams/" in frame:  # inclusive shares: where in the pipeline the time goes
                inclusive[frame] += n

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": frame, "share": round(n / busy, 4)} for frame, n in counter.most_common(top)
        ]

    return {"busy_samples": busy, "self": share(own), "inclusive": share(inclusive)}
