"""The whole pipeline on the real stack: broker, worker processes and the scripted recogniser."""

from __future__ import annotations

import asyncio
import collections
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.audio import asset, transcode
from tests.fixtures.worker import Message, Stack, validate

pytestmark = pytest.mark.integration

# (codec, extension, container, sample rate, layout): compressed and telephone forms of real speech.
GENERATED = [
    ("libmp3lame", "mp3", None, None, None),
    ("aac", "m4a", "ipod", None, None),
    ("libopus", "ogg", "ogg", 48000, None),
    ("libopus", "webm", "webm", 48000, None),
    ("pcm_mulaw", "wav", None, 8000, "stereo"),
    ("pcm_alaw", "wav", None, 8000, None),
    ("amr_nb", "amr", None, 8000, None),
    ("mp2", "mpeg", "mpeg", None, None),
    ("pcm_s16be", "aiff", "aiff", None, None),
]
SHARED = [
    "en_speechbrain_harvard_birch_canoe.wav",
    "en_pocketsphinx_librivox_sense_sensibility_0870.wav",
    "en_fasterwhisper_stereo_diarization_LR.wav",
    "en_whisper_jfk_stereo44k24bit.flac",
    "zh_funasr_asr_example_welcome.wav",
    "de_picovoice_leopard_test_de.wav",
]


def _recordings(tmp: Path, count: int) -> list[Path]:
    files = [asset(name) for name in SHARED]
    sources = [asset(SHARED[0]), asset(SHARED[1]), asset(SHARED[3])]
    for i, (codec, ext, container, rate, layout) in enumerate(GENERATED):
        target = tmp / f"gen{i}_{codec}.{ext}"
        transcode(
            sources[i % len(sources)],
            target,
            codec=codec,
            container=container,
            rate=rate,
            layout=layout,
        )
        files.append(target)
    return [files[i % len(files)] for i in range(count)]


def _event(recording_id: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "recording_id": recording_id,
        "audio_url": path.as_uri(),
        "call": {"call_id": f"call-{recording_id}", "agent_id": "a-7", "queue": "billing"},
        **extra,
    }


def _terminal_ids(stack: Stack, messages: list[Message]) -> set[str | None]:
    return {m.value["recording_id"] for m in stack.terminal(messages)}


async def test_every_recording_gets_a_final_transcript(stack: Stack, scripted_server: Any) -> None:
    """Twenty-four recordings in many formats give 24 final events with the recogniser's text."""
    files = _recordings(stack.tmp, 24)
    events = [_event(f"rec-{i:03d}", path) for i, path in enumerate(files)]
    stack.start_worker()
    await stack.publish(events)
    wanted = {e["recording_id"] for e in events}
    messages = await stack.collect(lambda ms: _terminal_ids(stack, ms) >= wanted)

    finals = [m for m in messages if m.topic == stack.final]
    assert not [m for m in messages if m.topic == stack.failed]
    assert collections.Counter(m.value["recording_id"] for m in finals) == dict.fromkeys(wanted, 1)
    journal = {entry["request_id"]: entry for entry in scripted_server.journal()}
    partials = collections.defaultdict(list)
    for message in messages:
        validate(message)
        if message.topic == stack.partial:
            partials[message.value["recording_id"]].append(message.value)
    for final in finals:
        event = final.value
        assert final.key == event["recording_id"].encode()
        served = [journal[rid]["text"] for rid in event["request_ids"]]
        assert event["text"] == " ".join(t.strip() for t in served if t.strip())
        deltas = sorted(partials[event["recording_id"]], key=lambda p: p["sequence"])
        assert "".join(p["delta"] for p in deltas).strip() == event["text"]
        assert event["call"]["call_id"] == f"call-{event['recording_id']}"
        assert event["billed_seconds"] >= 1
        assert event["estimated_cost_usd"] > 0


async def test_bad_recordings_fail_with_their_own_code_and_the_rest_complete(
    stack: Stack, scripted_server: Any
) -> None:
    """Missing file, non-audio bytes, malformed JSON and a 400 from the API each fail once."""
    not_audio = stack.tmp / "notes.wav"
    not_audio.write_text("this is a text file with a .wav name\n" * 50)
    good = asset(SHARED[0])
    scripted_server.set_faults([{"match": {"context_contains": "#reject-me"}, "fault": "400"}])
    events: list[dict[str, Any] | bytes] = [
        _event("bad-missing", stack.tmp / "nowhere.wav"),
        _event("good-1", good),
        _event("bad-not-audio", not_audio),
        b'{"schema_version": 1, "recording_id": "bad-json", "audio_url": ',
        _event("good-2", good),
        _event("bad-rejected", good, recognition={"context": "#reject-me"}),
        _event("good-3", good),
    ]
    stack.start_worker()
    await stack.publish(events)
    # The malformed event has no readable recording id: its failed event carries null.
    wanted = {
        "bad-missing",
        "good-1",
        "bad-not-audio",
        None,
        "good-2",
        "bad-rejected",
        "good-3",
    }
    messages = await stack.collect(lambda ms: _terminal_ids(stack, ms) >= wanted)

    for message in stack.terminal(messages):
        validate(message)
    failed = {m.value["recording_id"]: m.value for m in messages if m.topic == stack.failed}
    finals = {m.value["recording_id"] for m in messages if m.topic == stack.final}
    assert finals == {"good-1", "good-2", "good-3"}
    codes = {rid: event["error"]["code"] for rid, event in failed.items()}
    assert codes == {
        "bad-missing": "audio_not_found",
        "bad-not-audio": "undecodable_audio",
        None: "invalid_event",
        "bad-rejected": "asr_rejected",
    }
    assert failed[None]["original_event"] is None
    assert failed[None]["original_raw"].startswith('{"schema_version": 1')
    assert failed["bad-rejected"]["original_event"]["recognition"]["context"] == "#reject-me"
    assert len(stack.terminal(messages)) == len(wanted)


async def test_a_recording_in_flight_survives_a_killed_worker(
    stack: Stack, scripted_server: Any
) -> None:
    """A worker SIGKILLed mid-recording and restarted still completes that recording."""
    scripted_server.set_faults(
        [
            {
                "match": {"context_contains": "#slow", "times": 1},
                "fault": "slow_first_byte",
                "delay_s": 30,
            }
        ]
    )
    source = stack.tmp / "call.wav"
    shutil.copy(asset(SHARED[0]), source)
    worker = stack.start_worker()
    await stack.publish([_event("in-flight", source, recognition={"context": "#slow"})])
    # Wait until the recogniser has the request, then kill the worker mid-recognition.
    for _ in range(240):
        if any("#slow" in (e.get("context") or "") for e in scripted_server.journal()):
            break
        await asyncio.sleep(0.25)
    else:
        pytest.fail(f"the worker never called the recogniser:\n{worker.log_tail()}")
    worker.kill()
    worker.start()
    messages = await stack.collect(lambda ms: "in-flight" in _terminal_ids(stack, ms))

    terminal = stack.terminal(messages)
    assert {m.topic for m in terminal} == {stack.final}
    assert all(m.value["recording_id"] == "in-flight" for m in terminal)
