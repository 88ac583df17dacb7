"""The filetrans backend's second half: poll the pending tasks of the partitions this worker owns.

Where the work is: every submitted task is a *task* entry in the ``finalized`` table
(streams/idempotency.py), in the changelog partition of its recording. A worker holds the
entries of the partitions assigned to it (faust rebuilds them from the changelog after every
rebalance), so "the tasks this worker must finish" is "the *task* entries of its assigned
partitions" (the ledger's index of pending tasks, ``Ledger.pending``), with no other
coordination. :meth:`TaskPoller.scan` (run every
``scan_interval_s`` by a faust ``app.task``, streams/agents.py) starts one asyncio task per
such entry and cancels those whose partition went away; all of them poll concurrently, each
spaced by its own backoff and together by the account's task-query limiter.

What a follower does (:meth:`TaskPoller._follow`): poll until the task is done or the
recording's deadline passes, then answer the recording exactly as the agent would, through the
ledger protocol: the final event is redacted and kept as a *publishing* entry (with the task
id), then published with its partials before it, then the *final* entry replaces it. A FAILED
or UNKNOWN task gets one failed event ``asr_task_failed`` with the vendor's code; a deadline
that passes gets one failed event ``deadline_exceeded``. A *publishing* entry with a task id
that a new owner finds is published again from the entry (the previous owner died between the
two writes), never polled or fetched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from streams.errors import (
    DeadlineExceeded,
    PermanentError,
    PipelineError,
    RecognitionTaskFailed,
    TransientError,
)
from streams.event_types import FinalEvent, TerminalEvent
from streams.events import failed_event
from streams.filetrans_client import FiletransClient, billed_seconds
from streams.filetrans_final import TaskEntry, task_final
from streams.filetrans_result import Transcript, parse_result
from streams.idempotency import Ledger
from streams.publish import EventPublisher
from streams.redaction import RedactionPolicy
from streams.redaction_publish import policy_from_event, policy_scope, redact_final

__all__ = ["PollRules", "TaskPoller"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PollRules:
    """How the poller polls and prices."""

    initial_s: float = 1.0
    max_s: float = 15.0
    price_per_second_usd: float = 0.000035
    scan_interval_s: float = 1.0


class TaskPoller:
    """Follows the pending filetrans tasks of the owned partitions to their terminal event."""

    def __init__(
        self,
        ledger: Ledger,
        client: FiletransClient,
        publisher: EventPublisher,
        policy: RedactionPolicy,
        rules: PollRules,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._publisher = publisher
        """Redacting and metered, without the ledger: the poller writes the ledger itself."""
        self._policy = policy
        self.rules = rules
        self._following: dict[str, asyncio.Task[None]] = {}
        self._partition: dict[str, int | None] = {}
        """The recordings partition of each followed recording."""

    @property
    def following(self) -> int:
        """Tasks followed now."""
        return len(self._following)

    def scan(self, owned: Iterable[int]) -> None:
        """Follow every pending task of the ``owned`` partitions; drop the others."""
        partitions = set(owned)
        wanted: dict[str, dict[str, Any]] = {}
        for rid, partition in list(self._ledger.pending.items()):
            value = self._ledger.task(rid)  # None: answered meanwhile, or expired
            if value is not None and partition in partitions:
                wanted[rid] = value
                self._partition[rid] = partition
        for rid in [r for r in self._following if r not in wanted]:
            self._following.pop(rid).cancel()  # the partition moved to another worker
        for rid, value in wanted.items():
            if rid not in self._following:
                task = asyncio.create_task(self._answer(rid, value), name=f"filetrans:{rid}")
                self._following[rid] = task
                task.add_done_callback(functools.partial(self._done, rid))

    def _done(self, rid: str, task: asyncio.Task[None]) -> None:
        if self._following.get(rid) is task:
            del self._following[rid]
            self._partition.pop(rid, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("following the task of %s failed", rid, exc_info=task.exception())

    async def stop(self) -> None:
        """Cancel every follower (the worker stops; the new owner resumes the tasks)."""
        await self.let_go(None)

    async def let_go(self, partitions: Iterable[int] | None) -> None:
        """Cancel the followers of revoked ``partitions`` (None: all) and wait until they end.

        Called when faust revokes partitions, before the group hands them to their next owner:
        a follower left running until the next scan would publish the final that the new owner
        publishes too.
        """
        gone = None if partitions is None else set(partitions)
        tasks = [
            task
            for rid, task in list(self._following.items())
            if gone is None or self._partition.get(rid) in gone
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _answer(self, rid: str, value: dict[str, Any]) -> None:
        if value["outcome"] == "publishing":
            final = cast(FinalEvent, value["event"])
            log.warning(
                "recording %s: final of task %s may not be out; publishing it again",
                rid,
                value["task_id"],
            )
            await self._publisher.final(final, source=value["source"])
            await self._ledger.record(final, value["source"])
            return
        entry = TaskEntry.from_value(value)
        if entry is None:
            log.error("recording %s: unreadable task entry %r", rid, value)
            return
        policy = policy_from_event(self._policy, entry.redaction)
        with policy_scope(policy):
            await self._follow(entry, policy)

    async def _follow(self, entry: TaskEntry, policy: RedactionPolicy) -> None:
        polls = 0
        wait = self.rules.initial_s
        transcript = Transcript()
        billed = 0
        status_request: list[str] = []
        while entry.task_id is not None:
            left = entry.deadline - time.time()
            if left <= 0:
                await self._fail(
                    entry,
                    DeadlineExceeded(
                        f"filetrans task {entry.task_id} not done by the recording's deadline"
                    ),
                    polls,
                )
                return
            try:
                status = await self._client.poll(entry.task_id)
            except TransientError as exc:
                log.info("recording %s: poll failed (%s); polling on", entry.recording_id, exc)
                await asyncio.sleep(min(wait, max(left, 0.01)))
                continue
            except PermanentError as exc:
                await self._fail(entry, exc, polls)
                return
            polls += 1
            if status.status == "SUCCEEDED":
                try:
                    if not status.transcription_url:
                        raise RecognitionTaskFailed(
                            f"task {entry.task_id} SUCCEEDED without a transcription_url"
                        )
                    data = await self._client.result(status.transcription_url)
                    transcript = parse_result(
                        data, entry.maps, entry.roles, entry.channels, tracks=entry.file_tracks
                    )
                except PipelineError as exc:
                    await self._fail(entry, exc, polls)
                    return
                billed = billed_seconds(status.usage_seconds, entry.file_tracks, entry.file_seconds)
                status_request = [status.request_id] if status.request_id else []
                break
            if status.done:  # FAILED, UNKNOWN
                code = status.code or status.status
                await self._fail(
                    entry,
                    RecognitionTaskFailed(
                        f"{code}: {status.message or 'task ' + status.status}"
                        f" (task {entry.task_id})"
                    ),
                    polls,
                )
                return
            await asyncio.sleep(min(wait, max(left, 0.01)))
            wait = min(wait * 2, self.rules.max_s)
        final = task_final(
            entry,
            transcript,
            billed_seconds=billed,
            attempts=polls + (1 if entry.task_id else 0),
            price_per_second_usd=self.rules.price_per_second_usd,
            finished=time.time(),
            request_ids=status_request,
        )
        await self._publish(entry, final, transcript, policy)

    async def _publish(
        self,
        entry: TaskEntry,
        final: FinalEvent,
        transcript: Transcript,
        policy: RedactionPolicy,
    ) -> None:
        final = redact_final(final, policy)
        # Kept (redacted) before anything goes out: from here on no poll or fetch again.
        await self._ledger.record_intent(final, entry.source, task_id=entry.task_id or "-")
        attempt = entry.attempt_base + 1
        for sequence, sentence in enumerate(transcript.sentences):
            await self._publisher.partial(
                entry.recording_id,
                run=entry.run,
                attempt=attempt,
                sequence=sequence,
                channel=sentence["channel"],
                role=sentence["role"],
                chunk_index=sequence,
                chunk_start_s=sentence["start"],
                delta=sentence["text"],
                text=sentence["text"],
            )
        await self._publisher.final(final, source=entry.source)
        await self._ledger.record(final, entry.source)
        log.info(
            "recording %s final from filetrans task %s: %.1f s audio, %d s billed",
            entry.recording_id,
            entry.task_id,
            final["audio_seconds"],
            final["billed_seconds"],
            extra={"recording_id": entry.recording_id, "outcome": "final"},
        )

    async def _fail(self, entry: TaskEntry, error: PipelineError, polls: int) -> None:
        raw = orjson.dumps(entry.original) if entry.original else b""  # older entries: none
        event = failed_event(
            error, raw=raw, recording=None, recording_id=entry.recording_id, attempts=polls
        )
        await self._publisher.failed(event)
        await self._ledger.record(cast(TerminalEvent, event), entry.source)
        log.warning(
            "recording %s failed: %s (%s; task %s)",
            entry.recording_id,
            error.code,
            error.message,
            entry.task_id,
            extra={"recording_id": entry.recording_id, "outcome": "failed", "code": error.code},
        )
