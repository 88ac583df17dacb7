"""The filetrans backend end to end: one asynchronous task per call, on the real stack.

Real Kafka (the ``stack`` fixture) and the project's scripted ASR server over real HTTP: the
worker compacts the call's speech, uploads it, submits one task, keeps it in the ledger and
moves on; the poller finishes it. Crash cases act on the server's journal (a task held
RUNNING is seen there), never on a timer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from tests.audio import stereo_call, write_wav
from tests.fixtures.asr_server import ScriptedServer
from tests.fixtures.worker import Stack, stop_and_drain, validate

pytestmark = pytest.mark.integration

# (channel, start s, clip): agent on the left, customer on the right; two turns overlap.
SCRIPT = [
    (0, 0.5, "harvard"),
    (1, 4.5, "horizon"),
    (0, 6.2, "librivox"),
    (1, 14.0, "wizard"),
    (0, 19.5, "jfk"),
    (1, 29.0, "horizon"),
]
FILETRANS_ENV = {"STREAMS_ASR_BACKEND": "filetrans", "STREAMS_FILETRANS_POLL_INITIAL_S": "0.2"}


def _event(recording_id: str, path: Path, **recognition: Any) -> dict[str, Any]:
    return {
        "schema_version": 4,
        "recording_id": recording_id,
        "audio_url": path.as_uri(),
        "channels": {"layout": "split", "roles": ["agent", "customer"]},
        "recognition": {"language": "en", **recognition},
    }


async def _terminal(stack: Stack, wanted: set[str], timeout_s: float = 90.0) -> dict[str, Any]:
    messages = await stack.collect(
        lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= wanted,
        timeout_s=timeout_s,
        topics=(stack.final, stack.failed),
    )
    for message in messages:
        validate(message)
    return {m.value["recording_id"]: m.value for m in stack.terminal(messages)}


def _kinds(journal: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in journal if e.get("kind") == kind]


async def test_a_stereo_call_becomes_turns_within_0_3_s_and_words_on_the_call_timeline(
    stack: Stack, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    """One task for the call; turns in order with their roles, boundaries within 0.3 s of
    where each clip's speech is; words in order inside their sentence, on the call timeline."""
    call, placed = stereo_call(SCRIPT)
    path = write_wav(tmp_path / "call.wav", call)
    stack.start_worker(**FILETRANS_ENV)
    await stack.publish([_event("call", path, backend="filetrans")])
    final = (await _terminal(stack, {"call"}))["call"]
    assert final["type"] == "final", final
    assert final["backend"] == "filetrans"
    assert final["plan"] == "task"
    journal = scripted_server.journal()
    assert len(_kinds(journal, "submit")) == 1
    turns = final["turns"]
    assert [t["role"] for t in turns] == [["agent", "customer"][u.channel] for u in placed]
    errors = []
    for turn, utterance in zip(turns, placed, strict=True):
        errors += [
            abs(turn["start_s"] - utterance.speech_start_s),
            abs(turn["end_s"] - utterance.speech_end_s),
        ]
    print(f"\nturn boundary error: max {max(errors):.3f} s, mean {sum(errors) / len(errors):.3f} s")
    assert max(errors) <= 0.3, (errors, turns)
    sentences, words = final["sentences"], final["words"]
    assert words
    assert sentences
    for index, sentence in enumerate(sentences):
        mine = [w for w in words if w["sentence"] == index]
        starts = [w["start"] for w in mine]
        assert starts == sorted(starts)
        for word in mine:
            assert (
                sentence["start"] - 0.01 <= word["start"] <= word["end"] <= sentence["end"] + 0.01
            )
    # Billed per channel, rounded up, on the compacted audio: less than the call's length.
    assert 0 < final["billed_seconds"] <= 2 * (final["audio_seconds"] + 2)
    assert final["billed_seconds"] < 2 * final["audio_seconds"]


async def _held_task(server: ScriptedServer, rid: str, timeout_s: float = 60.0) -> str:
    """The id of the task of ``rid`` once the journal shows it held RUNNING."""
    deadline = time.monotonic() + timeout_s
    while True:
        for entry in server.journal():
            if (
                entry.get("kind") == "task"
                and entry.get("fault") == "task_hold"
                and rid in (entry.get("file_url") or "")
            ):
                return str(entry["task_id"])
        assert time.monotonic() < deadline, "no task held within the timeout"
        await asyncio.sleep(0.05)


async def _polls(
    server: ScriptedServer, task_id: str, *, more_than: int, timeout_s: float = 60.0
) -> int:
    """Polls of ``task_id`` in the journal, once there are more than ``more_than``."""
    deadline = time.monotonic() + timeout_s
    while True:
        polls = [e for e in _kinds(server.journal(), "poll") if e.get("task_id") == task_id]
        if len(polls) > more_than:
            return len(polls)
        assert time.monotonic() < deadline, f"{task_id}: no poll after {more_than}"
        await asyncio.sleep(0.05)


async def test_worker_killed_while_its_task_runs_resumes_polling_the_same_task(
    stack: Stack, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    """SIGKILL once the task is held RUNNING (journal), restart: the new worker polls the same
    task id, never submits again, and the recording gets exactly one final."""
    call, _ = stereo_call(SCRIPT[:3])
    path = write_wav(tmp_path / "held.wav", call)
    scripted_server.set_faults([{"fault": "task_hold", "match": {"file_url_contains": "held-1"}}])
    worker = stack.start_worker(**FILETRANS_ENV)
    await stack.publish([_event("held-1", path, backend="filetrans")])
    task_id = await _held_task(scripted_server, "held-1")
    # The task entry is on the broker before the first poll: wait for a poll, then kill.
    polls_before = await _polls(scripted_server, task_id, more_than=0)
    await asyncio.to_thread(worker.kill)
    worker.start()
    # The restarted worker polls the same task (journal), then the task is let go.
    await _polls(scripted_server, task_id, more_than=polls_before, timeout_s=90)
    scripted_server.release(task_id)
    await _terminal(stack, {"held-1"})
    messages = await stop_and_drain(stack)
    journal = scripted_server.journal()
    submits = [e for e in _kinds(journal, "submit") if e.get("status") == "PENDING"]
    assert [e["task_id"] for e in submits] == [task_id]
    terminal = [m for m in stack.terminal(messages) if m.value["recording_id"] == "held-1"]
    assert [m.value["type"] for m in terminal] == ["final"], [m.value for m in terminal]
    for message in messages:
        validate(message)


def _one_per_partition(prefix: str, partitions: int) -> list[str]:
    """Recording ids whose keys land one on each partition (Kafka's default partitioner)."""
    ids: dict[int, str] = {}
    n = 0
    while len(ids) < partitions:
        rid = f"{prefix}-{n}"
        ids.setdefault((murmur2(rid.encode()) & 0x7FFFFFFF) % partitions, rid)
        n += 1
    return [ids[p] for p in range(partitions)]


async def test_a_worker_that_joins_finishes_the_tasks_of_the_partitions_it_takes_over(
    stack: Stack, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    """Tasks submitted by one worker, held RUNNING while a second worker joins the group: the
    newcomer polls the tasks of the partitions it took over (from their ledger entries) and
    publishes their finals; every recording is submitted once and answered once."""
    call, _ = stereo_call(SCRIPT[:2])
    path = write_wav(tmp_path / "moved.wav", call)
    rids = _one_per_partition("moved", int(stack.env["STREAMS_TOPIC_PARTITIONS"]))
    scripted_server.set_faults([{"fault": "task_hold", "match": {"file_url_contains": "moved-"}}])
    first = stack.start_worker(**FILETRANS_ENV)
    await stack.publish([_event(rid, path, backend="filetrans") for rid in rids])
    tasks = {rid: await _held_task(scripted_server, rid) for rid in rids}
    for task_id in tasks.values():
        await _polls(scripted_server, task_id, more_than=0)
    second = stack.start_worker(**FILETRANS_ENV)
    deadline = time.monotonic() + 120
    while "Worker ready" not in second.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, second.log_tail()
        await asyncio.sleep(0.2)
    scripted_server.release()
    await _terminal(stack, set(rids), timeout_s=120)
    messages = await stop_and_drain(stack)
    submits = [
        e for e in _kinds(scripted_server.journal(), "submit") if e.get("status") == "PENDING"
    ]
    assert sorted(e["task_id"] for e in submits) == sorted(tasks.values())
    finals = [m.value for m in stack.terminal(messages)]
    assert sorted(f["recording_id"] for f in finals) == sorted(rids)
    assert {f["type"] for f in finals} == {"final"}
    newcomer = second.log_path.read_text(errors="replace")
    taken_over = [rid for rid in rids if f"recording {rid} final from filetrans task" in newcomer]
    assert taken_over, "the joining worker finished no task"
    assert "submitted; the offset moves on" not in newcomer  # it only polled
    assert len(taken_over) < len(rids), first.log_tail()  # the first kept some partitions


async def test_a_failed_task_gives_one_failed_event_with_the_vendor_code(
    stack: Stack, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    """A task that ends FAILED answers its recording with one failed event naming the code."""
    call, _ = stereo_call(SCRIPT[:2])
    path = write_wav(tmp_path / "fails.wav", call)
    scripted_server.set_faults(
        [
            {
                "fault": "task_fail",
                "code": "FILE_403_FORBIDDEN",
                "match": {"file_url_contains": "fails-1"},
            }
        ]
    )
    stack.start_worker(**FILETRANS_ENV)
    await stack.publish([_event("fails-1", path, backend="filetrans")])
    await _terminal(stack, {"fails-1"})
    messages = await stop_and_drain(stack)
    terminal = [m.value for m in stack.terminal(messages) if m.value["recording_id"] == "fails-1"]
    assert [t["type"] for t in terminal] == ["failed"], terminal
    assert terminal[0]["error"]["code"] == "asr_task_failed"
    assert terminal[0]["error"]["message"].startswith("FILE_403_FORBIDDEN")
    # The poller's failed event carries the recording event, as the agent's do (to replay it).
    original = terminal[0]["original_event"]
    assert original["recording_id"] == "fails-1"
    assert original["recognition"]["backend"] == "filetrans"


async def test_a_task_past_the_recordings_deadline_fails_deadline_exceeded(
    stack: Stack, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    """A task held RUNNING beyond the recording's deadline: one failed ``deadline_exceeded``,
    and a partition that moved on meanwhile (a second recording finished first)."""
    call, _ = stereo_call(SCRIPT[:2])
    late, quick = write_wav(tmp_path / "late.wav", call), write_wav(tmp_path / "quick.wav", call)
    scripted_server.set_faults([{"fault": "task_hold", "match": {"file_url_contains": "late-1"}}])
    stack.start_worker(**FILETRANS_ENV, STREAMS_RECORDING_DEADLINE_S="15")
    # Same key prefix, so that both may share a partition; either way each is answered once.
    await stack.publish([_event("late-1", late, backend="filetrans")])
    await _held_task(scripted_server, "late-1")
    await stack.publish([_event("quick-1", quick, backend="filetrans")])
    await _terminal(stack, {"late-1", "quick-1"}, timeout_s=120)
    messages = await stop_and_drain(stack)
    scripted_server.release()
    terminal = {m.value["recording_id"]: m.value for m in stack.terminal(messages)}
    assert len(stack.terminal(messages)) == 2
    assert terminal["quick-1"]["type"] == "final"
    assert terminal["late-1"]["type"] == "failed"
    assert terminal["late-1"]["error"]["code"] == "deadline_exceeded"
    assert terminal["quick-1"]["completed_at"] < terminal["late-1"]["failed_at"]
