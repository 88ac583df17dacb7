"""The ledger on a real faust table (memory store, in process): what it reads back, which
partition its entries belong to, and what it forgets. Also the recording id of raw events.

Writes wait for the changelog on the broker, and faust checks co-partitioning against the
broker's metadata: both run on the session broker, in tests/integration/test_claims.py (a
partition-count mismatch stops the worker before any request) and test_poison.py.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.streams import _current_event
from faust.types import Message

from streams.events import recording_id_of
from streams.idempotency import Ledger, Outcome, Starts, changelog_topic

PARTITIONS = 4


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'{"recording_id": "rec-1"}', "rec-1", id="ok"),
        pytest.param(b'{"recording_id": 42}', None, id="not-a-string"),
        pytest.param(b'{"recording_id": ""}', None, id="empty"),
        pytest.param(b"[1]", None, id="not-an-object"),
        pytest.param(b"{oops", None, id="not-json"),
    ],
)
def test_recording_id_of(raw: bytes, expected: str | None) -> None:
    """Only a non-empty string id counts; anything else goes to the pipeline to fail."""
    assert recording_id_of(raw) == expected


def test_outcome_from_a_table_value() -> None:
    """A complete value reads back; a partial one reads as nothing (the event is processed)."""
    value = {"outcome": "final", "event_id": "e", "source": "t[0]@1", "at": "2026-01-01T00:00:00Z"}
    assert Outcome.from_value(value) == Outcome("final", "e", "t[0]@1", "2026-01-01T00:00:00Z")
    assert Outcome.from_value({"outcome": "final"}) is None
    assert Outcome.from_value(None) is None


@pytest.fixture
def ledger() -> Ledger:
    """A ledger on its own app; faust connects to nothing until the app starts."""
    app = faust.App("t-ledger", broker="kafka://127.0.0.1:9", store="memory://")
    return Ledger(app, partitions=PARTITIONS, store="memory://", retention_s=86400)


def _store(ledger: Ledger, entries: dict[str, Any]) -> None:
    """Put entries in the table's store, as recovery from the changelog does."""
    for key, value in entries.items():
        ledger.table.data[key] = value


@contextlib.contextmanager
def _processing(ledger: Ledger, partition: int, offset: int) -> Iterator[str]:
    """Inside the agent's iteration of a recording event at ``partition``/``offset``.

    What faust's stream does for each event (faust/streams.py sets this context variable):
    table keys then belong to the event's partition.
    """
    message = Message("recordings", partition, offset, 0.0, 0, {}, b"rec", b"{}", None)
    event = faust.Event(ledger.table.app, b"rec", b"{}", {}, message)
    token = _current_event.set(weakref.ref(event))
    try:
        yield f"recordings[{partition}]@{offset}"
    finally:
        _current_event.reset(token)


def test_the_table_is_co_partitioned_with_the_recordings(ledger: Ledger) -> None:
    """The changelog has the recordings topic's partition count, and an entry goes to the
    partition of the recording event being processed, whatever its key hashes to."""
    table = ledger.table
    assert table.partitions == PARTITIONS
    assert table.changelog_topic.get_topic_name() == changelog_topic("t-ledger")
    assert table.changelog_topic.partitions == PARTITIONS
    for partition in range(PARTITIONS):
        with _processing(ledger, partition, 3):
            assert table.partition_for_key("rec") == partition


def test_outside_the_agent_the_ledger_cannot_be_asked(ledger: Ledger) -> None:
    """A key has no partition without a recording event: the ledger refuses, never guesses."""
    with pytest.raises(TypeError, match="outside of stream iteration"):
        ledger.answered("rec", "recordings[0]@1")


@pytest.mark.parametrize(
    ("stored", "offset", "skipped"),
    [
        pytest.param("final", 9, True, id="final-republished"),
        pytest.param("final", 1, True, id="final-redelivered"),
        pytest.param("failed", 1, True, id="failed-redelivered"),
        pytest.param("failed", 9, False, id="failed-republished"),
    ],
)
def test_answered(ledger: Ledger, stored: str, offset: int, skipped: bool) -> None:
    """A final is never redone; a failure only when the very same event comes again."""
    _store(
        ledger,
        {"rec": {"outcome": stored, "event_id": "e", "source": "recordings[0]@1", "at": "now"}},
    )
    with _processing(ledger, 0, offset) as where:
        assert (ledger.answered("rec", where) is not None) is skipped
        assert ledger.answered("other", where) is None


def test_a_publishing_entry_gives_back_its_final(ledger: Ledger) -> None:
    """The worker died around publishing: the kept final event is the answer, to send again."""
    final: dict[str, Any] = {"type": "final", "event_id": "e", "recording_id": "rec"}
    _store(
        ledger,
        {
            "rec": {
                "outcome": "publishing",
                "event_id": "e",
                "source": "recordings[0]@1",
                "at": "now",
                "event": final,
            }
        },
    )
    with _processing(ledger, 0, 1) as where:
        done = ledger.answered("rec", where)
    assert done is not None
    assert done.event is not None
    assert dict(done.event) == final


def test_a_started_entry_counts_starts_and_is_no_answer(ledger: Ledger) -> None:
    """A recording a worker died on is processed again, its start counted."""
    started = {
        "outcome": "started",
        "starts": 2,
        "attempt_base": 5,
        "attempts": 5,
        "source": "recordings[0]@1",
        "at": "2026-01-01T00:00:00Z",
    }
    _store(ledger, {"rec": started})
    with _processing(ledger, 0, 1) as where:
        assert ledger.answered("rec", where) is None
    assert ledger.starts("rec") == Starts(2, 5, 5, "recordings[0]@1", "2026-01-01T00:00:00Z")
    assert ledger.starts("other") is None


def test_forget_expired_drops_only_old_entries_of_a_memory_store(ledger: Ledger) -> None:
    """Entries older than the retention leave memory; newer ones stay."""
    _store(
        ledger,
        {
            "old": {"outcome": "final", "at": "2020-01-01T00:00:00.000000Z"},
            "new": {"outcome": "final", "at": "2999-01-01T00:00:00.000000Z"},
        },
    )
    assert ledger.forget_expired() == 1
    assert ledger.table.get("old") is None
    assert ledger.table.get("new") is not None


async def test_pending_tasks_are_indexed_after_a_recovery(ledger: Ledger) -> None:
    """Recovery fills the store behind the ledger's back: the index of pending filetrans tasks
    is rebuilt from it (the task poller reads that index, not the whole table). Task entries
    and a task's publishing entry are pending; answered ones, and the agent's own
    publishing entry (no task id), are not."""
    source = "recordings[{}]@7"
    entries: dict[str, Any] = {
        f"done-{i}": {"outcome": "final", "event_id": "e", "source": source.format(i % 4)}
        for i in range(25)
    }
    entries["task-a"] = {"outcome": "task", "task_id": "t1", "source": source.format(2)}
    entries["task-b"] = {"outcome": "publishing", "task_id": "t2", "source": source.format(3)}
    entries["agent"] = {"outcome": "publishing", "event_id": "e", "source": source.format(1)}
    _store(ledger, entries)
    assert ledger.pending == {}
    await ledger.reindex(chunk=4)
    assert ledger.pending == {"task-a": 2, "task-b": 3}
    assert ledger.task("task-a") is not None
    # task-a was answered (by the worker that owned it before the rebalance): dropped.
    _store(ledger, {"task-a": {"outcome": "final", "event_id": "e", "source": source.format(2)}})
    await ledger.reindex()
    assert ledger.pending == {"task-b": 3}
    assert ledger.task("task-a") is None
