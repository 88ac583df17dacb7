"""The pipeline in one process: a fake recogniser and a sender that keeps what it is given.

What the real-broker tests (tests/integration/test_pipeline.py) show end to end, shown here at
the pipeline's seams: a recording goes in, its partial events and exactly one terminal event
come out, each held to its schema. The rules come from the composition root, as in the worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

import schemas
from streams.config import Settings
from streams.decode import SAMPLE_RATE
from streams.errors import RecognitionUnavailable
from streams.pipeline import Pipeline
from streams.publish import Publisher, TopicNames
from streams.runtime import pipeline_rules
from streams.transcribe import Delta, RecognitionOptions, Result
from tests.audio import asset, write_wav
from tests.benchmarks.calls import CALLS, compose
from tests.hold_sounds import SOUNDS

TOPICS = TopicNames(partial="partial", final="final", failed="failed")
SPEECH = asset("en_speechbrain_harvard_birch_canoe.wav")


class _Recogniser:
    """Answers every request with two deltas and a result; or refuses them all."""

    name = "dashscope"  # a name the final event's contract knows

    def __init__(self, *, unavailable: bool = False) -> None:
        self.requests: list[RecognitionOptions] = []
        self._unavailable = unavailable

    async def stream(
        self, audio_uri: str, options: RecognitionOptions
    ) -> AsyncIterator[Delta | Result]:
        self.requests.append(options)
        if self._unavailable:
            raise RecognitionUnavailable("the recogniser is down")
        assert audio_uri.startswith("data:")
        yield Delta("The birch ")
        yield Delta("canoe.")
        yield Result(text="The birch canoe.", language="en", billed_seconds=3, request_id="r-1")


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, object], bool]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *, wait: bool) -> None:
        self.sent.append((topic, key, orjson.loads(value), wait))

    def on(self, topic: str) -> list[dict[str, object]]:
        return [event for to, _, event, _ in self.sent if to == topic]


def _pipeline(recogniser: _Recogniser, sender: _Sender, http: httpx.AsyncClient) -> Pipeline:
    settings = Settings(file_roots=(SPEECH.parent,), asr_attempts=2)
    return Pipeline(
        pipeline_rules(settings),
        recogniser,
        Publisher(sender, TOPICS),
        http,
        retry_wait_initial_s=0,
        retry_wait_max_s=0,
    )


def _event(recording_id: str, url: str) -> bytes:
    return orjson.dumps({"schema_version": 2, "recording_id": recording_id, "audio_url": url})


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_a_recording_gets_its_partials_and_one_final(http: httpx.AsyncClient) -> None:
    """Partial events stream as the recogniser speaks; then one final, awaited by the broker."""
    sender, recogniser = _Sender(), _Recogniser()
    pipeline = _pipeline(recogniser, sender, http)
    final = await pipeline.process(_event("rec-1", SPEECH.as_uri()), where="recordings[0]@7")
    partials = sender.on("partial")
    assert [p["delta"] for p in partials][:2] == ["The birch ", "canoe."]
    assert [p["sequence"] for p in partials] == list(range(len(partials)))
    for partial in partials:
        assert not list(schemas.validator("partial").iter_errors(partial))
    assert sender.on("final") == [final]
    assert sender.on("failed") == []
    assert final["type"] == "final"
    assert final["recording_id"] == "rec-1"
    assert final["text"].startswith("The birch canoe.")
    assert final["backend"] == "dashscope"
    assert final["request_ids"] == ["r-1"] * len(recogniser.requests)
    assert not list(schemas.validator("final").iter_errors(final))
    # The terminal event is awaited; partial events are not.
    assert {(topic, wait) for topic, _, _, wait in sender.sent} == {
        ("partial", False),
        ("final", True),
    }
    assert {key for _, key, _, _ in sender.sent} == {b"rec-1"}


async def test_a_recogniser_that_stays_down_gives_one_failed_event(
    http: httpx.AsyncClient,
) -> None:
    """Every attempt refused: no final, one retryable failed event carrying the original."""
    sender, recogniser = _Sender(), _Recogniser(unavailable=True)
    pipeline = _pipeline(recogniser, sender, http)
    raw = _event("rec-2", SPEECH.as_uri())
    failed = await pipeline.process(raw, where="recordings[1]@3")
    assert sender.on("final") == []
    assert sender.on("partial") == []
    assert sender.on("failed") == [failed]
    assert failed["type"] == "failed"
    assert failed["error"]["code"] == RecognitionUnavailable.code
    assert failed["error"]["retryable"] is True
    assert failed["original_event"] == orjson.loads(raw)
    assert len(recogniser.requests) >= 2  # retried before giving up
    assert not list(schemas.validator("failed").iter_errors(failed))


async def test_an_audio_reference_outside_the_roots_fails_before_recognition(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The fetch stage refuses it: one failed event, and the recogniser hears nothing."""
    sender, recogniser = _Sender(), _Recogniser()
    pipeline = _pipeline(recogniser, sender, http)
    elsewhere = tmp_path / "call.wav"
    elsewhere.write_bytes(SPEECH.read_bytes())
    failed = await pipeline.process(_event("rec-3", elsewhere.as_uri()))
    assert [event["type"] for _, _, event, _ in sender.sent] == ["failed"]
    assert failed["type"] == "failed"
    assert failed["error"]["stage"] == "fetch"
    assert recogniser.requests == []


async def test_hold_music_is_not_sent_and_the_final_reports_the_hold(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The music the plan left out of the requests is the hold time of the call's analytics."""
    spec = next(c for c in CALLS if c.name == "call-03min-hold")
    pcm, truth = compose(spec, hold_sound=SOUNDS["lounge music"])
    assert truth.hold is not None
    hold_s = (truth.hold[1] - truth.hold[0]) / SAMPLE_RATE
    path = write_wav(tmp_path / "held.wav", pcm)
    sender, recogniser = _Sender(), _Recogniser()
    settings = Settings(file_roots=(tmp_path,), asr_attempts=2)
    pipeline = Pipeline(pipeline_rules(settings), recogniser, Publisher(sender, TOPICS), http)
    event = {"schema_version": 2, "recording_id": "held", "audio_url": path.as_uri()}
    final = await pipeline.process(
        orjson.dumps({**event, "channels": {"layout": "split"}}), where="recordings[0]@1"
    )
    assert final["type"] == "final", final
    analytics = final["analytics"]
    # Most of the hold is reported (the detector gives a margin back to speech at each end),
    # and no more than the hold.
    assert 0.8 * hold_s <= analytics["hold_s"] <= hold_s + 0.3
    assert final["sent_seconds"] < final["audio_seconds"] * 2 - 0.8 * hold_s
