"""Crash-loop protection: how a start is admitted, the gate that runs one recording alone, the
start count the table keeps, and the contracts it touches."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

import schemas
from streams.config import Settings
from streams.crashloop import FIRST_RUN, Run, RunGate, admission
from streams.errors import PipelineError, WorkerCrashed
from streams.idempotency import Ledger, Starts, changelog_topic
from streams.publish import Publisher, TopicNames
from streams.topics import topic_specs


@pytest.mark.parametrize(
    ("max_starts", "expected"),
    [
        pytest.param(3, ["together", "together", "alone", "refuse", "refuse"], id="default-3"),
        pytest.param(2, ["together", "alone", "refuse", "refuse", "refuse"], id="2"),
        pytest.param(4, ["together", "together", "together", "alone", "refuse"], id="4"),
    ],
)
def test_admission_by_earlier_starts(max_starts: int, expected: list[str]) -> None:
    """The first start runs with the others, the last allowed one alone, then no more."""
    assert [admission(before, max_starts) for before in range(5)] == expected


def test_the_bound_cannot_leave_out_the_start_alone() -> None:
    """With one start allowed, a recording would fail without ever running alone."""
    with pytest.raises(ValueError, match="max_starts"):
        Settings(max_starts=1)
    assert Settings().max_starts == 3


async def _settle() -> None:
    """Let every task that can run, run (no clock involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_alone_waits_for_the_running_ones_and_holds_new_ones_back() -> None:
    """A recording admitted alone starts only once the others are done, and none starts
    beside it, not even one that arrived while it waited."""
    gate = RunGate()
    entered: list[str] = []
    release = {name: asyncio.Event() for name in ("a", "b", "c")}

    async def run(name: str, how: Any) -> None:
        async with gate.enter(how):
            entered.append(name)
            await release[name].wait()
            entered.append(f"/{name}")

    a = asyncio.create_task(run("a", "together"))
    await _settle()
    b = asyncio.create_task(run("b", "alone"))
    await _settle()
    c = asyncio.create_task(run("c", "together"))
    await _settle()
    assert entered == ["a"]  # b waits for a; c waits behind b
    release["a"].set()
    await _settle()
    assert entered == ["a", "/a", "b"]
    assert gate.running == 1
    release["b"].set()
    await _settle()
    assert entered == ["a", "/a", "b", "/b", "c"]
    release["c"].set()
    await asyncio.gather(a, b, c)
    assert gate.running == 0


async def test_a_cancelled_wait_to_run_alone_lets_the_others_go_on() -> None:
    """A recording waiting to run alone whose partition is revoked stops waiting, and the
    recordings it held back start."""
    gate = RunGate()
    release = asyncio.Event()
    entered: list[str] = []

    async def run(name: str, how: Any) -> None:
        async with gate.enter(how):
            entered.append(name)
            await release.wait()

    a = asyncio.create_task(run("a", "together"))
    await _settle()
    b = asyncio.create_task(run("b", "alone"))
    await _settle()
    c = asyncio.create_task(run("c", "together"))
    await _settle()
    assert entered == ["a"]
    b.cancel()
    await _settle()
    assert entered == ["a", "c"]
    release.set()
    await asyncio.gather(a, c)
    assert b.cancelled()
    assert gate.running == 0


async def test_together_ones_share_the_gate() -> None:
    """Without a recording alone, any number run at once."""
    gate = RunGate()
    inside = asyncio.Event()

    async def run() -> None:
        async with gate.together():
            await inside.wait()

    tasks = [asyncio.create_task(run()) for _ in range(5)]
    await _settle()
    assert gate.running == 5
    inside.set()
    await asyncio.gather(*tasks)


class _Table(dict[str, Any]):
    """The table's surface that the ledger writes through, keeping what reaches the changelog."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.data = self
        self.changelog: list[tuple[str, Any]] = []

    def partition_for_key(self, key: str) -> int:
        return 0

    def send_changelog(self, partition: int, key: str, value: Any) -> asyncio.Future[None]:
        self.changelog.append((key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _ledger(entries: dict[str, Any] | None = None) -> Ledger:
    ledger = Ledger.__new__(Ledger)
    ledger.table = _Table(entries or {})  # type: ignore[assignment]  # the surface used
    ledger._pending = {}
    return ledger


async def test_starts_are_counted_and_attempts_go_on_from_the_dead_runs() -> None:
    """Each start is written to the changelog; the next one numbers its attempts above every
    attempt the earlier runs could use, even with another attempts setting."""
    ledger = _ledger()
    first = await ledger.begin("rec", "t[0]@5", attempts=5)
    assert first == FIRST_RUN == Run(1, 0)
    second = await ledger.begin("rec", "t[0]@5", attempts=3)
    assert second == Run(2, 5)
    third = await ledger.begin("rec", "t[0]@5", attempts=3)
    assert third == Run(3, 8)
    starts = ledger.starts("rec")
    assert starts == Starts(count=3, attempt_base=8, attempts=3, source="t[0]@5", at=starts.at)
    assert [value["starts"] for _, value in ledger.table.changelog] == [1, 2, 3]  # type: ignore[attr-defined]


async def test_a_terminal_event_ends_the_count() -> None:
    """After a failed event, the recording published again starts from run 1."""
    ledger = _ledger()
    await ledger.begin("rec", "t[0]@5", attempts=5)
    failed = {"type": "failed", "recording_id": "rec", "event_id": "e"}
    await ledger.record(failed, "t[0]@5")
    assert ledger.starts("rec") is None
    assert ledger.answered("rec", "t[0]@5") is not None  # the same event: skipped
    assert ledger.answered("rec", "t[0]@9") is None  # published anew: processed
    assert await ledger.begin("rec", "t[0]@9", attempts=5) == FIRST_RUN


def test_a_started_entry_is_not_an_answer() -> None:
    """A recording a worker died on is processed again, even as the very same event."""
    ledger = _ledger(
        {
            "rec": {
                "outcome": "started",
                "starts": 1,
                "attempt_base": 0,
                "attempts": 5,
                "source": "t[0]@5",
                "at": "2026-01-01T00:00:00Z",
            }
        }
    )
    assert ledger.answered("rec", "t[0]@5") is None
    assert ledger.starts("rec") == Starts(1, 0, 5, "t[0]@5", "2026-01-01T00:00:00Z")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="none"),
        pytest.param({"outcome": "final", "event_id": "e"}, id="terminal"),
        pytest.param({"outcome": "started", "starts": "x"}, id="broken"),
    ],
)
def test_only_started_entries_count(value: Any) -> None:
    """Anything but a complete started entry reads as no earlier start."""
    assert Starts.from_value(value) is None


def _codes(cls: type[PipelineError] = PipelineError) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


def test_the_failed_schema_lists_every_code_of_the_error_tree() -> None:
    """A code the worker can send is one the contract names, worker_crashed included."""
    enum = schemas.load("failed")["properties"]["error"]["properties"]["code"]["enum"]
    assert _codes() <= set(enum)
    assert "worker_crashed" in enum
    assert WorkerCrashed.retryable is False


async def test_partial_events_carry_their_run() -> None:
    """The partial event says which run it comes from, and holds to its schema."""
    sent: list[bytes] = []

    class _Sender:
        async def send(self, topic: str, key: bytes, value: bytes, *, wait: bool) -> None:
            sent.append(value)

    publisher = Publisher(_Sender(), TopicNames("p", "f", "x"))
    await publisher.partial(
        "rec", run=2, attempt=6, sequence=0, channel=0, role=None, chunk_index=0,
        chunk_start_s=0.0, delta="Hello", text="Hello",
    )  # fmt: skip
    event = orjson.loads(sent[0])
    assert (event["run"], event["attempt"]) == (2, 6)
    assert not list(schemas.validator("partial").iter_errors(event))
    assert list(
        schemas.validator("partial").iter_errors({k: v for k, v in event.items() if k != "run"})
    )


def test_the_changelog_is_created_with_the_topics_co_partitioned_and_compacted() -> None:
    """The worker's topic step creates the table's changelog before faust starts."""
    settings = Settings(app_id="app", topic_partitions=64, finalized_retention_s=3600)
    specs = {spec.name: spec for spec in topic_specs(settings)}
    changelog = specs[changelog_topic("app")]
    assert changelog.name == "app-finalized-changelog"
    assert changelog.partitions == specs[settings.topic_recordings].partitions == 64
    assert dict(changelog.configs) == {
        "cleanup.policy": "compact,delete",
        "retention.ms": "3600000",
    }
