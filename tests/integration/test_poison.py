"""A poison recording on the real stack: it kills the worker at every start, and its partition
still moves on.

- A recording whose decoder aborts (the test hook ``STREAMS_TEST_HOOK_ABORT_DECODING`` calls
  ``abort()`` where decoding starts, as FFmpeg does when an internal assertion fails) kills a
  worker that decodes in its threads at every start: it is answered with exactly one failed
  event ``worker_crashed`` after ``STREAMS_MAX_STARTS`` worker deaths, without reaching the
  recogniser, and every other recording, on its partition and on the others, ends final.
  With audio processes the worker does not die at all: one failed event, the rest final.
- A recording redone after its worker died numbers its partial events' attempts above the dead
  run's, so "keep the highest attempt" keeps the new run's text.
- A first start with 64 partitions and a fresh app id runs without ``PartitionsMismatch``: the
  worker creates the table's changelog with its topics, compacted and co-partitioned.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.crashloop import TEST_ABORT_VARIABLE
from streams.idempotency import changelog_topic
from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer
from tests.fixtures.worker import (
    Message,
    Stack,
    Watcher,
    WorkerProcess,
    read_to_end,
    stop_and_drain,
    validate,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

AUDIO = "en_speechbrain_harvard_birch_canoe.wav"  # 3.3 s of speech: one request
MAX_STARTS = 3  # the default, which these tests hold


def _events(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    """Recording events on one short file; the context names the recording for the journal."""
    path = stack.tmp / "call.wav"
    if not path.exists():
        shutil.copy(asset(AUDIO), path)
    return [
        {
            "schema_version": 1,
            "recording_id": rid,
            "audio_url": path.as_uri(),
            "call": {"call_id": f"C-{rid}", "queue": "poison"},
            "recognition": {"context": f"rid={rid};"},
        }
        for rid in ids
    ]


def _requests_of(scripted_server: ScriptedServer, rid: str) -> list[dict[str, Any]]:
    return [e for e in scripted_server.journal() if f"rid={rid};" in (e.get("context") or "")]


def _by_recording(stack: Stack, messages: list[Message]) -> dict[str, list[Message]]:
    terminal: dict[str, list[Message]] = collections.defaultdict(list)
    for message in stack.terminal(messages):
        terminal[message.value["recording_id"]].append(message)
    return terminal


def _log(worker: WorkerProcess) -> str:
    return worker.log_path.read_text(errors="replace")


async def _restart_whenever_it_dies(
    worker: WorkerProcess, watcher: Watcher, until: Callable[[Watcher], bool], *, timeout_s: float
) -> list[int]:
    """Start ``worker`` again each time it exits, until ``until`` holds; return the exit codes."""
    codes: list[int] = []
    deadline = time.monotonic() + timeout_s
    while not until(watcher):
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            codes.append(worker.proc.returncode)
            assert len(codes) <= MAX_STARTS, f"died {codes} times:\n{worker.log_tail()}"
            worker.start()
        if time.monotonic() > deadline:
            pytest.fail(
                f"not done within {timeout_s} s after exits {codes}; "
                f"{len(watcher.terminal())} terminal events.\n{worker.log_tail(120)}"
            )
        await asyncio.sleep(0.2)
    return codes


POISON = "poison-0005"
POISON_IDS = [f"poison-{i:04d}" for i in range(24)]


async def _poison_run(
    stack: Stack, scripted_server: ScriptedServer, **env: str
) -> tuple[WorkerProcess, list[int], list[Message]]:
    """Publish 24 recordings, one of them poison, to a worker whose decoder aborts on it;
    start the worker again whenever it dies, until every recording is answered."""
    # Every request waits 1 s for its first byte: when the poison recording is decoded,
    # recordings of the other partitions are in the middle of recognition.
    scripted_server.set_faults([{"fault": "slow_first_byte", "delay_s": 1.0}])
    worker = stack.start_worker(**{TEST_ABORT_VARIABLE: POISON}, **env)
    async with stack.watch() as watcher:
        await stack.publish(_events(stack, POISON_IDS))

        def done(w: Watcher) -> bool:
            return set(POISON_IDS) <= w.answered()

        codes = await _restart_whenever_it_dies(worker, watcher, done, timeout_s=420)
    children = worker.children()
    messages = await stop_and_drain(stack)
    # The audio processes (and multiprocessing's resource tracker) end with the worker.
    assert not await asyncio.to_thread(_gone_within, children, 30.0), children
    for message in messages:
        validate(message)
    return worker, codes, messages


async def _assert_poison_failed_once_and_the_rest_final(
    stack: Stack, scripted_server: ScriptedServer, messages: list[Message], *, stage: str
) -> None:
    # Where each recording sits: the poison one has recordings behind it on its partition.
    placed = {
        m.value["recording_id"]: m for m in await read_to_end(stack.bootstrap, (stack.recordings,))
    }
    home = placed[POISON].partition
    behind = [
        rid
        for rid in POISON_IDS
        if placed[rid].partition == home and placed[rid].offset > placed[POISON].offset
    ]
    assert len(behind) >= 2, behind  # fixed ids, fixed partitions: a check on the setup

    terminal = _by_recording(stack, messages)
    [failed] = terminal[POISON]
    assert failed.topic == stack.failed
    error = failed.value["error"]
    assert (error["code"], error["stage"], error["retryable"]) == ("worker_crashed", stage, False)
    assert failed.value["original_event"]["recording_id"] == POISON
    assert _requests_of(scripted_server, POISON) == []  # the decoder dies before any request
    assert not [
        m for m in messages if m.topic == stack.partial and m.value["recording_id"] == POISON
    ]
    republished = sum(_log(w).count("again, without recognition") for w in stack.workers)
    duplicates = 0
    for rid in sorted(set(POISON_IDS) - {POISON}):
        events = terminal[rid]
        assert {m.topic for m in events} == {stack.final}, (rid, [m.value for m in events])
        # A second final can only be the same event, re-sent from the ledger after a death
        # in the moment between publishing it and recording it (idempotency.py).
        assert len({m.value["event_id"] for m in events}) == 1, rid
        duplicates += len(events) - 1
    assert duplicates <= republished
    assert all(terminal[rid][0].topic == stack.final for rid in behind)


async def test_a_recording_whose_decoder_kills_the_worker_fails_once_and_the_rest_finish(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """Decoding in the worker's threads, the poison recording's decoder aborts the worker at
    every start, and the worker is started again each time: after 3 deaths it gets exactly one
    failed event ``worker_crashed`` (not retryable) without being started again and without
    reaching the recogniser; the recordings behind it on its partition, and those in flight on
    the others at each death, all end in one final."""
    worker, codes, messages = await _poison_run(stack, scripted_server, STREAMS_AUDIO_PROCESSES="0")
    log = _log(worker)
    assert codes == [-signal.SIGABRT] * MAX_STARTS
    assert log.count(f"aborting the decoder on {POISON}") == MAX_STARTS
    await _assert_poison_failed_once_and_the_rest_final(
        stack, scripted_server, messages, stage="pipeline"
    )
    # Its third start ran alone in the worker; the fourth delivery was not started at all.
    assert re.search(rf"recording {POISON} at \S+: start 3 of at most 3;.* runs alone", log)
    assert not re.search(rf"recording {POISON} at \S+: start 4", log)
    # Recordings in flight at a death were started again, never refused.
    assert log.count(": worker_crashed after") == 1


async def test_a_decoder_crash_in_an_audio_process_fails_one_recording_not_the_worker(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """Decoding in 2 audio processes, the poison recording's decoder aborts its process: the
    worker never dies; the recording is decoded again in a process of its own, aborts again
    and gets one failed event ``worker_crashed`` at stage decode; the recordings whose decode
    shared the broken pool are decoded again and end final, like every other."""
    worker, codes, messages = await _poison_run(stack, scripted_server, STREAMS_AUDIO_PROCESSES="2")
    log = _log(worker)
    assert codes == []
    assert log.count(f"aborting the decoder on {POISON}") == 2
    await _assert_poison_failed_once_and_the_rest_final(
        stack, scripted_server, messages, stage="decode"
    )
    assert "start 2 of" not in log  # nothing was redelivered: the worker lived


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _gone_within(pids: list[int], timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` for the processes to end; return those still alive."""
    deadline = time.monotonic() + timeout_s
    while (alive := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


async def test_a_run_after_a_death_numbers_its_attempts_above_the_dead_runs(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """Run 1 streams partial text on attempts 1 and 2 (both cut) and hangs on attempt 3; the
    worker is SIGKILLed and started again. Run 2's partial events say ``run`` 2 and number
    their attempt from 4 (3 attempts per chunk were allowed to run 1), so the highest attempt
    per chunk spells the final text, and no dead run's delta is taken for the new one's."""
    rid = "rerun-0000"
    match = {"context_contains": f"rid={rid};"}
    scripted_server.set_faults(
        [
            {"match": {**match, "times": 2}, "fault": "cut", "after_deltas": 1},
            {"match": {**match, "times": 1}, "fault": "slow_first_byte", "delay_s": 300},
        ]
    )
    worker = stack.start_worker(STREAMS_ASR_ATTEMPTS="3", STREAMS_RECORDING_DEADLINE_S="600")
    async with stack.watch() as watcher:
        await stack.publish(_events(stack, [rid]))

        def third_attempt_hangs(w: Watcher) -> bool:
            attempts = {m.value["attempt"] for m in w.messages if m.topic == stack.partial}
            return attempts == {1, 2} and len(_requests_of(scripted_server, rid)) == 3

        await watcher.wait_for(third_attempt_hangs, what="attempt 3 in flight")
        await asyncio.to_thread(worker.kill)
        worker.start()
        await watcher.wait_for(lambda w: rid in w.answered(), timeout_s=180, what="final")
    messages = await stop_and_drain(stack)
    for message in messages:
        validate(message)

    [final] = _by_recording(stack, messages)[rid]
    assert final.topic == stack.final
    partials = [m.value for m in messages if m.topic == stack.partial]
    by_run: dict[int, set[int]] = collections.defaultdict(set)
    for p in partials:
        by_run[p["run"]].add(p["attempt"])
    assert dict(by_run) == {1: {1, 2}, 2: {4}}
    best: dict[tuple[int, int], int] = {}
    for p in partials:
        key = (p["channel"], p["chunk_index"])
        best[key] = max(best.get(key, 0), p["attempt"])
    kept = sorted(
        (p for p in partials if p["attempt"] == best[(p["channel"], p["chunk_index"])]),
        key=lambda p: p["sequence"],
    )
    assert {p["run"] for p in kept} == {2}
    assert "".join(p["delta"] for p in kept).strip() == final.value["text"]
    assert "start 2 of at most 3" in _log(worker)


async def test_a_first_start_with_64_partitions_and_a_fresh_app_id_runs(
    stack: Stack, scripted_server: ScriptedServer, unique_name: Callable[[str], str]
) -> None:
    """Topics made by the worker itself, 64 partitions, an app id no broker has seen: no
    ``PartitionsMismatch``; the changelog exists before faust starts, with 64 partitions,
    compacted; recordings on many partitions end final."""
    prefix = unique_name("p64")
    names = {kind: f"{prefix}.{kind}" for kind in ("recordings", "partial", "final", "failed")}
    app_id = f"{prefix}-worker"
    env = {
        "STREAMS_APP_ID": app_id,
        "STREAMS_TOPIC_PARTITIONS": "64",
        **{f"STREAMS_TOPIC_{kind.upper()}": name for kind, name in names.items()},
    }
    big = dataclasses.replace(stack, app_id=app_id, env={**stack.env, **env}, workers=[], **names)
    worker = big.start_worker()
    try:
        ids = [f"wide-{i:04d}" for i in range(48)]
        async with big.watch() as watcher:
            await _wait_for_topic(big, names["recordings"], worker)
            await big.publish(_events(big, ids))
            await watcher.wait_for(
                lambda w: set(ids) <= w.answered(), timeout_s=300, what="48 finals"
            )
        messages = await stop_and_drain(big)
    finally:
        for w in big.workers:
            w.stop()
    log = _log(worker)
    assert "PartitionsMismatch" not in log
    terminal = _by_recording(big, messages)
    assert all({m.topic for m in terminal[rid]} == {big.final} for rid in ids)
    assert len({m.partition for rid in ids for m in terminal[rid]}) > 16

    changelog = changelog_topic(app_id)
    admin = AIOKafkaAdminClient(bootstrap_servers=big.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([changelog])
        [configs] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, changelog)]
        )
    finally:
        await admin.close()
    assert len(described["partitions"]) == 64
    entries = {name: value for name, value, *_ in configs.resources[0][4]}
    assert entries["cleanup.policy"] == "compact,delete"


async def _wait_for_topic(stack: Stack, topic: str, worker: WorkerProcess) -> None:
    """Wait until the worker created its topics (they do not exist before it starts)."""
    deadline = time.monotonic() + 120
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        while topic not in await admin.list_topics():
            assert not worker.crashed(), worker.log_tail()
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
