"""The agent: wiring from the recordings topic to the pipeline, no business logic.

One actor per assigned partition (``isolated_partitions``), never ``concurrency > 1``:
faust-streaming #606 commits past a slow in-flight message when several actors share a
partition, and a crash then loses that recording. Parallelism comes from partitions, and
inside one recording from its chunks.
"""

from __future__ import annotations

import faust

from streams.app import Runtime
from streams.logging_setup import bind

__all__ = ["register_agents"]


def register_agents(app: faust.App, recordings: faust.types.TopicT, runtime: Runtime) -> None:
    """Attach the transcription agent to ``app``."""

    @app.agent(recordings, name="transcribe", isolated_partitions=True, concurrency=1)
    async def transcribe(stream: faust.StreamT[bytes]) -> None:
        pipeline = runtime.pipeline()
        async for event in stream.events():
            message = event.message
            where = f"{message.topic}[{message.partition}]@{message.offset}"
            # process() returns only once the terminal event is acknowledged by the broker;
            # the offset is acked when the loop moves on, and committed after that.
            with (
                runtime.metrics.recording(),
                bind(topic=message.topic, partition=message.partition, offset=message.offset),
            ):
                await pipeline.process(event.value, where=where)
