"""The agent: wiring from the recordings topic to the answerer, no business logic.

One actor per assigned partition (``isolated_partitions``), never ``concurrency > 1``:
faust-streaming #606 commits past a slow in-flight message when several actors share a
partition, and a crash then loses that recording. Parallelism comes from partitions, and
inside one recording from its chunks.

Each recording event is answered inside the agent's iteration (streams/answer.py keeps the
idempotency protocol): the ledger writes go to the changelog partition of the current event,
and the offset is acked only when the loop moves on, after the terminal event is on the broker.

The filetrans backend's recordings are answered later, by the task poller
(streams/filetrans_poller.py): a timer hands it the partitions this worker owns once they are
recovered, and it follows their pending tasks.
"""

from __future__ import annotations

import faust

from streams.logging_setup import bind
from streams.runtime import Runtime

__all__ = ["register_agents", "register_task_poller"]


def register_agents(app: faust.App, recordings: faust.TopicT, runtime: Runtime) -> None:
    """Attach the transcription agent to ``app``."""

    @app.agent(recordings, name="transcribe", isolated_partitions=True, concurrency=1)
    async def transcribe(stream: faust.StreamT[bytes]) -> None:
        answer = runtime.answerer()
        async for event in stream.events():
            message = event.message
            where = f"{message.topic}[{message.partition}]@{message.offset}"
            with bind(topic=message.topic, partition=message.partition, offset=message.offset):
                await answer(event.value, where)


def register_task_poller(app: faust.App, runtime: Runtime, interval_s: float = 1.0) -> None:
    """Scan the owned partitions' ledger entries for pending filetrans tasks every
    ``interval_s``, but never while a rebalance or the table's recovery is under way (the
    entries are then stale or incomplete)."""

    async def poll_tasks() -> None:
        recovery = getattr(app.tables, "recovery", None)
        if getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False):
            return
        if recovery is not None and not recovery.completed.is_set():
            return
        poller = runtime.poller()
        if poller is not None:
            poller.scan(runtime.limiter.share.partitions)

    app.timer(interval=interval_s, name="filetrans_poller")(poll_tasks)
