"""A burst of 2,000 recordings: the worker's memory stays bounded and every recording ends once.

"Once" is counted after the worker has stopped and every output topic has been read to its
end, and every event read (partial and final) is held to its schema.

In-flight work is bounded by settings, not by the backlog: one recording per assigned
partition (``isolated_partitions``), at most ``stream_buffer_maxsize`` small events buffered per
partition, decoded PCM spooled to disk, and only the chunks holding one of
``asr_concurrency`` request slots read and encoded in memory. So the peak RSS after 2,000
recordings must be close to the peak after the first few hundred. Both are read from
``/proc/<pid>/status`` (VmRSS, VmHWM) of the worker and of its audio processes
(streams/audiostages.py), summed, while the burst runs and printed.

The bound is relative to this run's own baseline, not a figure tuned on one machine: what the
peak still gains from 20 % to 100 % of the burst must be small beside the RSS the worker had
once it answered its first recording.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import pytest

from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer
from tests.fixtures.worker import Stack, stop_and_drain, validate

pytestmark = pytest.mark.integration

BURST = 2000
AUDIO = "en_speechbrain_harvard_birch_canoe.wav"
GROWTH_RATIO = 0.15
"""How much the peak may still rise between 20 % and 100 % of the burst, as a share of the
RSS after the first answer (memory that grows with the backlog would add a multiple of it)."""
LEAK_GUARD_MIB = 2048
"""A ceiling far above any machine's figure (idle, the worker is about 120 MiB and each audio
process about 70 MiB): only for a backlog buffered whole before 20 % of the burst, which the
relative bound cannot see because the baseline would already hold it."""


@pytest.mark.timeout(600)
async def test_a_burst_of_2000_recordings_keeps_memory_bounded(
    stack: Stack, scripted_server: ScriptedServer, request: pytest.FixtureRequest
) -> None:
    """2,000 recordings published at once all end final once; the peak RSS barely grows
    after the first fifth of the burst."""
    source = stack.tmp / "call.wav"
    shutil.copy(asset(AUDIO), source)
    events: list[dict[str, Any] | bytes] = [
        {
            "schema_version": 1,
            "recording_id": f"burst-{i:05d}",
            "audio_url": source.as_uri(),
            "call": {"call_id": f"C-{i}", "queue": "burst"},
        }
        for i in range(BURST)
    ]
    worker = stack.start_worker(
        STREAMS_ASR_ATTEMPTS="5", STREAMS_RECORDING_DEADLINE_S="120", STREAMS_ASR_CONCURRENCY="16"
    )
    samples: list[tuple[int, dict[str, int]]] = []  # (recordings answered, memory)
    started = time.monotonic()
    async with stack.watch() as watcher:
        await stack.publish_many(events)
        published_s = time.monotonic() - started
        marks = {int(BURST * f): None for f in (0.2, 0.5, 0.75, 1.0)}
        while True:
            answered = len(watcher.answered())
            samples.append((answered, worker.total_memory_kib()))
            if answered >= BURST:
                break
            # Fails with the worker's log if nothing moves for two minutes.
            await watcher.wait_for(
                lambda w, n=answered: len(w.answered()) > n, timeout_s=120, what="progress"
            )
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
    # Duplicates are counted after the worker has stopped, on every topic read to its end.
    messages = await stop_and_drain(stack)
    terminal = stack.terminal(messages)

    finals = [m for m in terminal if m.topic == stack.final]
    ids = [m.value["recording_id"] for m in terminal]
    peak = max(s["VmHWM"] for _, s in samples) / 1024
    at = {}
    for mark in marks:
        before = [s["VmHWM"] for n, s in samples if n <= mark]
        at[mark] = (max(before) if before else samples[0][1]["VmHWM"]) / 1024
    # Once the worker is up and has answered its first recording.
    first = next(s["VmRSS"] for n, s in samples if n > 0) / 1024
    growth = at[BURST] - at[int(BURST * 0.2)]
    lines = [
        "",
        f"Burst: {BURST} recordings published in {published_s:.1f} s, all answered in "
        f"{elapsed:.1f} s ({BURST / elapsed:.0f}/s) by one worker on 4 partitions",
        f"  finals {len(finals)}, failed {len(terminal) - len(finals)}, "
        f"terminal events {len(terminal)}, distinct recordings {len(set(ids))}",
        f"  RSS after the first answer {first:.0f} MiB; peak RSS (VmHWM) after "
        + ", ".join(f"{mark} recordings {mib:.0f} MiB" for mark, mib in at.items()),
        f"  peak {peak:.0f} MiB (leak guard {LEAK_GUARD_MIB} MiB); growth 20%->100% "
        f"{growth:.1f} MiB = {growth / first:.1%} of the first RSS, bound {GROWTH_RATIO:.0%}",
    ]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)

    assert len(finals) == BURST
    assert len(set(ids)) == BURST == len(ids)
    for message in messages:
        validate(message)
    assert growth < GROWTH_RATIO * first
    assert peak < LEAK_GUARD_MIB
