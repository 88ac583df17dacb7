"""The idempotency protocol: give each recording event exactly one terminal event, once.

Before the pipeline runs, the ledger (streams/idempotency.py) says whether the recording is
answered already: then the event is acknowledged without recognition and nothing is published,
or the kept final event is published again if the worker died while publishing it. After the
terminal event is acknowledged by the broker, its entry is written to the table's changelog,
and only then does the agent's loop move on to let the offset be committed.

Crash loops (streams/crashloop.py): before the pipeline runs, the start is counted in the same
table and the count is on the broker; a recording that comes back after ``max_starts`` starts
without a terminal event gets one failed event ``worker_crashed`` instead of another start, and
its last allowed start runs alone in the worker.

Everything here must run inside the agent's iteration of the recording event: the ledger's
writes go to the changelog partition of the event being processed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from streams.backend_choice import backend_of, choose
from streams.crashloop import RunGate, admission
from streams.errors import PipelineError, WorkerCrashed
from streams.events import failed_event, recording_id_of
from streams.filetrans_task import TaskStarter
from streams.idempotency import Ledger
from streams.metrics import Metrics
from streams.pipeline import Pipeline
from streams.publish import EventPublisher

__all__ = ["EXIT_CANNOT_PUBLISH", "Answerer"]

log = logging.getLogger(__name__)

EXIT_CANNOT_PUBLISH = 75
"""EX_TEMPFAIL: no terminal event can be published; a supervisor should start the worker again."""


@dataclass(frozen=True)
class Answerer:
    """Answers recording events with the pipeline, keeping the ledger's protocol."""

    pipeline: Pipeline
    publisher: EventPublisher
    """The pipeline's publisher: it keeps a final in the ledger before it goes out."""
    ledger: Ledger
    metrics: Metrics
    max_starts: int
    """Starts without a terminal event after which a recording is failed ``worker_crashed``."""
    attempts: int
    """Attempts per request of one start, for the next start's attempt numbers."""
    default_backend: str = "dashscope"
    """``STREAMS_ASR_BACKEND``: for recording events that name no ``recognition.backend``."""
    filetrans: TaskStarter | None = None
    """Submits filetrans tasks (streams/filetrans_task.py); None: filetrans is not set up."""
    gate: RunGate = field(default_factory=RunGate)
    """One per worker process: "alone" means alone in this process."""

    async def __call__(self, raw: bytes, where: str) -> None:
        """Answer the recording event ``raw`` read at ``where`` (``topic[partition]@offset``).

        Returns once its terminal event and ledger entry are on the broker (or it needs none);
        never raises: if no terminal event can be published, the process exits.
        """
        try:
            await self._answer(raw, where)
        except Exception as exc:  # noqa: BLE001 (the terminal event could not be sent)
            await self._answer_unpublishable(raw, where, exc)

    async def _answer(self, raw: bytes, where: str) -> None:
        recording_id = recording_id_of(raw)
        done = self.ledger.answered(recording_id, where) if recording_id else None
        if done is not None and done.event is not None:
            # Transcribed, but the worker died around publishing the final: send the same
            # final again (same event_id), never the audio.
            log.warning(
                "recording %s at %s was transcribed at %s but its final may not be out: "
                "publishing final %s again, without recognition",
                recording_id,
                where,
                done.source,
                done.event_id,
            )
            await self.publisher.final(done.event, source=where)
            await self.ledger.record(done.event, where)
            return
        if done is not None:
            log.info(
                "recording %s at %s is %s already (event %s at %s, %s): acknowledged without "
                "recognition, nothing published",
                recording_id,
                where,
                done.outcome,
                done.event_id,
                done.source,
                done.at,
            )
            return
        if recording_id is None:
            # Unreadable: it fails validation before any risky stage, and has no key to count by.
            with self.metrics.recording():
                outcome = await self.pipeline.process(raw, where=where)
            await self.ledger.record(outcome, where)
            return
        if self.ledger.task(recording_id) is not None:
            # A filetrans task was submitted for it: never a second submit; the worker that
            # owns the partition polls the task and answers (streams/filetrans_poller.py).
            log.info(
                "recording %s at %s has a filetrans task pending: acknowledged, not submitted "
                "again",
                recording_id,
                where,
            )
            return
        before = self.ledger.starts(recording_id)
        how = admission(before.count if before else 0, self.max_starts)
        if how == "refuse":
            assert before is not None
            await self._answer_crash_loop(raw, recording_id, where, before.count)
            return
        async with self.gate.enter(how):
            # Counted, and on the broker, before anything that could kill the worker.
            run = await self.ledger.begin(recording_id, where, attempts=self.attempts)
            if run.number > 1:
                log.warning(
                    "recording %s at %s: start %d of at most %d; the worker died during the "
                    "previous one (at %s)%s",
                    recording_id,
                    where,
                    run.number,
                    self.max_starts,
                    before.source if before else "?",
                    ", so this one runs alone in the worker" if how == "alone" else "",
                    extra={"recording_id": recording_id, "run": run.number},
                )
            # process() returns only once the terminal event is acknowledged by the broker;
            # the offset is acked when the agent's loop moves on, and committed after that.
            backend = backend_of(raw) or self.default_backend
            if backend == "filetrans" and self.filetrans is not None:
                # Returns once the task is kept in the ledger (the offset then moves on), or
                # with the failed event that answered the recording before any task existed.
                failed = await self.filetrans.start(raw, where=where, run=run)
                if failed is not None:
                    await self.ledger.record(failed, where)
                return
            with self.metrics.recording(), choose(backend):
                outcome = await self.pipeline.process(raw, where=where, run=run)
            await self.ledger.record(outcome, where)

    async def _answer_crash_loop(
        self, raw: bytes, recording_id: str, where: str, starts: int
    ) -> None:
        """Fail a recording that every one of its ``starts`` ended with the worker dying."""
        error = WorkerCrashed(
            f"the worker died {starts} times while processing this recording, the last time "
            "while it was the only recording in the worker: it is not processed again "
            "(publish it anew to retry)"
        )
        failed = failed_event(error, raw=raw, recording=None, recording_id=recording_id, attempts=0)
        await self.publisher.failed(failed)
        await self.ledger.record(failed, where)
        log.error(
            "recording %s failed at %s: %s after %d starts that each ended with the worker dying",
            recording_id,
            where,
            error.code,
            starts,
            extra={"recording_id": recording_id, "outcome": "failed", "code": error.code},
        )

    async def _answer_unpublishable(self, raw: bytes, where: str, exc: Exception) -> None:
        """Answer a recording whose terminal event the broker refused, or stop the worker.

        An exception must not leave the agent's loop: faust acknowledges the event when its
        stream generator is closed, so the recording would be committed without any terminal
        event. A final the broker refuses for good (bigger than the topic's
        max.message.bytes, say) becomes a failed event instead; if that cannot be published
        either, the broker is gone or misconfigured and the process exits at once, without
        committing (errors.py's ``stop``): the recording is redelivered when the worker is back.
        """
        recording_id = recording_id_of(raw)
        log.exception(
            "recording %s at %s: its terminal event could not be published", recording_id, where
        )
        error = PipelineError(
            f"the terminal event could not be published: {type(exc).__name__}: {exc}",
            code="internal_error",
            stage="publish",
        )
        failed = failed_event(error, raw=raw, recording=None, recording_id=recording_id, attempts=0)
        try:
            await self.publisher.failed(failed)
            await self.ledger.record(failed, where)
        except Exception:
            # errors.py's "stop": disposition(exc, publishing=True)
            log.critical(
                "recording %s at %s: no terminal event can be published; exiting without "
                "committing its offset, so that it is redelivered",
                recording_id,
                where,
                exc_info=True,
            )
            logging.shutdown()
            os._exit(EXIT_CANNOT_PUBLISH)
