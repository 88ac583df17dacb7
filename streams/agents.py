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
"""

from __future__ import annotations

import logging

import faust

from streams.app import Runtime
from streams.idempotency import Ledger, recording_id_of
from streams.logging_setup import bind

__all__ = ["register_agents"]

log = logging.getLogger(__name__)


def register_agents(
    app: faust.App, recordings: faust.types.TopicT, runtime: Runtime, ledger: Ledger
) -> None:
    """Attach the transcription agent to ``app``."""

    @app.agent(recordings, name="transcribe", isolated_partitions=True, concurrency=1)
    async def transcribe(stream: faust.StreamT[bytes]) -> None:
        pipeline = runtime.pipeline()
        async for event in stream.events():
            message = event.message
            where = f"{message.topic}[{message.partition}]@{message.offset}"
            recording_id = recording_id_of(event.value)
            done = ledger.answered(recording_id, where) if recording_id else None
            if done is not None and done.event is not None:
                # Transcribed, but the worker died around publishing the final: send the
                # same final again (same event_id), never the audio.
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
                continue
            if done is not None:
                log.info(
                    "recording %s at %s is %s already (event %s at %s, %s): acknowledged "
                    "without recognition, nothing published",
                    recording_id,
                    where,
                    done.outcome,
                    done.event_id,
                    done.source,
                    done.at,
                )
                continue
            # process() returns only once the terminal event is acknowledged by the broker;
            # the offset is acked when the loop moves on, and committed after that.
            with (
                runtime.metrics.recording(),
                bind(topic=message.topic, partition=message.partition, offset=message.offset),
            ):
                outcome = await pipeline.process(event.value, where=where)
            await ledger.record(outcome, where)
