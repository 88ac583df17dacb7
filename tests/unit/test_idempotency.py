"""Reading the finalized table's values and the recording id of raw events."""

from __future__ import annotations

from typing import Any

import pytest

from streams.events import recording_id_of
from streams.idempotency import Ledger, Outcome


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


class _Table(dict[str, Any]):
    def partition_for_key(self, key: str) -> int:
        return 0  # co-partitioning holds


@pytest.mark.parametrize(
    ("stored", "source", "skipped"),
    [
        pytest.param("final", "t[0]@9", True, id="final-republished"),
        pytest.param("final", "t[0]@1", True, id="final-redelivered"),
        pytest.param("failed", "t[0]@1", True, id="failed-redelivered"),
        pytest.param("failed", "t[0]@9", False, id="failed-republished"),
    ],
)
def test_answered(stored: str, source: str, skipped: bool) -> None:
    """A final is never redone; a failure only when the very same event comes again."""
    ledger = Ledger.__new__(Ledger)
    ledger.table = _Table(  # type: ignore[assignment]  # only .get() is used here
        {"rec": {"outcome": stored, "event_id": "e", "source": "t[0]@1", "at": "now"}}
    )
    assert (ledger.answered("rec", source) is not None) is skipped
    assert ledger.answered("other", source) is None


def test_forget_expired_drops_only_old_entries_of_a_memory_store() -> None:
    """Entries older than the retention leave memory; newer ones stay."""

    class _Store:
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = data

    class _MemoryTable:
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = _Store(data)

    entries = {
        "old": {"outcome": "final", "at": "2020-01-01T00:00:00.000000Z"},
        "new": {"outcome": "final", "at": "2999-01-01T00:00:00.000000Z"},
    }
    ledger = Ledger.__new__(Ledger)
    ledger._retention_s = 86400
    ledger.table = _MemoryTable(entries)  # type: ignore[assignment]  # the store's shape only
    assert ledger.forget_expired() == 1
    assert list(entries) == ["new"]
