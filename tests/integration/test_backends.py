"""The worker against each recognition backend the operator can choose."""

from __future__ import annotations

import pytest

from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer
from tests.fixtures.worker import Stack, validate

pytestmark = pytest.mark.integration


async def test_openai_backend_transcribes_through_the_worker(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """STREAMS_ASR_BACKEND=openai sends chat completions (as vLLM serves) and finishes the call."""
    stack.start_worker(STREAMS_ASR_BACKEND="openai")
    event = {
        "schema_version": 1,
        "recording_id": "via-openai",
        "audio_url": asset("en_fasterwhisper_stereo_diarization_LR.wav").as_uri(),
        "channels": {"layout": "split", "roles": ["agent", "customer"]},
        "recognition": {"language": "en", "context": "Acme broadband"},
    }
    await stack.publish([event])
    messages = await stack.collect(lambda ms: bool(stack.terminal(ms)))
    for message in messages:
        validate(message)
    (final,) = [m.value for m in stack.terminal(messages)]
    assert final["type"] == "final", final
    assert final["backend"] == "openai"
    assert [s["role"] for s in final["segments"]] == ["agent", "customer"]
    assert any(m.topic == stack.partial for m in messages)
    journal = scripted_server.journal()
    assert len(journal) == 2
    for entry in journal:
        assert entry["endpoint"] == "compatible"  # /compatible-mode/v1/chat/completions
        assert entry["language"] == "en"
        assert "Acme broadband" in entry["context"]
    served = {entry["text"].strip() for entry in journal}
    assert {s["text"] for s in final["segments"]} == served
