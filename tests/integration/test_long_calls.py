"""Long calls and input limits through the worker, against the scripted recogniser.

The two-hour call is a telephone recording (8 kHz mu-law stereo WAV, 124 MB) of a
conversation built from real speech (tests/audio.py): alternating and overlapping turns, a
minute on hold, and a monologue longer than one request, repeated to two hours. The worker
must finish it with bounded memory (its peak RSS and its audio processes' are read from
/proc) and never have more requests in flight than its bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.chunking import max_chunk_seconds
from streams.decode import SAMPLE_RATE
from tests.audio import asset, conversation_script, make_format, stereo_call, write_wav_blocks
from tests.fixtures.worker import Stack, validate

pytestmark = pytest.mark.integration

TWO_HOURS_S = 7200.0
CONCURRENCY = 4
MAX_RSS_MB = 600
"""Peak RSS of the worker and its audio processes, summed. Measured: the worker alone 397 MB
with the stages in its threads; 246 MB with 2 audio processes of about 130 MB each."""


def two_hour_call(target: Path) -> Path:
    """The two-hour telephone call, written block by block (the test never holds it whole)."""
    script = conversation_script(300, seed=1, monologue_s=260, hold_s=60)
    pattern, _ = stereo_call(script, tail_s=2.0)
    total = int(TWO_HOURS_S * SAMPLE_RATE)

    def blocks() -> Iterator[np.ndarray]:
        written = 0
        while written < total:
            for start in range(0, pattern.shape[1], 10 * SAMPLE_RATE):
                block = pattern[:, start : start + 10 * SAMPLE_RATE][:, : total - written]
                if not block.shape[1]:
                    return
                written += block.shape[1]
                yield block

    return write_wav_blocks(target, blocks())


async def _terminal(stack: Stack, wanted: set[str], timeout_s: float) -> dict[str, Any]:
    messages = await stack.collect(
        lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= wanted,
        timeout_s=timeout_s,
        topics=(stack.final, stack.failed),
    )
    for message in messages:
        validate(message)
    return {m.value["recording_id"]: m.value for m in messages}


@pytest.mark.timeout(900)
async def test_a_two_hour_call_transcribes_with_bounded_memory(
    stack: Stack, scripted_server: Any
) -> None:
    """Two hours of stereo: every chunk within the limits, in order, memory and slots bounded."""
    path = two_hour_call(stack.tmp / "two-hours.wav")
    worker = stack.start_worker(
        STREAMS_ASR_CONCURRENCY=str(CONCURRENCY), STREAMS_RECORDING_DEADLINE_S="800"
    )
    await stack.publish(
        [
            {
                "schema_version": 1,
                "recording_id": "two-hours",
                "audio_url": path.as_uri(),
                "channels": {"layout": "split", "roles": ["agent", "customer"]},
            }
        ]
    )
    events = await _terminal(stack, {"two-hours"}, timeout_s=780)
    # The worker's and its audio processes' (streams/audiostages.py) peaks, summed.
    peak_mb = worker.total_memory_kib()["VmHWM"] / 1024
    final = events["two-hours"]
    assert final["type"] == "final", final
    log = worker.log_path.read_text()
    in_flight = [int(n) for n in re.findall(r"peak (\d+) requests in flight", log)]
    assert in_flight, "the worker logged no request counts"
    print(  # the figures the issue asks for; run with -s to see them
        f"\n2-hour call: {final['audio_seconds']:.0f} s recorded, {final['sent_seconds']:.0f} s "
        f"sent, {len(final['request_ids'])} requests, peak RSS {peak_mb:.0f} MB, peak in flight "
        f"{max(in_flight)} (bound {CONCURRENCY}), timings {final['timings']}"
    )

    assert peak_mb < MAX_RSS_MB
    assert max(in_flight) <= CONCURRENCY
    assert final["audio_seconds"] == pytest.approx(TWO_HOURS_S, abs=0.5)
    segments = final["segments"]
    limit = max_chunk_seconds(300, 10 * 1024 * 1024, SAMPLE_RATE)
    # A request carries stretches of the call; what it sends stays within one request.
    assert all(0 < sum(b - a for a, b in s["stretches"]) <= limit for s in segments)
    assert max(s["end_s"] - s["start_s"] for s in segments) > 120  # the monologue's pieces
    assert all(0 <= s["start_s"] < s["end_s"] <= TWO_HOURS_S + 0.01 for s in segments)
    assert [s["start_s"] for s in segments] == sorted(s["start_s"] for s in segments)
    # Hold and the other party's turns are not sent: two channels cost about one call.
    assert final["sent_seconds"] < 1.0 * final["audio_seconds"]
    assert {t["role"] for t in final["turns"]} == {"agent", "customer"}
    assert final["billed_seconds"] >= final["sent_seconds"]
    assert final["estimated_cost_usd"] == pytest.approx(final["billed_seconds"] * 0.000035)


async def test_size_and_duration_caps_fail_before_any_recognition(
    stack: Stack, scripted_server: Any
) -> None:
    """Over the byte or the duration cap, a recording fails with its code and sends nothing."""
    too_long = make_format(asset("en_whisper_jfk_stereo44k24bit.flac"), stack.tmp, "amr")  # 11 s
    too_large = asset("en_pocketsphinx_librivox_sense_sensibility_0870.wav")  # 227 kB
    fine = asset("en_speechbrain_harvard_birch_canoe.wav")  # 104 kB, 3.3 s
    assert too_long.stat().st_size < 150_000
    stack.start_worker(STREAMS_MAX_AUDIO_BYTES="150000", STREAMS_MAX_AUDIO_S="8")
    events = [
        {"schema_version": 1, "recording_id": rid, "audio_url": path.as_uri()}
        for rid, path in (("too-long", too_long), ("too-large", too_large), ("fine", fine))
    ]
    await stack.publish(list(events))
    outcome = await _terminal(stack, {"too-long", "too-large", "fine"}, timeout_s=60)

    assert outcome["fine"]["type"] == "final"
    assert outcome["too-long"]["error"]["code"] == "audio_too_long"
    assert outcome["too-large"]["error"]["code"] == "audio_too_large"
    assert outcome["too-large"]["error"]["stage"] == "fetch"
    assert outcome["too-long"]["error"]["stage"] == "decode"
    # Only the recording within the caps reached the recogniser.
    journal = scripted_server.journal()
    assert {entry["request_id"] for entry in journal} == set(outcome["fine"]["request_ids"])


async def test_a_silent_recording_sends_nothing(stack: Stack, scripted_server: Any) -> None:
    """Silence only: a final event with no text, nothing sent, nothing billed."""
    silent = stack.tmp / "silence.wav"
    quiet = np.random.default_rng(0).normal(0, 3, (2, 30 * SAMPLE_RATE)).astype(np.int16)
    write_wav_blocks(silent, iter([quiet]))
    stack.start_worker()
    await stack.publish(
        [{"schema_version": 1, "recording_id": "silent", "audio_url": silent.as_uri()}]
    )
    final = (await _terminal(stack, {"silent"}, timeout_s=60))["silent"]
    assert final["type"] == "final"
    assert (final["text"], final["sent_seconds"], final["billed_seconds"]) == ("", 0, 0)
    assert final["audio_seconds"] == pytest.approx(30, abs=0.1)
    assert scripted_server.journal() == []
