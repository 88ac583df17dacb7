"""Every listed format through the whole service, recognised by the local Whisper server.

One real English recording (LibriVox, 7.1 s, 22 words) is made into every format the
Qwen3-ASR page lists and the telephone WAV forms (tests/audio.py), plus a 16 kHz mono WAV of
the same speech as the yardstick. A worker transcribes them all through Kafka with the local
Whisper server (base, beam 1), and each format's word error rate must be within
:data:`MARGIN` of the yardstick's: 0.10 is two words of 22, room for an 8 kHz codec's slip,
not for a lost clause. One recognition per format keeps the module to about a minute of CPU.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.decode import SAMPLE_RATE, decode_sync
from tests.audio import FORMATS, asset, make_format, manifest, video_only, write_wav
from tests.benchmarks.bench_whisper_server import WhisperServer, error_rate, run_whisper_server
from tests.fixtures.kafka import make_topics
from tests.fixtures.worker import Stack, validate

pytestmark = pytest.mark.integration

SOURCE = "en_pocketsphinx_librivox_sense_sensibility_0870.wav"
MARGIN = 0.10


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhisperServer]:
    """One Whisper base server for the module."""
    log = tmp_path_factory.mktemp("whisper") / "server.log"
    with run_whisper_server(log, "--model", "base", "--beam-size", "1", "--queue", "8") as server:
        yield server


@pytest.fixture(scope="module")
async def outcomes(
    kafka_bootstrap: str, whisper: WhisperServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Terminal event per case (every format, the 16 kHz WAV, a video without audio)."""
    tmp = tmp_path_factory.mktemp("formats")
    source = asset(SOURCE)
    files = {name: make_format(source, tmp, name) for name in FORMATS}
    files["wav-16k"] = write_wav(tmp / "reference-16k.wav", decode_sync(source).channels[0])
    files["video-no-audio"] = video_only(tmp / "screen.mp4")
    prefix = f"formats-{uuid.uuid4().hex[:8]}"
    names = {kind: f"{prefix}.{kind}" for kind in ("recordings", "partial", "final", "failed")}
    await make_topics(kafka_bootstrap, names.values(), partitions=2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMS_APP_ID": f"{prefix}-worker",
        "STREAMS_TOPIC_RECORDINGS": names["recordings"],
        "STREAMS_TOPIC_PARTIAL": names["partial"],
        "STREAMS_TOPIC_FINAL": names["final"],
        "STREAMS_TOPIC_FAILED": names["failed"],
        "STREAMS_TOPIC_PARTITIONS": "2",
        "STREAMS_ASR_BASE_URL": whisper.base_url,
        "DASHSCOPE_API_KEY": whisper.api_key,
        "STREAMS_FILE_ROOTS": str(tmp),
        "STREAMS_WEB_ENABLED": "false",
        "STREAMS_ASR_CONCURRENCY": "2",
        "STREAMS_RECORDING_DEADLINE_S": "300",
    }
    stack = Stack(
        bootstrap=kafka_bootstrap, app_id=env["STREAMS_APP_ID"], env=env, tmp=tmp, **names
    )
    stack.start_worker()
    try:
        await stack.publish(
            [
                {
                    "schema_version": 1,
                    "recording_id": case,
                    "audio_url": path.as_uri(),
                    "recognition": {"language": "en"},
                }
                for case, path in files.items()
            ]
        )
        messages = await stack.collect(
            lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= set(files),
            timeout_s=240,
            topics=(stack.final, stack.failed),
        )
    finally:
        for worker in stack.workers:
            worker.stop()
    for message in messages:
        validate(message)
    return {m.value["recording_id"]: m.value for m in messages}


@pytest.fixture(scope="module")
def yardstick(outcomes: dict[str, dict[str, Any]]) -> float:
    """Word error rate of the same speech sent as 16 kHz mono WAV."""
    event = outcomes["wav-16k"]
    assert event["type"] == "final", event
    return error_rate(str(manifest()[SOURCE]["reference"]), event["text"], "en")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_transcribes_as_well_as_16k_wav(
    outcomes: dict[str, dict[str, Any]], yardstick: float, name: str
) -> None:
    """The format's final transcript is within MARGIN of the 16 kHz WAV's word error rate."""
    event = outcomes[name]
    assert event["type"] == "final", event.get("error")
    wer = error_rate(str(manifest()[SOURCE]["reference"]), event["text"], "en")
    assert wer <= yardstick + MARGIN, f"{name}: WER {wer:.3f} vs {yardstick:.3f}: {event['text']!r}"
    assert event["audio_seconds"] == pytest.approx(7.1, abs=0.15)
    assert 0 < event["sent_seconds"] <= event["audio_seconds"] + 0.01
    assert event["turns"] == []


def test_the_yardstick_itself_is_good(yardstick: float) -> None:
    """Whisper base gets the 16 kHz WAV right but for 'Mr.' (docs/model-choice.md)."""
    assert yardstick <= 0.10


def test_a_file_without_audio_fails_with_its_own_code(outcomes: dict[str, dict[str, Any]]) -> None:
    """A video with no audio stream is a failed event ``no_audio_stream`` at the decode stage."""
    event = outcomes["video-no-audio"]
    assert event["type"] == "failed"
    assert event["error"]["code"] == "no_audio_stream"
    assert event["error"]["stage"] == "decode"
    assert event["error"]["retryable"] is False


def test_sample_rate_of_the_yardstick_is_16k(tmp_path: Path) -> None:
    """The yardstick really is what the pipeline sends: 16 kHz mono s16."""
    path = write_wav(tmp_path / "x.wav", decode_sync(asset(SOURCE)).channels[0])
    audio = decode_sync(path)
    assert (audio.source_sample_rate, audio.source_channels, audio.source_codec) == (
        SAMPLE_RATE,
        1,
        "pcm_s16le",
    )
