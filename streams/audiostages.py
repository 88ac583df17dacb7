"""Where the blocking audio stages run: a thread of the worker, or a pool of processes.

Decode (FFmpeg through PyAV), the VAD and FLAC encoding are blocking C with Python between the
calls. In a thread they share the worker's one interpreter lock with the event loop that
streams every recording's requests, and a crash in FFmpeg (a bad file has found many) takes the
whole worker with it: every recording in flight is redone, and the crash-loop count
(streams/crashloop.py) is what finally stops the poison one.

In a pool of ``STREAMS_AUDIO_PROCESSES`` processes (``spawn``: nothing of the worker's threads
or sockets is inherited), the stages use more than one core, and a crash kills a pool process,
not the worker. The pool is then broken for every task it held; each of those recordings runs
its stage again in a process of its own, so that the one that crashes again alone is the one
that fails (``worker_crashed``, at that stage), and the others go on. What crosses the process
boundary is small: paths and plans in, a plan or a ``data:`` URI out; the PCM stays in the
spool files.

``STREAMS_AUDIO_PROCESSES=0`` keeps the stages in threads of the worker (one process per
worker, the behaviour before the pool); tests/benchmarks/bench_audio_stages.py measures both.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from streams.errors import WorkerCrashed

__all__ = ["AudioStages"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _child_init() -> None:
    # Ctrl-C reaches the whole process group: the worker shuts its pool down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Decoding is batch work; the worker's event loop streams every recording's requests and
    # keeps its Kafka session: when cores are short, the loop goes first.
    os.nice(10)
    # A worker that is killed cannot shut its pool down, and the pool's queue never ends for a
    # process that waits on it (every process holds its write end): leave with the worker.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _warm() -> None:
    """Import the stages' modules in a new process, so the first recording does not wait."""
    import streams.audiowork  # noqa: F401


class AudioStages:
    """Runs a blocking stage function in a thread (``processes`` 0) or in the process pool."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._context = multiprocessing.get_context("spawn")
        self.replaced = 0
        """Pools replaced after one of their processes died."""

    def start(self) -> None:
        """Start the pool's processes now rather than on the first recording."""
        if self.processes:
            pool = self._current()
            for _ in range(self.processes):
                pool.submit(_warm)

    async def run(self, stage: str, what: str, fn: Callable[..., T], /, *args: Any) -> T:
        """``fn(*args)`` off the event loop; ``what`` names the recording in log lines.

        Raises:
            WorkerCrashed: the process running ``fn`` died twice, the second time running
                nothing else (code ``worker_crashed``, stage ``stage``).
        """
        if not self.processes:
            return await asyncio.to_thread(fn, *args)
        pool = self._current()
        try:
            return await asyncio.wrap_future(pool.submit(fn, *args))
        except BrokenProcessPool:
            self._discard(pool)
        log.warning(
            "an audio process died while %s was in the %s stage: running it again in a "
            "process of its own",
            what,
            stage,
        )
        return await self._alone(stage, fn, *args)

    async def _alone(self, stage: str, fn: Callable[..., T], /, *args: Any) -> T:
        solo = ProcessPoolExecutor(1, mp_context=self._context, initializer=_child_init)
        try:
            return await asyncio.wrap_future(solo.submit(fn, *args))
        except BrokenProcessPool:
            raise WorkerCrashed(
                f"the process running the {stage} stage died on this recording, again when "
                "it ran on its own: it is not processed again (publish it anew to retry)",
                stage=stage,
            ) from None
        finally:
            # Not waited for: after a cancellation (the recording's deadline) the process ends
            # once its task does.
            solo.shutdown(wait=False, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=self._context, initializer=_child_init
            )
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        # Every task of a broken pool fails at once; the first to notice replaces it.
        if self._pool is pool:
            self._pool = None
            self.replaced += 1
            pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the pool's processes (at the worker's shutdown)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
