"""The account's request quota, shared by a consumer group, against a recogniser that enforces it.

The local scripted server runs with the cloud's quota for ``qwen3-asr-flash`` (100 requests a
minute per key, at most ceil(100/60) = 2 in a calendar second, 429 beyond). Two workers of
one group transcribe a backlog through it: their time slots (streams/ratelimit.py) must keep
the group inside the quota with no coordination but Kafka's partition assignment. The
evidence is recorded, never timed: the server's journal (arrival time and status of every
request) and each worker's own log (its admissions and every re-split of its share).
"""

from __future__ import annotations

import asyncio
import collections
import math
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.api_limits import per_second_limit
from streams.ratelimit import SlotPlan
from tests.audio import AUDIO_DIR, asset
from tests.fixtures.asr_server import ScriptedServer, run_scripted_server
from tests.fixtures.worker import Stack, WorkerProcess, stop_and_drain

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

QUOTA_RPM = 100
PARTITIONS = 8
ALL = tuple(range(PARTITIONS))
RECORDINGS = 40
AUDIO = "en_speechbrain_harvard_birch_canoe.wav"  # 3.3 s of speech: one request per recording


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[ScriptedServer]:
    """A scripted server of its own (a fresh quota) enforcing the account's 100 a minute."""
    log_path = tmp_path / "asr-server.log"
    with run_scripted_server(log_path, extra_args=["--quota-rpm", str(QUOTA_RPM)]) as server:
        yield server


@pytest.fixture
async def quota_stack(
    kafka_bootstrap: str,
    quota_server: ScriptedServer,
    create_topics: Callable[..., Any],
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    """Topics of 8 partitions and a group whose workers hold the real quota, logging JSON."""
    prefix = unique_name("q")
    names = {
        "recordings": f"{prefix}.recordings",
        "partial": f"{prefix}.partial",
        "final": f"{prefix}.final",
        "failed": f"{prefix}.failed",
    }
    await create_topics(list(names.values()), partitions=PARTITIONS)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMS_APP_ID": f"{prefix}-worker",
        "STREAMS_TOPIC_RECORDINGS": names["recordings"],
        "STREAMS_TOPIC_PARTIAL": names["partial"],
        "STREAMS_TOPIC_FINAL": names["final"],
        "STREAMS_TOPIC_FAILED": names["failed"],
        "STREAMS_TOPIC_PARTITIONS": str(PARTITIONS),
        "STREAMS_ASR_BASE_URL": quota_server.base_url,
        "DASHSCOPE_API_KEY": quota_server.api_key or "",
        "STREAMS_FILE_ROOTS": f"{AUDIO_DIR},{tmp_path}",
        "STREAMS_WEB_ENABLED": "false",
        "STREAMS_ASR_REQUESTS_PER_MINUTE": str(QUOTA_RPM),
        "STREAMS_RECORDING_DEADLINE_S": "120",
        # Admissions and shares carry their figures as fields of JSON log lines.
        "STREAMS_LOG_FORMAT": "json",
        # A stopped worker's partitions move within seconds, not a minute (as in the stack).
        "BROKER_SESSION_TIMEOUT": "10",
        "BROKER_HEARTBEAT_INTERVAL": "1",
    }
    stack = Stack(
        bootstrap=kafka_bootstrap, app_id=env["STREAMS_APP_ID"], env=env, tmp=tmp_path, **names
    )
    try:
        yield stack
    finally:
        for worker in stack.workers:
            worker.stop()


def _records(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's JSON log records, in the order it wrote them."""
    if not worker.log_path.exists():
        return []
    records = []
    for line in worker.log_path.read_bytes().splitlines():
        if line.startswith(b"{"):
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a line cut by a concurrent write: the next poll reads it whole
    return records


def _shares(worker: WorkerProcess) -> list[tuple[int, ...]]:
    """Every share the worker logged ("rate share: partitions [..] of 8"), oldest first."""
    return [tuple(r["rate_partitions"]) for r in _records(worker) if "rate_partitions" in r]


def _current(worker: WorkerProcess) -> tuple[int, ...] | None:
    shares = _shares(worker)
    return shares[-1] if shares else None


def _split(*workers: WorkerProcess) -> bool:
    """Whether the workers' current shares are non-empty, disjoint and cover every partition."""
    shares = [_current(w) for w in workers]
    if not all(shares):
        return False
    held = [p for share in shares for p in share or ()]
    return sorted(held) == list(ALL)


async def _until(
    stack: Stack, condition: Callable[[], bool], what: str, timeout_s: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for dead in (w for w in stack.workers if w.crashed()):
            pytest.fail(f"worker exited unexpectedly:\n{dead.log_tail()}")
        if time.monotonic() > deadline:
            tails = "\n".join(w.log_tail(30) for w in stack.workers)
            pytest.fail(f"{what}: not within {timeout_s} s\n{tails}")
        await asyncio.sleep(0.25)


def _admissions(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's admissions, each with the share it held when it logged it."""
    held: tuple[int, ...] = ()
    admitted = []
    for record in _records(worker):
        if "rate_partitions" in record:
            held = tuple(record["rate_partitions"])
        elif "rate_slot" in record:
            admitted.append({**record, "held": held})
    return admitted


def _busiest_second(times: list[float]) -> int:
    return max(collections.Counter(math.floor(t) for t in times).values(), default=0)


async def test_two_workers_keep_the_account_quota_with_no_429(
    quota_stack: Stack, quota_server: ScriptedServer
) -> None:
    """40 recordings over two workers of one group: every one final once, no 429, and no
    calendar second with more than 2 requests, by the server's journal and the workers' logs."""
    stack = quota_stack
    first = stack.start_worker()
    await _until(stack, lambda: _current(first) == ALL, "the first worker holds all partitions")
    second = stack.start_worker()
    # Published as soon as both hold their share, while the rebalance may still settle: no
    # recording may be skipped for it (streams/offsets.py).
    await _until(stack, lambda: _split(first, second), "the two workers split the partitions")

    path = stack.tmp / "call.wav"
    shutil.copy(asset(AUDIO), path)
    ids = [f"quota-{i:03d}" for i in range(RECORDINGS)]
    events: list[dict[str, Any] | bytes] = [
        {"schema_version": 1, "recording_id": rid, "audio_url": path.as_uri()} for rid in ids
    ]
    async with stack.watch() as watcher:
        await stack.publish_many(events)
        await watcher.wait_for(
            lambda w: set(ids) <= w.answered(), timeout_s=150, what="every recording answered"
        )
    # Counted once both workers have stopped and each topic is read to its end: a duplicate
    # found nowhere here does not exist.
    drained = await stop_and_drain(stack)
    terminal = collections.Counter(
        (m.topic, m.value["recording_id"]) for m in drained if m.topic != stack.partial
    )
    assert terminal == {(stack.final, rid): 1 for rid in ids}

    journal = quota_server.journal()
    refused = [e for e in journal if e.get("http_status") != 200]
    assert not refused, f"the recogniser refused {len(refused)} requests: {refused[:3]}"
    arrivals = sorted(e["received_at"] for e in journal)
    assert len(arrivals) >= RECORDINGS
    assert _busiest_second(arrivals) <= per_second_limit(QUOTA_RPM) == 2

    # The workers' own record agrees: one admission per request the server saw, each in a
    # slot of a partition the worker held at that moment, no slot used twice, and no request
    # arriving before its admission.
    admitted = {id(w): _admissions(w) for w in (first, second)}
    assert all(admitted.values()), "both workers sent requests in their share"
    everything = [a for records in admitted.values() for a in records]
    plan = SlotPlan(QUOTA_RPM, PARTITIONS)
    assert len(everything) == len(arrivals)
    for a in everything:
        assert a["rate_partition"] in a["held"]
        assert plan.owner(a["rate_slot"]) == a["rate_partition"]
    slots = [a["rate_slot"] for a in everything]
    assert len(set(slots)) == len(slots), "two requests of the group in one slot"
    admitted_at = sorted(a["admitted_at"] for a in everything)
    assert _busiest_second(admitted_at) <= 2
    assert all(a <= r for a, r in zip(admitted_at, arrivals, strict=True))


async def test_the_share_follows_the_partitions_through_rebalances(quota_stack: Stack) -> None:
    """One worker holds all 8 partitions; a second joins and they split them, disjoint; the
    second leaves and the first holds all 8 again, each step in the workers' own log."""
    stack = quota_stack
    first = stack.start_worker()
    await _until(stack, lambda: _current(first) == ALL, "the first worker holds all partitions")

    second = stack.start_worker()
    await _until(stack, lambda: _split(first, second), "the two workers split the partitions")
    split = (_current(first), _current(second))
    assert all(0 < len(share or ()) < PARTITIONS for share in split)

    await asyncio.to_thread(second.stop)
    await _until(stack, lambda: _current(first) == ALL, "the first worker holds all again")
    # The first worker's log tells the whole story, in order: all, its half, all.
    history = _shares(first)
    whole = history.index(ALL)
    half = history.index(split[0], whole)
    assert ALL in history[half:]
