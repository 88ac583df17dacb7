"""The agent: wiring from the recordings topic to the pipeline, no business logic.

One actor per assigned partition (``isolated_partitions``), never ``concurrency > 1``:
faust-streaming #606 commits past a slow in-flight message when several actors share a
partition, and a crash then loses that recording. Parallelism comes from partitions, and
inside one recording from its chunks.

Idempotency (streams/idempotency.py): before the pipeline runs, the ``finalized`` table says
whether the recording is answered already (then the event is acknowledged without recognition
and nothing is published, or the kept final event is published again if the worker died
while publishing it); after the terminal event is acknowledged by the broker, its entry is
written to the table's changelog, and only then does the loop move on to let the offset be
committed.

Crash loops (streams/crashloop.py): before the pipeline runs, the start is counted in the same
table and the count is on the broker; a recording that comes back after ``max_starts`` starts
without a terminal event gets one failed event ``worker_crashed`` instead of another start, and
its last allowed start runs alone in the worker.
"""

from __future__ import annotations

import logging
import os

import faust

from streams.app import Runtime
from streams.crashloop import RunGate, admission
from streams.errors import PipelineError, WorkerCrashed
from streams.events import failed_event, recording_id_of
from streams.idempotency import Ledger
from streams.logging_setup import bind
from streams.pipeline import Pipeline

__all__ = ["register_agents"]

log = logging.getLogger(__name__)

_EXIT_CANNOT_PUBLISH = 75  # EX_TEMPFAIL: a supervisor should start the worker again


def register_agents(
    app: faust.App, recordings: faust.types.TopicT, runtime: Runtime, ledger: Ledger
) -> None:
    """Attach the transcription agent to ``app``."""

    gate = RunGate()  # one per worker process: "alone" means alone in this process

    @app.agent(recordings, name="transcribe", isolated_partitions=True, concurrency=1)
    async def transcribe(stream: faust.StreamT[bytes]) -> None:
        pipeline = runtime.pipeline()
        async for event in stream.events():
            message = event.message
            where = f"{message.topic}[{message.partition}]@{message.offset}"
            with bind(topic=message.topic, partition=message.partition, offset=message.offset):
                try:
                    await _answer(pipeline, runtime, ledger, gate, event.value, where)
                except Exception as exc:  # noqa: BLE001 (the terminal event could not be sent)
                    await _answer_unpublishable(runtime, ledger, event.value, where, exc)


async def _answer(
    pipeline: Pipeline, runtime: Runtime, ledger: Ledger, gate: RunGate, raw: bytes, where: str
) -> None:
    """Give the recording event at ``where`` its one terminal event, unless it has one."""
    recording_id = recording_id_of(raw)
    done = ledger.answered(recording_id, where) if recording_id else None
    if done is not None and done.event is not None:
        # Transcribed, but the worker died around publishing the final: send the same final
        # again (same event_id), never the audio.
        log.warning(
            "recording %s at %s was transcribed at %s but its final may not be out: "
            "publishing final %s again, without recognition",
            recording_id,
            where,
            done.source,
            done.event_id,
        )
        await runtime.publisher().final(done.event)
        await ledger.record(done.event, where)
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
        with runtime.metrics.recording():
            outcome = await pipeline.process(raw, where=where)
        await ledger.record(outcome, where)
        return
    max_starts = runtime.settings.max_starts
    before = ledger.starts(recording_id)
    how = admission(before.count if before else 0, max_starts)
    if how == "refuse":
        assert before is not None
        await _answer_crash_loop(runtime, ledger, raw, recording_id, where, before.count)
        return
    async with gate.enter(how):
        # Counted, and on the broker, before anything that could kill the worker.
        run = await ledger.begin(recording_id, where, attempts=runtime.settings.asr_attempts)
        if run.number > 1:
            log.warning(
                "recording %s at %s: start %d of at most %d; the worker died during the "
                "previous one (at %s)%s",
                recording_id,
                where,
                run.number,
                max_starts,
                before.source if before else "?",
                ", so this one runs alone in the worker" if how == "alone" else "",
                extra={"recording_id": recording_id, "run": run.number},
            )
        # process() returns only once the terminal event is acknowledged by the broker; the
        # offset is acked when the agent's loop moves on, and committed after that.
        with runtime.metrics.recording():
            outcome = await pipeline.process(raw, where=where, run=run)
        await ledger.record(outcome, where)


async def _answer_crash_loop(
    runtime: Runtime, ledger: Ledger, raw: bytes, recording_id: str, where: str, starts: int
) -> None:
    """Fail a recording that every one of its ``starts`` ended with the worker dying."""
    error = WorkerCrashed(
        f"the worker died {starts} times while processing this recording, the last time "
        "while it was the only recording in the worker: it is not processed again "
        "(publish it anew to retry)"
    )
    failed = failed_event(error, raw=raw, recording=None, recording_id=recording_id, attempts=0)
    await runtime.publisher().failed(failed)
    await ledger.record(failed, where)
    log.error(
        "recording %s failed at %s: %s after %d starts that each ended with the worker dying",
        recording_id,
        where,
        error.code,
        starts,
        extra={"recording_id": recording_id, "outcome": "failed", "code": error.code},
    )


async def _answer_unpublishable(
    runtime: Runtime, ledger: Ledger, raw: bytes, where: str, exc: Exception
) -> None:
    """Answer a recording whose terminal event the broker refused, or stop the worker.

    An exception must not leave the agent's loop: faust acknowledges the event when its
    stream generator is closed, so the recording would be committed without any terminal
    event. A final the broker refuses for good (bigger than the topic's max.message.bytes,
    say) becomes a failed event instead; if that cannot be published either, the broker is
    gone or misconfigured and the process exits at once, without committing (errors.py's
    ``stop``): the recording is redelivered when the worker is back.
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
        await runtime.publisher().failed(failed)
        await ledger.record(failed, where)
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
        os._exit(_EXIT_CANNOT_PUBLISH)
