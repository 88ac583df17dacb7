"""Which recordings are answered already: a faust Table of terminal outcomes, by recording id.

Where the state lives: the table ``finalized``, one entry per recording id, backed by its
changelog topic ``<app id>-finalized-changelog`` (compacted, and deleted after
``finalized_retention_s``). The changelog has as many partitions as the recordings topic and
every write goes to the partition of the recording event being processed, so the entries of
partition *p* live in changelog partition *p* (co-partitioning; recording events must be keyed
by their recording id, as the contract says). The store is ``memory://`` by default: at start
and after every rebalance faust rebuilds the assigned partitions from the changelog before the
agent sees an event, which is how the state survives restarts and moves with its partitions.
``rocksdb://`` (``faust-streaming[rocksdict]``) keeps it on disk instead, for production
volumes, so that a restart reads only what changed since.

What the agent does with it (:meth:`Ledger.answered`):

- a recording with a *final* entry is never transcribed again, whether redelivered (a crash or
  rebalance before the offset commit) or republished: it is acknowledged with a log line and
  nothing is published, because the final event is on its topic already (the entry is written
  only after the broker acknowledged the final event);
- a recording with a *publishing* entry was transcribed, but the worker may have died before
  its final event got out: the final event kept in the entry is published again as it was
  (same ``event_id``, same content), without recognition, and the entry becomes *final*;
- a recording with a *failed* entry is skipped only when it is the very same event again (same
  topic, partition and offset); a republished one is processed, since failures can be retried;
- a recording with a *task* entry (or a *publishing* one with a ``task_id``) has a filetrans
  task submitted for it: it is acknowledged without a second submit; the worker that owns
  the partition polls the task and answers it (streams/filetrans_poller.py);
- a recording with a *started* entry was being processed when a worker died (the entry counts
  the starts since its last terminal event, streams/crashloop.py): it is started again, or
  failed ``worker_crashed`` once it has had ``STREAMS_MAX_STARTS`` starts (:meth:`Ledger.begin`
  writes the entry, and waits for the broker, before the risky stages run).

The order of writes (:class:`LedgerPublisher` and streams/answer.py) is: the *publishing* entry
(with the final event) is acknowledged by the broker, then the final event, then the *final*
entry, then the offset commit. So a recording whose recogniser requests succeeded is never sent to
the recogniser again, whatever crashes. What remains:

- a crash after the recogniser answered but before the *publishing* entry is acknowledged
  (milliseconds after the last request) redoes the recording: its requests are sent again;
  that is at-least-once for a recording that had no final yet, not a second transcription of
  a final one;
- a crash after the final event is acknowledged but before the *final* entry is written
  publishes
  the same final event once more from the *publishing* entry: a duplicate with the same
  deterministic ``event_id`` (UUIDv5 of the recording id) for consumers to drop, and no
  second bill.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import faust

from streams.crashloop import Run
from streams.event_types import FailedEvent, FinalEvent, TerminalEvent
from streams.events import now_iso
from streams.publish import EventPublisher

__all__ = [
    "Ledger",
    "LedgerPublisher",
    "Outcome",
    "Starts",
    "changelog_configs",
    "changelog_topic",
    "source_partition",
]

log = logging.getLogger(__name__)

TABLE_NAME = "finalized"


def changelog_topic(app_id: str) -> str:
    """The name faust gives the table's changelog topic."""
    return f"{app_id}-{TABLE_NAME}-changelog"


def changelog_configs(retention_s: float) -> dict[str, str]:
    """Topic configs of the changelog: compacted, and entries older than the retention deleted.

    Compacted keeps one entry per recording; delete drops those older than the retention,
    which bounds the changelog (and the store rebuilt from it).
    """
    return {"cleanup.policy": "compact,delete", "retention.ms": str(int(retention_s * 1000))}


@dataclass(frozen=True)
class Outcome:
    """The terminal event a recording ended with, as the table keeps it."""

    outcome: str
    """``final``, ``failed``, or ``publishing`` (transcribed; the final may not be out)."""
    event_id: str
    source: str
    """``topic[partition]@offset`` of the recording event that was answered."""
    at: str
    event: FinalEvent | None = None
    """The final event itself, kept only while ``publishing``."""

    @classmethod
    def from_value(cls, value: Any) -> Outcome | None:
        """Read a table value; None for anything unexpected (then the event is processed)."""
        if not isinstance(value, dict):
            return None
        try:
            outcome, event_id, source, at = (
                str(value[name]) for name in ("outcome", "event_id", "source", "at")
            )
        except KeyError:
            return None
        event = value.get("event")
        # Written by this module from a FinalEvent (record_intent), read back as JSON.
        kept = cast(FinalEvent, event) if isinstance(event, dict) else None
        return cls(outcome, event_id, source, at, event=kept)


@dataclass(frozen=True)
class Starts:
    """Starts of a recording since its last terminal event (a *started* entry)."""

    count: int
    attempt_base: int
    """Where the attempt numbers of the latest start began."""
    attempts: int
    """Attempts per chunk the latest start could use (its ``STREAMS_ASR_ATTEMPTS``)."""
    source: str
    at: str

    @classmethod
    def from_value(cls, value: Any) -> Starts | None:
        """Read a table value; None unless it is a *started* entry."""
        if not isinstance(value, dict) or value.get("outcome") != "started":
            return None
        try:
            return cls(
                count=int(value["starts"]),
                attempt_base=int(value["attempt_base"]),
                attempts=int(value["attempts"]),
                source=str(value["source"]),
                at=str(value["at"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def next_run(self) -> Run:
        """The run that follows these starts, numbering its attempts above theirs."""
        return Run(self.count + 1, self.attempt_base + self.attempts)


class Ledger:
    """The ``finalized`` table and the two questions asked of it."""

    def __init__(self, app: faust.App, *, partitions: int, store: str, retention_s: float) -> None:
        self._retention_s = retention_s
        self._pending: dict[str, int | None] = {}
        # app.Table is typed as returning the abstract TableT; it builds a faust.Table.
        self.table = cast(
            "faust.Table[str, dict[str, Any]]",
            app.Table(
                TABLE_NAME,
                key_type=str,
                value_type=None,  # JSON objects (faust's json codec)
                partitions=partitions,
                store=store,
                help="Terminal outcome of each recording id, for idempotent redelivery.",
                # The worker creates the topic with these before faust starts (streams/topics.py).
                extra_topic_configs=changelog_configs(retention_s),
            ),
        )
        # Entries recovered from the changelog (after every rebalance) reach the store
        # without passing through _put: the index of pending tasks is rebuilt then.
        self.table.on_recover(self.reindex)

    @property
    def pending(self) -> dict[str, int | None]:
        """Recording ids whose filetrans task is still to be answered, with the partition of
        their recording event: the *task* entries and the tasks' *publishing* ones. Kept up to
        date by this worker's writes and rebuilt after each recovery, so the task poller reads
        a handful of entries a second, not the whole retention window (millions of them)."""
        return self._pending

    async def reindex(self, chunk: int = 10_000) -> None:
        """Rebuild :attr:`pending` from the whole table, yielding to the event loop every
        ``chunk`` entries; each key's live value is read, so writes meanwhile are kept."""
        for i, key in enumerate(list(self.table.data.keys())):
            self._index(str(key), self.table.data.get(key))
            if i % chunk == chunk - 1:
                await asyncio.sleep(0)

    def _index(self, recording_id: str, value: Any) -> None:
        if _is_pending(value):
            self._pending[recording_id] = source_partition(str(value.get("source", "")))
        else:
            self._pending.pop(recording_id, None)

    def forget_expired(self) -> int:
        """Drop entries older than the retention from a ``memory://`` store; return how many.

        The changelog forgets them by itself (``retention.ms``); this keeps a long-running
        worker's memory to the retention window too (about 1 kB per recording). On-disk stores
        are left alone.
        """
        data = getattr(self.table.data, "data", None)  # the memory store's dict
        if not isinstance(data, dict):
            return 0
        cutoff = _iso_ago(self._retention_s)
        expired = [k for k, v in data.items() if isinstance(v, dict) and v.get("at", "") < cutoff]
        for key in expired:
            data.pop(key, None)
            self._pending.pop(key, None)
        return len(expired)

    def answered(self, recording_id: str, source: str) -> Outcome | None:
        """The outcome that makes processing this event again pointless, if there is one.

        Raises:
            faust.exceptions.PartitionsMismatch: the recordings topic and the changelog have
                different partition counts, so entries would land where lookups never look;
                raised here, before anything is sent to the recogniser.
        """
        self.table.partition_for_key(recording_id)  # checks co-partitioning (once per topic)
        found = Outcome.from_value(self.table.get(recording_id))
        if found is None:
            return None
        if found.outcome == "publishing" and found.event is None:
            return None  # cannot happen with values this module wrote; redo to be safe
        if found.outcome in ("final", "publishing"):
            return found
        if found.outcome == "failed" and found.source == source:
            return found
        return None

    def starts(self, recording_id: str) -> Starts | None:
        """The starts of this recording that ended without a terminal event, if any."""
        return Starts.from_value(self.table.get(recording_id))

    async def begin(self, recording_id: str, source: str, *, attempts: int) -> Run:
        """Count a start of the recording and wait until the count is on the broker.

        Called before the risky stages: if the worker dies during them, the restarted worker
        reads the count back from the changelog (streams/crashloop.py). ``attempts`` is the
        most attempts per chunk this start may use, for the next run's attempt numbers.
        Must run inside the agent's iteration, like :meth:`record`.
        """
        before = self.starts(recording_id)
        run = before.next_run() if before is not None else Run(1)
        await self._put(
            recording_id,
            {
                "outcome": "started",
                "starts": run.number,
                "attempt_base": run.attempt_base,
                "attempts": attempts,
                "source": source,
                "at": now_iso(),
            },
        )
        return run

    async def record(self, event: TerminalEvent, source: str) -> None:
        """Remember the terminal ``event`` (once the broker has it) and wait for the changelog.

        Must run inside the agent's iteration: the write goes to the changelog partition of
        the current event. Events without a recording id (unreadable ones) are not recorded.
        """
        await self._write(event, source, event["type"])

    async def record_intent(
        self, final: FinalEvent, source: str, *, task_id: str | None = None
    ) -> None:
        """Keep ``final`` as *publishing* before it is published (see the module docstring).

        ``task_id``: a filetrans task's final, whose recording offset has moved on already:
        the task poller (streams/filetrans_poller.py) publishes it again after a crash.
        """
        await self._write(final, source, "publishing", keep_event=True, task_id=task_id)

    def task(self, recording_id: str) -> dict[str, Any] | None:
        """The recording's filetrans *task* entry (or a task's *publishing* one), if any."""
        value = self.table.get(recording_id)
        return value if _is_pending(value) else None

    async def record_task(self, recording_id: str, value: dict[str, Any]) -> None:
        """Keep a submitted filetrans task (outcome ``task``) and wait for the broker."""
        await self._put(recording_id, value)

    async def _write(
        self,
        event: TerminalEvent,
        source: str,
        outcome: str,
        *,
        keep_event: bool = False,
        task_id: str | None = None,
    ) -> None:
        recording_id = event.get("recording_id")
        if not recording_id:
            return
        value: dict[str, Any] = {
            "outcome": outcome,
            "event_id": str(event["event_id"]),
            "source": source,
            "at": now_iso(),
        }
        if keep_event:
            value["event"] = event
        if task_id:
            value["task_id"] = task_id
        await self._put(recording_id, value)

    async def _put(self, recording_id: str, value: dict[str, Any]) -> None:
        table = self.table
        # What ``table[recording_id] = value`` does, keeping the changelog future so that the
        # recording's offset moves on only once the entry is on the broker (this narrows the
        # window described above to one round trip instead of the producer's linger).
        # Outside the agent's iteration (the filetrans poller) there is no current event:
        # the entry goes to the partition of the recording event it answers (its source).
        partition = (
            table.partition_for_key(recording_id)
            if faust.current_event() is not None
            else source_partition(str(value.get("source", "")))
        )
        future = table.send_changelog(partition, recording_id, value)
        table.data[recording_id] = value
        self._index(recording_id, value)
        await future


def _is_pending(value: Any) -> bool:
    """A filetrans task's entry that still needs its answer (task, or its publishing)."""
    return isinstance(value, dict) and (
        value.get("outcome") == "task"
        or (value.get("outcome") == "publishing" and bool(value.get("task_id")))
    )


class LedgerPublisher:
    """A publisher whose final events are kept in the ledger before they go out.

    Wraps the pipeline's publisher; partial and failed events pass straight through.
    """

    def __init__(self, inner: EventPublisher, ledger: Ledger) -> None:
        self._inner = inner
        self._ledger = ledger

    async def partial(self, recording_id: str, **fields: Any) -> None:
        """Publish one delta, as the inner publisher does."""
        await self._inner.partial(recording_id, **fields)

    async def final(self, event: FinalEvent, *, source: str = "") -> None:
        """Record the *publishing* entry, then publish ``event`` and wait for the broker.

        ``source`` is the recording event being answered; without one (outside the agent)
        there is no changelog partition to write to, and nothing is recorded.
        """
        if source:
            await self._ledger.record_intent(event, source)
        await self._inner.final(event, source=source)

    async def failed(self, event: FailedEvent) -> None:
        """Publish a failed event, as the inner publisher does."""
        await self._inner.failed(event)


def source_partition(source: str) -> int | None:
    """The partition of ``topic[partition]@offset``; None if it names none."""
    match = re.search(r"\[(\d+)\]@-?\d+$", source)
    return int(match.group(1)) if match else None


def _iso_ago(seconds: float) -> str:
    """The time ``seconds`` ago in :func:`~streams.events.now_iso`'s format (sortable)."""
    then = datetime.now(UTC) - timedelta(seconds=seconds)
    return then.isoformat().replace("+00:00", "Z")
