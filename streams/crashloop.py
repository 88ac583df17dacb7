"""Crash-loop protection: a recording that kills the worker is not processed for ever.

A poison file (a decoder crash, memory exhausted by one recording) kills the worker process;
its offset is not committed, so the restarted worker gets the same recording, dies again, and
the partition never moves on, each round perhaps billed again. So every start of a recording
is counted in the ``finalized`` table (streams/idempotency.py) and the count is on the broker
*before* the risky stages run (fetch, decode, VAD, encode, recognition). A terminal event
replaces the count; a count that is still there when the recording comes back means every
earlier start ended with the worker dying.

What a start decides (:func:`admission`), with ``STREAMS_MAX_STARTS`` = *M* (default 3):

- starts 1 .. *M*-1 run *together* with the worker's other recordings;
- start *M* runs *alone*: it waits until no other recording is in flight in this worker and
  holds new ones back while it runs (:class:`RunGate`), so that if the worker dies now, this
  recording is the one that killed it, not a neighbour that happened to share the process;
- a recording redelivered after *M* starts is answered with one failed event
  ``worker_crashed`` (not retryable) without being processed again.

Why *M* = 3: with 1, every recording in flight when a worker is killed for any reason (a
deploy's SIGKILL, the host, another recording's memory) would fail without a retry. With 2,
every such crash would make all of them run one by one afterwards. With 3, a crash that has
nothing to do with a recording costs it one redo at full parallelism; only a recording in
flight at two crashes in a row is suspected and given its last start alone; and a recording
fails ``worker_crashed`` only after the worker died while processing nothing else. A poison
recording costs the partition three worker restarts.

A recording's partial events carry its start as ``run``, and their attempt numbers go on from
those of the earlier runs (:class:`Run`): consumers that keep the highest attempt per chunk
keep the newest run's text, never a dead run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["FIRST_RUN", "TEST_ABORT_VARIABLE", "Admission", "Run", "RunGate", "admission"]


Admission = Literal["together", "alone", "refuse"]

TEST_ABORT_VARIABLE = "STREAMS_TEST_HOOK_ABORT_DECODING"
"""Tests only: decoding the recording with this id calls ``abort()``, as FFmpeg does when one of
its internal assertions fails on a bad file: the process running the decode stage dies of
SIGABRT (the worker, or its audio process). Never set it in production."""


@dataclass(frozen=True)
class Run:
    """One start of a recording: which one, and where its attempt numbers begin."""

    number: int
    """1 for the first start; one more for every start after a worker died processing it."""
    attempt_base: int = 0
    """Partial events of this run number their attempts from ``attempt_base + 1``: above every
    attempt an earlier run could have used (``STREAMS_ASR_ATTEMPTS`` per chunk each)."""


FIRST_RUN = Run(1)


def admission(starts_before: int, max_starts: int) -> Admission:
    """How a recording started ``starts_before`` times without a terminal event may start now."""
    if starts_before >= max_starts:
        return "refuse"
    if starts_before > 0 and starts_before + 1 == max_starts:
        return "alone"
    return "together"


class RunGate:
    """Recordings of one worker process run together, or one of them alone.

    Alone waits until the recordings running together are done, and while it waits or runs
    no new one starts (so a steady flow of recordings cannot starve it).
    """

    def __init__(self) -> None:
        self._together = 0
        self._alone = False
        self._waiting_alone = 0
        self._changed = asyncio.Condition()

    @property
    def running(self) -> int:
        """Recordings inside the gate now."""
        return self._together + int(self._alone)

    @contextlib.asynccontextmanager
    async def together(self) -> AsyncIterator[None]:
        """Run alongside the worker's other recordings (unless one runs or waits alone)."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._together += 1
        try:
            yield
        finally:
            async with self._changed:
                self._together -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Run as the worker's only recording."""
        async with self._changed:
            self._waiting_alone += 1
            try:
                await self._changed.wait_for(lambda: not self._alone and not self._together)
            finally:
                # Also when cancelled (a revoked partition): the ones held back may go on.
                self._waiting_alone -= 1
                self._changed.notify_all()
            self._alone = True
        try:
            yield
        finally:
            async with self._changed:
                self._alone = False
                self._changed.notify_all()

    def enter(self, how: Admission) -> contextlib.AbstractAsyncContextManager[None]:
        """The gate's side for an admitted start."""
        return self.alone() if how == "alone" else self.together()


def abort_if_chosen(recording_id: str) -> None:
    """The test hook of :data:`TEST_ABORT_VARIABLE`: die here, as a poison recording would."""
    chosen = os.environ.get(TEST_ABORT_VARIABLE)
    if chosen and chosen == recording_id:
        # Straight to stderr (the worker's log): an audio process has no logging set up.
        note = f"test hook {TEST_ABORT_VARIABLE}: aborting the decoder on {recording_id}\n"
        os.write(2, note.encode())
        os.abort()
