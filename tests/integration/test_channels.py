"""Channel layouts: a stereo call split into agent and customer turns, and mix/auto/split rules.

The call is built from two different real speakers per channel (tests/audio.py
``stereo_call``): turns alternate, and two of them overlap the other party's speech. Whisper
recognises it through the worker; each turn must carry the right role, come in the right
order, start where its speech starts, and say what its clip says.
"""

from __future__ import annotations

import collections
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streams.decode import decode_sync
from tests.audio import asset, stereo_call, write_wav
from tests.benchmarks.bench_whisper_server import WhisperServer, error_rate, run_whisper_server
from tests.fixtures.kafka import make_topics
from tests.fixtures.worker import Stack, validate

pytestmark = pytest.mark.integration

# (channel, start s, clip): agent on the left, customer on the right.
SCRIPT = [
    (0, 0.5, "harvard"),
    (1, 4.5, "horizon"),
    (0, 6.2, "librivox"),  # starts while the customer is still speaking
    (1, 14.0, "wizard"),
    (0, 19.5, "jfk"),
    (1, 29.0, "horizon"),  # the customer cuts in before the agent has finished
]


def _event(recording_id: str, path: Path, **channels: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "recording_id": recording_id,
        "audio_url": path.as_uri(),
        "recognition": {"language": "en"},
    }
    if channels:
        event["channels"] = channels
    return event


async def _run(stack: Stack, events: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    await stack.publish(list(events))
    wanted = {e["recording_id"] for e in events}
    messages = await stack.collect(
        lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= wanted,
        timeout_s=timeout_s,
        topics=(stack.final, stack.failed),
    )
    for message in messages:
        validate(message)
    return {m.value["recording_id"]: m.value for m in messages}


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhisperServer]:
    """One Whisper base server for the module."""
    log = tmp_path_factory.mktemp("whisper") / "server.log"
    with run_whisper_server(log, "--model", "base", "--beam-size", "1", "--queue", "8") as server:
        yield server


async def test_a_stereo_call_becomes_turns_with_roles_in_order(
    kafka_bootstrap: str, whisper: WhisperServer, tmp_path: Path
) -> None:
    """Split by channel, each turn has its channel's role, its place and its speech."""
    call, placed = stereo_call(SCRIPT)
    path = write_wav(tmp_path / "call.wav", call)
    prefix = f"channels-{uuid.uuid4().hex[:8]}"
    names = {kind: f"{prefix}.{kind}" for kind in ("recordings", "partial", "final", "failed")}
    await make_topics(kafka_bootstrap, names.values(), partitions=1)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMS_APP_ID": f"{prefix}-worker",
        "STREAMS_TOPIC_RECORDINGS": names["recordings"],
        "STREAMS_TOPIC_PARTIAL": names["partial"],
        "STREAMS_TOPIC_FINAL": names["final"],
        "STREAMS_TOPIC_FAILED": names["failed"],
        "STREAMS_TOPIC_PARTITIONS": "1",
        "STREAMS_ASR_BASE_URL": whisper.base_url,
        "DASHSCOPE_API_KEY": whisper.api_key,
        "STREAMS_FILE_ROOTS": str(tmp_path),
        "STREAMS_WEB_ENABLED": "false",
        "STREAMS_ASR_CONCURRENCY": "2",
        "STREAMS_RECORDING_DEADLINE_S": "300",
    }
    stack = Stack(
        bootstrap=kafka_bootstrap, app_id=env["STREAMS_APP_ID"], env=env, tmp=tmp_path, **names
    )
    stack.start_worker()
    try:
        events = await _run(
            stack,
            [_event("call", path, layout="split", roles=["agent", "customer"], plan="turns")],
            180,
        )
    finally:
        stack.workers[0].stop()

    final = events["call"]
    assert final["type"] == "final", final
    turns = final["turns"]
    roles = ["agent" if u.channel == 0 else "customer" for u in placed]
    assert [t["role"] for t in turns] == roles
    assert [t["channel"] for t in turns] == [u.channel for u in placed]
    for turn, utterance in zip(turns, placed, strict=True):
        # Turn times are the speech the VAD found, without the padding sent around it: the
        # README's ±0.2 s (the clips' own leading and trailing silence counts as not speech).
        assert turn["start_s"] == pytest.approx(utterance.speech_start_s, abs=0.2)
        assert turn["end_s"] == pytest.approx(utterance.speech_end_s, abs=0.2)
    # Recognised text is held to a margin over the whole call, not per five-word turn: int8
    # kernels differ by CPU, and one word in five is already 0.2. Each turn must still carry
    # its own utterance (it shares more words with it than with any other), so the order of
    # the conversation is checked on the text too.
    call_wer = error_rate(
        " ".join(u.reference for u in placed), " ".join(t["text"] for t in turns), "en"
    )
    assert call_wer <= 0.15, [t["text"] for t in turns]
    for turn, utterance in zip(turns, placed, strict=True):
        own = error_rate(utterance.reference, turn["text"], "en")
        others = [
            error_rate(u.reference, turn["text"], "en") for u in placed if u.clip != utterance.clip
        ]
        assert own < min(others), f"{utterance.clip}: {turn['text']!r}"
    assert final["text"] == "\n".join(f"{t['role']}: {t['text']}" for t in turns)
    assert [s["start_s"] for s in final["segments"]] == sorted(
        s["start_s"] for s in final["segments"]
    )
    # Each channel is silent about half the time: split sends about the speech, not 2x the call.
    speech_s = sum(u.end_s - u.start_s for u in placed)
    assert final["sent_seconds"] <= speech_s + 0.5 * len(placed)
    assert final["sent_seconds"] < 1.2 * final["audio_seconds"]


async def test_layouts_and_roles_follow_the_event_then_the_settings(
    stack: Stack, scripted_server: Any
) -> None:
    """auto splits stereo with the default roles; mix never splits; split tags even mono."""
    call, placed = stereo_call(SCRIPT)
    stereo = write_wav(stack.tmp / "call.wav", call)
    mono = asset("en_speechbrain_harvard_birch_canoe.wav")
    # Turns follow from the plan; the turns plan gives one per utterance of the script.
    stack.start_worker(
        STREAMS_CHANNEL_LAYOUT="auto",
        STREAMS_CHANNEL_ROLES="rep,caller",
        STREAMS_SPLIT_PLAN="turns",
    )
    events = await _run(
        stack,
        [
            _event("stereo-default", stereo),
            _event("stereo-mix", stereo, layout="mix"),
            _event("stereo-swapped", stereo, layout="split", roles=["customer", "agent"]),
            _event("mono-auto", mono),
            _event("mono-split", mono, layout="split", roles=["customer"]),
        ],
        90,
    )
    assert all(e["type"] == "final" for e in events.values()), events

    default = events["stereo-default"]
    expected = ["rep" if u.channel == 0 else "caller" for u in placed]
    assert [t["role"] for t in default["turns"]] == expected
    assert default["text"].splitlines()[0].startswith("rep: ")

    swapped = events["stereo-swapped"]
    assert [t["role"] for t in swapped["turns"]] == [
        "customer" if u.channel == 0 else "agent" for u in placed
    ]

    mixed = events["stereo-mix"]
    assert mixed["turns"] == []
    assert {s["channel"] for s in mixed["segments"]} == {0}
    assert {s["role"] for s in mixed["segments"]} == {None}
    # The mix is one channel: it sends less than the two channels of the split call.
    assert mixed["sent_seconds"] < default["sent_seconds"]

    assert events["mono-auto"]["turns"] == []
    assert [s["role"] for s in events["mono-auto"]["segments"]] == [None]
    split_mono = events["mono-split"]
    assert [t["role"] for t in split_mono["turns"]] == ["customer"]
    assert split_mono["text"].startswith("customer: ")


def _requests_with(server: Any, context: str) -> list[dict[str, Any]]:
    """The scripted server's journal entries of one test's requests, in arrival order."""
    entries = [e for e in server.journal() if e.get("context") == context]
    return sorted(entries, key=lambda e: e.get("received_at") or e.get("started_at") or 0)


def _plain_event(recording_id: str, path: Path, context: str, **fields: Any) -> dict[str, Any]:
    return {
        "schema_version": 2,
        "recording_id": recording_id,
        "audio_url": path.as_uri(),
        "recognition": {"context": context, **fields.pop("recognition", {})},
        **fields,
    }


async def test_a_packed_split_call_sends_one_request_per_channel(
    stack: Stack, scripted_server: Any
) -> None:
    """packed: each channel's stretches travel in one request, mapped back to the call."""
    call, placed = stereo_call(SCRIPT)
    path = write_wav(stack.tmp / "call.wav", call)
    context = f"packed-{uuid.uuid4().hex[:8]}"
    stack.start_worker()
    event = _plain_event("packed", path, context, channels={"layout": "split", "plan": "packed"})
    final = (await _run(stack, [event], 90))["packed"]
    assert final["type"] == "final", final
    assert final["plan"] == "packed"
    requests = _requests_with(scripted_server, context)
    assert len(requests) == 2
    assert [s["channel"] for s in sorted(final["segments"], key=lambda s: s["channel"])] == [0, 1]
    for segment in final["segments"]:
        utterances = [u for u in placed if u.channel == segment["channel"]]
        # One stretch per utterance (they are seconds apart), each holding its words.
        assert len(segment["stretches"]) == len(utterances)
        for (start, end), utterance in zip(segment["stretches"], utterances, strict=True):
            assert start <= utterance.speech_start_s + 0.05
            assert end >= utterance.speech_end_s - 0.05
    # Billed per request, rounded up: at most one second per channel above what was sent.
    sent = final["sent_seconds"]
    assert sent <= final["billed_seconds"] <= sent + 2
    assert final["billed_seconds"] == sum(math.ceil(e["audio_s"]) for e in requests)
    assert final["speech_seconds"] <= sent


async def test_dual_mono_stereo_is_transcribed_once_under_auto(
    stack: Stack, scripted_server: Any
) -> None:
    """A recorder that writes the mix twice: auto sends one channel; split still sends both."""
    pcm = decode_sync(asset("en_speechbrain_harvard_birch_canoe.wav")).channels[0]
    path = write_wav(stack.tmp / "dual-mono.wav", np.stack([pcm, pcm]))
    context = f"dual-{uuid.uuid4().hex[:8]}"
    stack.start_worker(STREAMS_CHANNEL_LAYOUT="auto")
    events = await _run(
        stack,
        [
            _plain_event("dual-auto", path, context + "-auto"),
            _plain_event("dual-split", path, context + "-split", channels={"layout": "split"}),
        ],
        60,
    )
    auto, split = events["dual-auto"], events["dual-split"]
    assert auto["turns"] == []
    assert {s["channel"] for s in auto["segments"]} == {0}
    assert len(_requests_with(scripted_server, context + "-auto")) == 1
    assert {s["channel"] for s in split["segments"]} == {0, 1}
    assert len(_requests_with(scripted_server, context + "-split")) == 2
    assert auto["billed_seconds"] * 2 == split["billed_seconds"]


async def test_a_channels_language_is_detected_once_unless_the_call_mixes_them(
    stack: Stack, scripted_server: Any
) -> None:
    """With no language given, a channel's longest request detects it and the others get it."""
    call, placed = stereo_call(SCRIPT)
    path = write_wav(stack.tmp / "call.wav", call)
    context = f"lang-{uuid.uuid4().hex[:8]}"
    stack.start_worker()
    turns = {"layout": "split", "plan": "turns"}
    await _run(
        stack,
        [
            _plain_event("one-language", path, context + "-one", channels=turns),
            _plain_event(
                "mixed",
                path,
                context + "-mixed",
                channels=turns,
                recognition={"mixed_languages": True},
            ),
        ],
        90,
    )
    one = _requests_with(scripted_server, context + "-one")
    assert len(one) == len(placed)  # a request per turn
    # Each channel's leader goes first, alone, and detects; every other request names its result.
    assert one[0]["language"] is None
    assert collections.Counter(e["language"] for e in one) == {None: 2, "en": len(placed) - 2}
    mixed = _requests_with(scripted_server, context + "-mixed")
    assert [e["language"] for e in mixed] == [None] * len(placed)
