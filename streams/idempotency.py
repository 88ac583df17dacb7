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
- a recording with a *failed* entry is skipped only when it is the very same event again (same
  topic, partition and offset); a republished one is processed, since failures can be retried.

The remaining window: the entry is written after the final event is acknowledged, and the
offset is committed after the entry is acknowledged. A crash between the final's
acknowledgement and the entry's leaves no entry, so the redelivered recording is transcribed
once more and a second final event goes out, with the same deterministic ``event_id``
(UUIDv5 of the recording id) for consumers to drop. The window is one broker round trip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from streams.events import now_iso

__all__ = ["Ledger", "Outcome", "recording_id_of"]

log = logging.getLogger(__name__)

TABLE_NAME = "finalized"


@dataclass(frozen=True)
class Outcome:
    """The terminal event a recording ended with, as the table keeps it."""

    outcome: str
    """``final`` or ``failed``."""
    event_id: str
    source: str
    """``topic[partition]@offset`` of the recording event that was answered."""
    at: str

    @classmethod
    def from_value(cls, value: Any) -> Outcome | None:
        """Read a table value; None for anything unexpected (then the event is processed)."""
        if not isinstance(value, dict):
            return None
        try:
            fields = [str(value[name]) for name in ("outcome", "event_id", "source", "at")]
        except KeyError:
            return None
        return cls(*fields)


def recording_id_of(raw: bytes) -> str | None:
    """The recording id of a raw recording event, or None when it has no readable one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        value = data.get("recording_id")
        if isinstance(value, str) and 0 < len(value) <= 200:
            return value
    return None


class Ledger:
    """The ``finalized`` table and the two questions asked of it."""

    def __init__(self, app: faust.App, *, partitions: int, store: str, retention_s: float) -> None:
        self.table: faust.Table[str, dict[str, str]] = app.Table(
            TABLE_NAME,
            key_type=str,
            value_type=None,  # JSON objects (faust's json codec)
            partitions=partitions,
            store=store,
            help="Terminal outcome of each recording id, for idempotent redelivery.",
            # Compacted keeps one entry per recording; delete drops those older than the
            # retention, which bounds the changelog (and the store rebuilt from it).
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(retention_s * 1000)),
            },
        )

    def answered(self, recording_id: str, source: str) -> Outcome | None:
        """The outcome that makes processing this event again pointless, if there is one."""
        found = Outcome.from_value(self.table.get(recording_id))
        if found is None:
            return None
        if found.outcome == "final" or found.source == source:
            return found
        return None

    async def record(self, event: dict[str, Any], source: str) -> None:
        """Remember the terminal ``event`` (once the broker has it) and wait for the changelog.

        Must run inside the agent's iteration: the write goes to the changelog partition of
        the current event. Events without a recording id (unreadable ones) are not recorded.
        """
        recording_id = event.get("recording_id")
        if not recording_id:
            return
        value = {
            "outcome": str(event["type"]),
            "event_id": str(event["event_id"]),
            "source": source,
            "at": now_iso(),
        }
        table = self.table
        # What ``table[recording_id] = value`` does, keeping the changelog future so that the
        # recording's offset moves on only once the entry is on the broker (this narrows the
        # window described above to one round trip instead of the producer's linger).
        future = table.send_changelog(table.partition_for_key(recording_id), recording_id, value)
        table.data[recording_id] = value
        await future
