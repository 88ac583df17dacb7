"""Fault matrix on the real stack: nothing lost, nothing billed twice, whatever breaks.

Each case publishes at least 100 recordings to a fresh topic set, breaks something while a
real worker process transcribes them against the scripted recogniser, and then counts:

- every recording has exactly one terminal event (final or failed), none lost;
- no recogniser request for a recording started after its final event was published (the
  scripted server's journal timestamps every request; the broker timestamps every event);
- partial events of abandoned attempts are marked: the highest attempt of each chunk spells
  the final text.

Nothing is timed: every count is taken after the workers have stopped and each output topic
has been read to its end (``stop_and_drain``), and every fault that must land while work is in
flight is triggered by what the test observes (requests held open in the server's journal),
never by a timer. Pauses are checked against the retry point the server announced, by the
journal's and the worker's own records.

The figures of every case are printed as one table at the end of the module (``-s`` is not
needed: they go to the terminal reporter).
"""

from __future__ import annotations

import asyncio
import collections
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.api_limits import per_second_limit
from streams.dev.localkafka import LocalKafka
from streams.ratelimit import SlotPlan
from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer
from tests.fixtures.worker import Message, Stack, read_to_end, stop_and_drain, validate

# Each case bounds its own waits (up to 300 s for the restarts); the suite default of 120 s
# is for hung awaits, not for runs of a hundred recordings on a busy 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RECORDINGS = 100
AUDIO = "en_speechbrain_harvard_birch_canoe.wav"  # 3.3 s of speech: one request per recording
# Production-like retry budget; the stack fixture's 3 attempts and 60 s are for quick tests.
MATRIX_ENV = {"STREAMS_ASR_ATTEMPTS": "5", "STREAMS_RECORDING_DEADLINE_S": "120"}
# Every request waits this long for its first byte, well inside the timeout: the run then lasts
# long enough for a crash, restart or rebalance to land while recordings are in flight.
PACE = {"fault": "slow_first_byte", "delay_s": 0.4}
# Every request that starts under this rule stays open until something cuts it (a crash, a
# restart): what the test sees in flight in the journal is then in flight when it acts.
HOLD = {"fault": "slow_first_byte", "delay_s": 600}


@dataclass
class Figures:
    """What one fault case did and what became of its recordings."""

    case: str
    recordings: int = 0
    final: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: int = 0
    """Terminal events beyond the first of a recording (same deterministic event_id)."""
    requests: int = 0
    faults: int = 0
    """Requests the server answered with an injected fault (or that a crash cut)."""
    resent: int = 0
    """Requests beyond the final's own that no fault explains: in flight when a crash hit."""
    abandoned_partials: int = 0
    after_final: int = 0
    """Recogniser requests for a recording that started after its final was published."""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


FIGURES: list[Figures] = []


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not FIGURES:
        return
    # Module teardown runs under output capture: lift it, the table is the point.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("Fault matrix (recordings per case; counts from Kafka and the journal)")
        for line in _table(FIGURES):
            reporter.write_line(line)


def _table(rows: list[Figures]) -> list[str]:
    head = [
        "case",
        "recs",
        "final",
        "failed",
        "lost",
        "dup",
        "requests",
        "faults",
        "re-sent",
        "abandoned partials",
        "after final",
        "s",
        "notes",
    ]
    body = [
        [
            r.case,
            r.recordings,
            r.final,
            r.failed,
            r.lost,
            r.duplicates,
            r.requests,
            r.faults,
            r.resent,
            r.abandoned_partials,
            r.after_final,
            f"{r.seconds:.1f}",
            "; ".join(r.notes),
        ]
        for r in rows
    ]
    cells = [[str(c) for c in row] for row in [head, *body]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(cells[0]), rule, *(line(row) for row in cells[1:])]


def _events(stack: Stack, prefix: str, count: int = RECORDINGS) -> list[dict[str, Any]]:
    """``count`` recording events on one short speech file; the context names the recording."""
    path = stack.tmp / "call.wav"
    if not path.exists():
        shutil.copy(asset(AUDIO), path)
    return [
        {
            "schema_version": 1,
            "recording_id": f"{prefix}-{i:04d}",
            "audio_url": path.as_uri(),
            "call": {"call_id": f"C-{i}", "queue": "faults"},
            # The recogniser's journal shows the context: it maps requests to recordings, and
            # fault rules can single out one recording with ``context_contains``.
            "recognition": {"context": f"rid={prefix}-{i:04d};"},
        }
        for i in range(count)
    ]


def _rid(entry: dict[str, Any]) -> str | None:
    found = re.search(r"rid=([^;]+);", entry.get("context") or "")
    return found.group(1) if found else None


def _per_recording(rules: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Fault rules that each hit exactly one recording (deterministic, unlike ``rate``)."""
    return [
        {"match": {"context_contains": f"rid={rid};", **rule.pop("match", {})}, **rule}
        for rid, rule in rules
    ]


def _tally(
    case: str,
    stack: Stack,
    messages: list[Message],
    ids: list[str],
    journal: list[dict[str, Any]],
    started: float,
    *,
    check_partials: bool = True,
    paced: str | None = None,
    crashes: bool = False,
) -> Figures:
    """Count what became of ``ids`` and assert the invariants every case shares."""
    figures = Figures(case, recordings=len(ids), seconds=time.monotonic() - started)
    terminal: dict[str, list[Any]] = collections.defaultdict(list)
    for message in stack.terminal(messages):
        validate(message)
        terminal[message.value["recording_id"]].append(message)
    partials: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for message in messages:
        if message.topic == stack.partial:
            partials[message.value["recording_id"]].append(message.value)

    lost = [rid for rid in ids if not terminal.get(rid)]
    figures.lost = len(lost)
    first_final_at: dict[str, float] = {}
    for rid in ids:
        events = terminal.get(rid, [])
        if not events:
            continue
        first = events[0]
        if first.topic == stack.final:
            figures.final += 1
            assert first.timestamp is not None
            first_final_at[rid] = first.timestamp
        else:
            figures.failed += 1
        figures.duplicates += len(events) - 1
        # A second terminal event can only be the same deterministic event (the documented
        # window): consumers drop it by event_id.
        assert {e.value["event_id"] for e in events} == {first.value["event_id"]}, rid

    mine = [e for e in journal if _rid(e) in set(ids)]
    figures.requests = len(mine)
    figures.faults = sum(
        1
        for e in mine
        if (e.get("fault") and e.get("fault") != paced) or (e.get("http_status") or 200) >= 400
    )
    figures.after_final = sum(
        1
        for e in mine
        if _rid(e) in first_final_at and (e.get("started_at") or 0) > first_final_at[_rid(e)]
    )

    answered_by = 0
    for rid, events in terminal.items():
        final = next((e.value for e in events if e.topic == stack.final), None)
        if final is None:
            continue
        answered_by += len(final["request_ids"])
        best: dict[tuple[int, int], int] = {}
        for p in partials[rid]:
            key = (p["channel"], p["chunk_index"])
            best[key] = max(best.get(key, 0), p["attempt"])
        kept = [p for p in partials[rid] if p["attempt"] == best[(p["channel"], p["chunk_index"])]]
        figures.abandoned_partials += len(partials[rid]) - len(kept)
        if check_partials:
            by_chunk: dict[tuple[float, int], list[dict[str, Any]]] = collections.defaultdict(list)
            for p in kept:
                by_chunk[(p["chunk_start_s"], p["channel"])].append(p)
            spelled = " ".join(
                "".join(p["delta"] for p in sorted(chunk, key=lambda p: p["sequence"])).strip()
                for _, chunk in sorted(by_chunk.items())
            )
            assert spelled == final["text"], f"{rid}: partials of the last attempts disagree"

    figures.resent = max(0, figures.requests - figures.faults - answered_by)
    FIGURES.append(figures)
    assert not lost, f"lost recordings: {lost[:10]}"
    assert figures.after_final == 0, f"{case}: recordings transcribed again after their final"
    # Without a crashed worker there is no second terminal event at all; with one, only a kept
    # final published again (idempotency.py's remaining window), never a new transcription.
    republished = _log_count(stack, "again, without recognition")
    assert figures.duplicates <= (republished if crashes else 0), f"{case}: duplicates"
    return figures


async def _run(
    stack: Stack,
    server: ScriptedServer,
    prefix: str,
    *,
    act: Any = None,
    act_at: tuple[float, ...] = (),
    timeout_s: float = 240.0,
    count: int = RECORDINGS,
    drain: bool = True,
) -> tuple[list[Message], list[str], float]:
    """Publish ``count`` recordings; call ``act(i)`` once fraction ``act_at[i]`` is answered.

    Once every recording is answered, the workers are stopped and the output topics read to
    their end, so that a duplicate cannot come after the count; ``drain=False`` leaves the
    workers running and returns what was read so far (the caller drains later).
    """
    events = _events(stack, prefix, count)
    ids = [e["recording_id"] for e in events]
    started = time.monotonic()
    async with stack.watch() as watcher:
        await stack.publish_many(events)
        for i, fraction in enumerate(act_at):
            await watcher.wait_for(
                lambda w, n=int(fraction * count): len(w.answered() & set(ids)) >= n,
                timeout_s=timeout_s,
                what=f"{fraction:.0%} of the recordings answered",
            )
            await act(i)
        await watcher.wait_for(
            lambda w: set(ids) <= w.answered(), timeout_s=timeout_s, what="every recording"
        )
    if not drain:
        return watcher.messages, ids, started
    return await stop_and_drain(stack), ids, started


async def _hold_in_flight(server: ScriptedServer, timeout_s: float = 120.0) -> set[str]:
    """Hold every new request open (``HOLD``) until the journal shows one in flight.

    Returns the ids of the held requests seen in flight: none of them can end by itself, so
    a crash or restart that follows cuts every one.
    """
    server.set_faults([HOLD])
    # Requests the journal knows now may have started under the old rules; any later one
    # started under HOLD (the rules are replaced at once).
    known = {e["request_id"] for e in server.journal()}
    deadline = time.monotonic() + timeout_s
    while True:
        held = {
            e["request_id"]
            for e in server.journal()
            if e["request_id"] not in known and not e["finished"]
        }
        if held:
            return held
        assert time.monotonic() < deadline, f"no request held in flight within {timeout_s} s"
        await asyncio.sleep(0.05)


async def test_429_bursts_slow_the_worker_down_and_fail_nothing(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """Two bursts of 429s (Retry-After 1 s) and 429 error frames mid-stream: all final, and
    after each 429 nothing is sent before the retry point the server announced.

    Checked on records, not on a window of time: the server's journal stamps when it refused
    each request (``started_at``, before the refusal is sent) and when each request arrived;
    the worker's log says, in order, each time it paused and each request it admitted (with the
    time it admitted it). No slack is needed: every bound is a chain of cause and effect.
    """
    prefix = "t429"
    frames = [
        (
            f"{prefix}-{i:04d}",
            {"fault": "error_frame_429", "retry_after_s": 1, "match": {"times": 1}},
        )
        for i in range(0, RECORDINGS, 10)
    ]
    burst_rule = {"fault": "429", "match": {"times": 24}, "retry_after_s": RETRY_AFTER_S}
    scripted_server.set_faults([dict(burst_rule), *_per_recording(frames)])
    stack.start_worker(**MATRIX_ENV)

    async def burst(i: int) -> None:
        scripted_server.set_faults([dict(burst_rule)])

    messages, ids, started = await _run(stack, scripted_server, prefix, act=burst, act_at=(0.5,))
    journal = scripted_server.journal()
    figures = _tally("429 bursts + 429 frames", stack, messages, ids, journal, started)
    assert figures.failed == 0
    refusals = [e for e in journal if e.get("fault") == "429"]  # refused before the stream
    frames = [e for e in journal if e.get("fault") == "error_frame_429"]
    assert len(refusals) == 48
    assert frames  # the frame rules of recordings not yet sent go with the second burst

    # 1. Each refused recording is sent again, and that request reaches the server no sooner
    # than the retry point announced: the refusal's own time + Retry-After (server's clock).
    by_recording: dict[str | None, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in journal:
        by_recording[_rid(e)].append(e)
    retried = 0
    for refusal in refusals:
        later = [e for e in by_recording[_rid(refusal)] if e["started_at"] > refusal["started_at"]]
        assert later, f"{_rid(refusal)} was refused and never sent again"
        retry = min(later, key=lambda e: e["started_at"])
        assert retry["received_at"] >= refusal["started_at"] + RETRY_AFTER_S, (refusal, retry)
        retried += 1

    # 2. The pause holds every request of the worker, not only the refused one. When the
    # worker logs its k-th pause it has received k distinct refusals, so the k-th earliest
    # refusal time is a lower bound of when it paused; every request it admits after that
    # line (log order is the order of events in its one event loop) is admitted at or after
    # that bound + the pause.
    refused_at = sorted(e["started_at"] for e in refusals)
    log = stack.workers[0].log_path.read_text(errors="replace")
    pauses = 0
    resume_at = 0.0
    admitted_after_pause = 0
    for line in log.splitlines():
        if found := _PAUSE.search(line):
            pauses += 1
            assert pauses <= len(refused_at), "more pauses than refusals"
            assert float(found.group(1)) == RETRY_AFTER_S
            resume_at = max(resume_at, refused_at[pauses - 1] + RETRY_AFTER_S)
        elif (found := _ADMISSION.search(line)) and pauses:
            admitted_after_pause += 1
            assert float(found.group(3)) >= resume_at, line
    figures.notes.append(
        f"{len(refusals)} x 429 + {len(frames)} 429 frames; {pauses} pauses logged, "
        f"{admitted_after_pause} admissions after one, none before its retry point"
    )
    assert retried == len(refusals)
    assert pauses == len(refusals)  # each refusal paused the worker (none in a row reached 30)
    assert admitted_after_pause >= RECORDINGS // 2


RETRY_AFTER_S = 1.0
_PAUSE = re.compile(
    r"recogniser throttled the request \(\d+ in a row\); all requests pause ([\d.]+) s"
)


async def test_500s_are_retried_until_they_pass(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """A third of the recordings get one to three 500s in a row; all end final."""
    prefix = "t500"
    rules = [
        (f"{prefix}-{i:04d}", {"fault": "500", "match": {"times": 1 + (i // 3) % 3}})
        for i in range(0, RECORDINGS, 3)
    ]
    scripted_server.set_faults(_per_recording(rules))
    stack.start_worker(**MATRIX_ENV)
    messages, ids, started = await _run(stack, scripted_server, prefix)
    figures = _tally(
        "500s (1-3 per recording)", stack, messages, ids, scripted_server.journal(), started
    )
    assert figures.failed == 0
    assert figures.faults == sum(1 + (i // 3) % 3 for i in range(0, RECORDINGS, 3))


async def test_streams_cut_midway_restart_the_chunk_and_mark_the_abandoned_partials(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """Streams dropped after a delta: the chunk starts again with attempt + 1."""
    prefix = "tcut"
    rules = [
        (
            f"{prefix}-{i:04d}",
            {
                "fault": "cut",
                "after_deltas": 1 + (i // 2) % 2,
                "match": {"times": 1 + (i // 2) % 2},
            },
        )
        for i in range(0, RECORDINGS, 2)
    ]
    scripted_server.set_faults(_per_recording(rules))
    stack.start_worker(**MATRIX_ENV)
    messages, ids, started = await _run(stack, scripted_server, prefix)
    figures = _tally(
        "streams cut mid-way", stack, messages, ids, scripted_server.journal(), started
    )
    assert figures.failed == 0
    # Every cut stream had sent at least one delta, now superseded by a later attempt.
    assert figures.abandoned_partials >= sum(1 + (i // 2) % 2 for i in range(0, RECORDINGS, 2))


async def test_slow_first_bytes_beyond_the_timeout_are_retried(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """First bytes 3 s late against a 1 s read timeout: timed out, retried, all final."""
    prefix = "tslow"
    rules = [
        (f"{prefix}-{i:04d}", {"fault": "slow_first_byte", "delay_s": 3, "match": {"times": 1}})
        for i in range(0, RECORDINGS, 4)
    ]
    scripted_server.set_faults(_per_recording(rules))
    stack.start_worker(**MATRIX_ENV, STREAMS_ASR_READ_TIMEOUT_S="1")
    messages, ids, started = await _run(stack, scripted_server, prefix)
    figures = _tally(
        "slow first byte > timeout", stack, messages, ids, scripted_server.journal(), started
    )
    assert figures.failed == 0
    assert figures.faults == RECORDINGS // 4


async def test_asr_server_restarted_mid_run(stack: Stack, scripted_server: ScriptedServer) -> None:
    """The recogniser crashes (SIGKILL) with streams in flight and comes back 1 s later: the
    cut requests are sent again and every recording ends final once.

    The kill comes once the journal shows requests held open (``HOLD``), so it always cuts
    streams, however fast or slow the machine is."""
    prefix = "tasr"
    scripted_server.set_faults([PACE])
    stack.start_worker(**MATRIX_ENV)
    before: list[dict[str, Any]] = []
    held: set[str] = set()

    async def crash(i: int) -> None:
        held.update(await _hold_in_flight(scripted_server))
        before.extend(await asyncio.to_thread(scripted_server.restart, down_s=1.0))
        scripted_server.set_faults([PACE])

    messages, ids, started = await _run(stack, scripted_server, prefix, act=crash, act_at=(0.4,))
    after = scripted_server.journal()
    # Requests the kill cut count as faults too: the journal never saw them finish.
    cut = [e for e in before if not e["finished"]]
    figures = _tally(
        "ASR server restarted",
        stack,
        messages,
        ids,
        before + after,
        started,
        check_partials=False,
        paced=PACE["fault"],
    )
    figures.faults += len(cut)
    finals = {m.value["recording_id"]: m.value for m in stack.terminal(messages)}
    figures.notes.append(f"{len(cut)} requests cut by the kill ({len(held)} seen held)")
    assert figures.failed == 0
    assert held, "the kill cut no request"
    assert held <= {e["request_id"] for e in cut}, "a held request ended before the kill"
    # Each recording whose held request the kill cut was sent again to the new process, and
    # its final comes from there. (A request merely in flight may have been answered just
    # before the kill, its journal entry not yet closed: only held ones are sure to be cut.)
    held_rids = {_rid(e) for e in cut if e["request_id"] in held}
    resent = {_rid(e) for e in after if e["finished"] and e.get("http_status") == 200}
    assert held_rids <= resent
    for rid in held_rids:
        assert not set(finals[rid]["request_ids"]) & held, rid


async def test_worker_killed_twice_and_restarted(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """SIGKILL the worker at 30% and at 65% with requests in flight, restart it each time:
    the recordings it was transcribing come back, run again, and end final once.

    Each kill comes once the journal shows requests held open (``HOLD``): the worker dies
    mid-request, never between recordings."""
    prefix = "tkill"
    scripted_server.set_faults([PACE])
    worker = stack.start_worker(**MATRIX_ENV)
    held: set[str] = set()

    async def kill(i: int) -> None:
        held.update(await _hold_in_flight(scripted_server))
        await asyncio.to_thread(worker.kill)
        scripted_server.set_faults([PACE])
        worker.start()

    messages, ids, started = await _run(
        stack, scripted_server, prefix, act=kill, act_at=(0.3, 0.65)
    )
    journal = scripted_server.journal()
    # A recording in flight at a kill is redone as its next run, whose attempts number above
    # the dead run's (streams/crashloop.py): the highest attempts spell the final here too.
    figures = _tally(
        "worker SIGKILLed x2",
        stack,
        messages,
        ids,
        journal,
        started,
        paced=PACE["fault"],
        crashes=True,
    )
    cut = [e for e in journal if e["request_id"] in held]
    cut_rids = {_rid(e) for e in cut}
    # Redelivered and started again: partial events of a second (or third) run.
    rerun = {
        m.value["recording_id"] for m in messages if m.topic == stack.partial and m.value["run"] > 1
    }
    finals = {m.value["recording_id"]: m.value for m in stack.terminal(messages)}
    skipped = _log_count(stack, "acknowledged without recognition")
    again = _log_count(stack, "again, without recognition")
    figures.notes.append(
        f"{len(cut)} requests cut, {len(rerun)} recordings run again; {skipped} redelivered "
        f"finals skipped via the table, {again} kept finals re-published"
    )
    assert figures.failed == 0
    assert len(cut) == len(held) > 0
    assert cut_rids <= rerun  # every recording a kill cut came back and ran again
    for rid in cut_rids:
        assert not set(finals[rid]["request_ids"]) & held, rid


async def test_kafka_broker_restarted_mid_run(
    stack: Stack,
    scripted_server: ScriptedServer,
    local_kafka: LocalKafka | None,
    create_topics: Any,
) -> None:
    """The broker stops (SIGTERM) and starts again on the same data while recordings run."""
    prefix = "tbroker"
    broker = local_kafka
    private = None
    if broker is None:
        # An external broker is not ours to restart: this case gets one of its own.
        private = broker = LocalKafka().start()
        await _move_stack(stack, broker.bootstrap)
    try:
        scripted_server.set_faults([PACE])
        stack.start_worker(**MATRIX_ENV)

        down: list[float] = []

        async def restart(i: int) -> None:
            t = time.monotonic()
            await asyncio.to_thread(broker.restart)
            down.append(time.monotonic() - t)

        messages, ids, started = await _run(
            stack, scripted_server, prefix, act=restart, act_at=(0.4,), timeout_s=300
        )
        figures = _tally(
            "Kafka broker restarted",
            stack,
            messages,
            ids,
            scripted_server.journal(),
            started,
            check_partials=False,
            paced=PACE["fault"],
            crashes=True,
        )
        figures.notes.append(f"broker stopped and back in {down[0]:.1f} s")
        assert figures.failed == 0
    finally:
        if private is not None:
            for w in stack.workers:
                w.stop()
            private.close()


async def test_a_second_worker_joining_rebalances_without_loss(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """A second worker joins at 30%: partitions move, every recording still ends once."""
    prefix = "trebal"
    scripted_server.set_faults([PACE])
    stack.start_worker(**MATRIX_ENV)

    async def join(i: int) -> None:
        stack.start_worker(**MATRIX_ENV)

    messages, ids, started = await _run(stack, scripted_server, prefix, act=join, act_at=(0.3,))
    figures = _tally(
        "2nd worker joins",
        stack,
        messages,
        ids,
        scripted_server.journal(),
        started,
        check_partials=False,
        paced=PACE["fault"],
        crashes=True,
    )
    per_worker = [_log_count(stack, " final at ", worker=w) for w in (0, 1)]
    figures.notes.append(f"finals by worker 1 / 2: {per_worker[0]} / {per_worker[1]}")
    assert figures.failed == 0
    assert per_worker[1] > 0, "the second worker never got a partition"


async def test_republished_and_redelivered_finals_are_not_transcribed_again(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """Republishing all 100 events, then replaying the topic from offset 0 after a restart
    (the table rebuilt from its changelog), sends no request and publishes nothing new."""
    prefix = "tidem"
    worker = stack.start_worker(**MATRIX_ENV)
    _, ids, started = await _run(stack, scripted_server, prefix, drain=False)
    requests_before = len(scripted_server.journal())
    await stack.publish_many(_events(stack, prefix))  # republished: new offsets
    await _wait_log(stack, "acknowledged without recognition", RECORDINGS)
    worker.stop()
    await _rewind_group(stack)  # redelivered: the same offsets again
    worker.start()
    await _wait_log(stack, "acknowledged without recognition", 3 * RECORDINGS)
    messages = await stop_and_drain(stack)
    journal = scripted_server.journal()
    figures = _tally("republished + redelivered", stack, messages, ids, journal, started)
    figures.notes.append(f"{len(journal) - requests_before} requests for 200 replays")
    assert len(journal) == requests_before
    assert figures.duplicates == 0
    assert len(stack.terminal(messages)) == RECORDINGS  # the first run's finals, nothing new


async def test_a_final_kept_in_the_ledger_is_published_again_not_transcribed(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """The state a crash leaves between publishing a final and marking it final: redelivered,
    each recording's kept final goes out again (same event, same bytes), with no request."""
    prefix = "tkept"
    count = 20
    worker = stack.start_worker(**MATRIX_ENV)
    first_run, ids, started = await _run(stack, scripted_server, prefix, count=count)
    requests_before = len(scripted_server.journal())
    finals = {m.value["recording_id"]: m.value for m in stack.terminal(first_run)}
    # Turn each "final" entry back into the "publishing" entry that preceded it.
    changelog = f"{stack.app_id}-finalized-changelog"
    consumer = AIOKafkaConsumer(
        changelog, bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    entries: dict[str, tuple[int, dict[str, Any]]] = {}
    try:
        while len(entries) < count:
            batch = await consumer.getmany(timeout_ms=2000)
            assert batch, f"changelog {changelog} has {len(entries)} of {count} entries"
            for tp, records in batch.items():
                for record in records:
                    entries[orjson.loads(record.key)] = (tp.partition, orjson.loads(record.value))
    finally:
        await consumer.stop()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        for rid, (partition, value) in entries.items():
            assert value["outcome"] == "final"
            kept = {**value, "outcome": "publishing", "event": finals[rid]}
            await producer.send_and_wait(
                changelog, orjson.dumps(kept), key=orjson.dumps(rid), partition=partition
            )
    finally:
        await producer.stop()
    await _rewind_group(stack)
    async with stack.watch() as again:
        worker.start()
        await again.wait_for(
            lambda w: len(w.terminal()) >= 2 * count, what="the kept finals published again"
        )
    messages = await stop_and_drain(stack)
    figures = _tally(
        "kept finals re-published",
        stack,
        messages,
        ids,
        scripted_server.journal(),
        started,
        crashes=True,
    )
    figures.notes.append(f"{len(scripted_server.journal()) - requests_before} requests")
    assert len(scripted_server.journal()) == requests_before
    assert figures.duplicates == count
    for rid in ids:
        copies = [m.value for m in stack.terminal(messages) if m.value["recording_id"] == rid]
        assert copies == [finals[rid], finals[rid]]


async def test_the_rate_limit_holds_across_partitions(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """At 600 requests per minute the worker holding all 4 partitions starts one request per
    0.1 s slot and at most 10 in a calendar second, by its own record of its admissions; the
    server's journal shows one request per admission, none arriving before it.

    Arrivals per calendar second are printed, not held to a bound: a request admitted at the
    end of a second may arrive in the next one after any delay a busy machine adds."""
    prefix = "trate"
    rpm = 600
    worker = stack.start_worker(**MATRIX_ENV, STREAMS_ASR_REQUESTS_PER_MINUTE=str(rpm))
    messages, ids, started = await _run(stack, scripted_server, prefix)
    journal = [e for e in scripted_server.journal() if _rid(e) in set(ids)]
    figures = _tally(f"rate limit {rpm}/min", stack, messages, ids, journal, started)
    log = worker.log_path.read_text(errors="replace")
    assert "rate share: partitions [0, 1, 2, 3] of 4, 600.0 requests/min" in log
    admitted = [
        (int(slot), int(partition), float(at)) for slot, partition, at in _ADMISSION.findall(log)
    ]
    limit = per_second_limit(rpm)
    busiest = max(collections.Counter(int(at) for _, _, at in admitted).values())
    arrivals = sorted(e["received_at"] for e in journal)
    busiest_arrivals = max(collections.Counter(int(t) for t in arrivals).values())
    figures.notes.append(
        f"{len(admitted)} admissions; busiest second: {busiest} admitted, "
        f"{busiest_arrivals} arrived"
    )
    # Every request the server saw was admitted, once, in a slot of its own, at the start of
    # a slot owned by one of the worker's partitions; none reached the server before.
    assert len(admitted) == len(arrivals)
    assert len({slot for slot, _, _ in admitted}) == len(admitted)
    plan = SlotPlan(rpm, 4)
    assert all(plan.owner(slot) == partition for slot, partition, _ in admitted)
    window = 0.15 * 60 / rpm  # the send window: the first 15 % of a slot
    assert all(0 <= at - slot * 60 / rpm < window + 1e-6 for slot, _, at in admitted)
    assert busiest <= limit == 10
    assert all(a <= r for a, r in zip(sorted(at for *_, at in admitted), arrivals, strict=True))


_ADMISSION = re.compile(r"request admitted in slot (\d+) of partition (\d+) at ([\d.]+)")


async def test_a_stalled_recogniser_does_not_stall_other_partitions(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """One recording's request hangs until the test cuts it: every recording of the other
    partitions ends final while it hangs; cut (the recogniser restarts), it is sent again and
    ends final too.

    The stall lasts as long as the rest takes, however long that is on this machine: the test
    waits for the other partitions' finals, checks the stalled request is still open in the
    journal, and only then restarts the recogniser."""
    prefix = "tstall"
    stalled = f"{prefix}-0000"
    scripted_server.set_faults(_per_recording([(stalled, {**HOLD, "match": {"times": 1}})]))
    # No timeout or deadline of the worker's may end the stall: only the restart does.
    stack.start_worker(
        **{**MATRIX_ENV, "STREAMS_ASR_READ_TIMEOUT_S": "900", "STREAMS_RECORDING_DEADLINE_S": "900"}
    )
    events = _events(stack, prefix)
    ids = [e["recording_id"] for e in events]
    started = time.monotonic()
    async with stack.watch() as watcher:
        await stack.publish_many(events)
        # Which partition each recording went to, as the broker holds it.
        placed = {
            m.value["recording_id"]: m.partition
            for m in await read_to_end(stack.bootstrap, (stack.recordings,))
        }
        stuck = placed[stalled]
        others = {rid for rid in ids if placed[rid] != stuck}
        await watcher.wait_for(
            lambda w: others <= w.answered(),
            timeout_s=240,
            what="every recording of the other partitions",
        )
        entries = [e for e in scripted_server.journal() if _rid(e) == stalled]
        still_open = [e["request_id"] for e in entries if not e["finished"]]
        answered_meanwhile = len(watcher.answered() & set(ids))
        assert stalled not in watcher.answered()
        assert len(entries) == 1
        assert len(still_open) == 1, entries
        before = await asyncio.to_thread(scripted_server.restart, down_s=0.0)
        await watcher.wait_for(
            lambda w: set(ids) <= w.answered(), timeout_s=240, what="every recording"
        )
    messages = await stop_and_drain(stack)
    figures = _tally(
        "stalled recogniser",
        stack,
        messages,
        ids,
        before + scripted_server.journal(),
        started,
    )
    figures.notes.append(
        f"{len(others)} recordings of 3 other partitions (and {answered_meanwhile} in all) "
        "final while one request hung; it ended only when cut"
    )
    assert figures.failed == 0
    final = next(m.value for m in stack.terminal(messages) if m.value["recording_id"] == stalled)
    assert still_open[0] not in final["request_ids"]  # its final came from the request sent again


def _log_count(stack: Stack, text: str, *, worker: int | None = None) -> int:
    workers = stack.workers if worker is None else [stack.workers[worker]]
    return sum(
        w.log_path.read_text(errors="replace").count(text) for w in workers if w.log_path.exists()
    )


async def _wait_log(stack: Stack, text: str, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _log_count(stack, text) < count:
        if time.monotonic() > deadline:
            tails = "\n".join(w.log_tail() for w in stack.workers)
            pytest.fail(f"{count} x {text!r} not logged within {timeout_s} s:\n{tails}")
        await asyncio.sleep(0.25)


async def _rewind_group(stack: Stack) -> None:
    """Commit offset 0 on every recordings partition for the workers' (now empty) group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=stack.app_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(stack.recordings, p) for p in range(4)]  # the stack's 4
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()


async def _move_stack(stack: Stack, bootstrap: str) -> None:
    """Point ``stack`` at another broker, with its topics created there."""
    from tests.fixtures.kafka import make_topics

    await make_topics(
        bootstrap, [stack.recordings, stack.partial, stack.final, stack.failed], partitions=4
    )
    stack.bootstrap = bootstrap
    stack.env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
