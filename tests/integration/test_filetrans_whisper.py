"""The long-file API with the whisper engine: real words with real times, through the SDK.

One whisper server (base, beam 1) with no task delay. The stereo recording holds one speaker
per channel; each channel is recognised apart and compared with its own reference, bounded as
tests/integration/test_whisper_engine.py bounds them (worst measured over nine CTranslate2
code paths, 0 edits for both channels, plus a margin of one word; recognition differs by CPU).
"""

from __future__ import annotations

from collections.abc import Iterator

import dashscope
import httpx
import pytest
from dashscope.audio.qwen_asr import QwenTranscription

from tests.audio import AUDIO_DIR, manifest
from tests.benchmarks.bench_whisper_server import WhisperServer, error_rate, run_whisper_server
from tests.fixtures.static_site import serve_directory

pytestmark = pytest.mark.integration

MODEL = "qwen3-asr-flash-filetrans"
STEREO = "en_fasterwhisper_stereo_diarization_LR.wav"
MARGIN_EDITS = 1
"""Both channels got every word right on all nine code paths; one word is the margin."""


@pytest.fixture(scope="module")
def audio_site() -> Iterator[str]:
    with serve_directory(AUDIO_DIR) as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhisperServer]:
    log = tmp_path_factory.mktemp("whisper-filetrans") / "server.log"
    flags = ["--model", "base", "--beam-size", "1", "--allow-private-hosts", "127.0.0.1"]
    flags += ["--filetrans-pending-s", "0", "--filetrans-delay-s", "0"]
    with run_whisper_server(log, *flags) as running:
        yield running


def test_sdk_filetrans_gives_words_with_times_per_channel(
    server: WhisperServer, audio_site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashscope, "base_http_api_url", f"{server.base_url}/api/v1")
    submitted = QwenTranscription.async_call(
        model=MODEL,
        file_url=f"{audio_site}/{STEREO}",
        api_key=server.api_key,
        channel_id=[0, 1],
        enable_words=True,
    )
    assert submitted.status_code == 200, submitted
    final = QwenTranscription.wait(submitted, api_key=server.api_key)
    assert final.output["task_status"] == "SUCCEEDED", final
    assert final.usage["seconds"] == 10
    result = httpx.get(final.output["result"]["transcription_url"], timeout=10).json()
    entry = manifest()[STEREO]
    for transcript, side in zip(result["transcripts"], ("left", "right"), strict=True):
        reference = str(entry[f"reference_{side}"])
        bound = MARGIN_EDITS / len(reference.split())
        assert error_rate(reference, transcript["text"], "en") <= bound, transcript["text"]
        sentences = transcript["sentences"]
        assert sentences
        words = [word for sentence in sentences for word in sentence["words"]]
        assert error_rate(reference, " ".join(w["text"] for w in words), "en") <= bound
        for sentence in sentences:
            assert sentence["language"] == "en"
            inner = sentence["words"]
            assert sentence["begin_time"] == inner[0]["begin_time"]
            assert sentence["end_time"] == inner[-1]["end_time"]
        times = [(w["begin_time"], w["end_time"]) for w in words]
        assert times == sorted(times)
        assert all(0 <= begin <= end <= 5000 for begin, end in times)
        # Punctuation is apart from the word; the last sentence ends with a full stop.
        assert not any(w["text"].endswith((".", ",")) for w in words)
        assert words[-1]["punctuation"] == "."
