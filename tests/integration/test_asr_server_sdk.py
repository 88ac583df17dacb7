"""The scripted ASR server through the official DashScope and OpenAI SDKs and raw HTTP."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dashscope
import httpx
import numpy as np
import openai
import orjson
import pytest
import requests

from streams.asr_server.app import COMPATIBLE_PATH, NATIVE_PATH
from streams.encode import encode_data_uri
from tests.audio import AUDIO_DIR, asset
from tests.fixtures.asr_server import ScriptedServer, run_scripted_server
from tests.fixtures.static_site import serve_directory

pytestmark = pytest.mark.integration

MODEL = "qwen3-asr-flash"
WAV = "en_speechbrain_harvard_birch_canoe.wav"  # 3.26 s
BAD_KEY = "sk-not-the-key"


@pytest.fixture(scope="module")
def data_uri() -> str:
    """A real recording as a base64 WAV data URI."""
    return "data:audio/wav;base64," + base64.b64encode(asset(WAV).read_bytes()).decode()


@pytest.fixture
def sdk(scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> ScriptedServer:
    """Point the DashScope SDK at the scripted server."""
    monkeypatch.setattr(dashscope, "base_http_api_url", f"{scripted_server.base_url}/api/v1")
    return scripted_server


def _call(
    server: ScriptedServer,
    audio: str,
    *,
    stream: bool,
    context: str = "",
    key: str | None = None,
    **parameters: Any,
) -> Any:
    return dashscope.MultiModalConversation.call(
        api_key=key or server.api_key,
        model=MODEL,
        messages=[
            {"role": "system", "content": [{"text": context}]},
            {"role": "user", "content": [{"audio": audio}]},
        ],
        result_format="message",
        asr_options={"language": "en", "enable_itn": False},
        stream=stream,
        **parameters,
    )


def _text(response: Any) -> str:
    content = response.output.choices[0].message.content
    return "".join(item.get("text", "") for item in content)


def _openai(server: ScriptedServer, key: str | None = None) -> openai.OpenAI:
    # No retries: the test wants to see each refusal, not the SDK's recovery from it.
    return openai.OpenAI(
        base_url=f"{server.base_url}/compatible-mode/v1",
        api_key=key or server.api_key,
        max_retries=0,
    )


def _openai_call(client: openai.OpenAI, audio: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio}}]}
        ],
        extra_body={"asr_options": {"language": "en"}},
        **kwargs,
    )


def _only_entry(server: ScriptedServer) -> dict[str, Any]:
    journal = server.journal()
    assert len(journal) == 1, journal
    return journal[0]


def test_sdk_stream_deltas_join_to_the_journal_text(sdk: ScriptedServer, data_uri: str) -> None:
    """Streamed deltas concatenate to the text the server's journal says it sent."""
    responses = list(_call(sdk, data_uri, stream=True, incremental_output=True))
    assert {r.status_code for r in responses} == {200}
    assert responses[-1].output.choices[0].finish_reason == "stop"
    entry = _only_entry(sdk)
    assert "".join(_text(r) for r in responses) == entry["text"]
    assert entry["text"].endswith(".")
    assert entry["finished"] is True
    assert {r.request_id for r in responses} == {entry["request_id"]}


def test_sdk_non_stream_returns_the_journal_text(sdk: ScriptedServer, data_uri: str) -> None:
    """A non-streaming call gets the whole text, language annotation and billed seconds."""
    response = _call(sdk, data_uri, stream=False)
    assert response.status_code == 200
    assert _text(response) == _only_entry(sdk)["text"]
    assert response.output.choices[0].message.annotations == [
        {"type": "audio_info", "language": "en", "emotion": "neutral"}
    ]
    assert response.usage["seconds"] == 4


@pytest.mark.parametrize(
    "incremental",
    [
        pytest.param(False, id="sdk-merges-deltas"),
        pytest.param(None, id="server-sends-cumulative"),
    ],
)
def test_sdk_cumulative_text_ends_with_the_whole_text(
    sdk: ScriptedServer, data_uri: str, incremental: bool | None
) -> None:
    """Without incremental output each response holds all text so far, ending with the whole."""
    extra = {} if incremental is None else {"incremental_output": incremental}
    texts = [_text(r) for r in _call(sdk, data_uri, stream=True, **extra)]
    assert texts[-1] == _only_entry(sdk)["text"]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))


def test_transcript_depends_only_on_the_audio(sdk: ScriptedServer, data_uri: str) -> None:
    """The same audio gets the same text from both APIs and both modes."""
    native = _text(_call(sdk, data_uri, stream=False))
    compatible = _openai_call(_openai(sdk), data_uri).choices[0].message.content
    assert native == compatible


def test_fixed_transcript_without_auth(
    data_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server started with --transcript and --no-auth streams that text to any key."""
    text = "欢迎使用阿里云。Welcome to Qwen."
    with run_scripted_server(tmp_path / "server.log", "--transcript", text, api_key=None) as server:
        monkeypatch.setattr(dashscope, "base_http_api_url", f"{server.base_url}/api/v1")
        responses = list(
            _call(server, data_uri, stream=True, key="sk-anything", incremental_output=True)
        )
    assert "".join(_text(r) for r in responses) == text
    assert len(responses) > 2


@pytest.mark.parametrize(
    "stream", [pytest.param(True, id="stream"), pytest.param(False, id="json")]
)
def test_sdk_with_a_wrong_key_gets_401(sdk: ScriptedServer, data_uri: str, stream: bool) -> None:
    """A wrong API key is refused with 401 InvalidApiKey, streaming or not."""
    response = _call(sdk, data_uri, stream=stream, key=BAD_KEY)
    if stream:
        (response,) = list(response)
    assert (response.status_code, response.code) == (401, "InvalidApiKey")
    assert response.message == "Invalid API-key provided."


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        pytest.param("400", 400, "InvalidParameter", id="400"),
        pytest.param("401", 401, "InvalidApiKey", id="401"),
        pytest.param("429", 429, "Throttling", id="429"),
        pytest.param("500", 500, "InternalError", id="500"),
    ],
)
@pytest.mark.parametrize(
    "stream", [pytest.param(True, id="stream"), pytest.param(False, id="json")]
)
def test_sdk_sees_injected_refusals(
    sdk: ScriptedServer, data_uri: str, fault: str, status: int, code: str, stream: bool
) -> None:
    """Faults injected before the stream reach the SDK as that HTTP status and code."""
    sdk.set_faults([{"fault": fault}])
    response = _call(sdk, data_uri, stream=stream, incremental_output=True)
    if stream:
        (response,) = list(response)
    assert (response.status_code, response.code) == (status, code)
    entry = _only_entry(sdk)
    assert (entry["fault"], entry["http_status"], entry["error_code"]) == (fault, status, code)


def test_sdk_sees_an_error_frame_mid_stream(sdk: ScriptedServer, data_uri: str) -> None:
    """An error frame after one delta ends the SDK's stream with status 400 and the frame's code."""
    sdk.set_faults([{"fault": "error_frame_429", "after_deltas": 1}])
    responses = list(_call(sdk, data_uri, stream=True, incremental_output=True))
    # 400, not 429: the SDK reads a stream error's status only from a `status:` line (§3.2).
    assert [r.status_code for r in responses] == [200, 400]
    assert responses[-1].code == "Throttling.RateQuota"
    entry = _only_entry(sdk)
    assert _text(responses[0]) == entry["text"]
    assert (entry["http_status"], entry["error_code"], entry["finished"]) == (
        200,
        "Throttling.RateQuota",
        False,
    )


def test_sdk_stream_cut_raises_chunked_encoding_error(sdk: ScriptedServer, data_uri: str) -> None:
    """A connection cut after one delta makes the SDK's iterator raise ChunkedEncodingError."""
    sdk.set_faults([{"fault": "cut", "after_deltas": 1}])
    seen: list[Any] = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        seen.extend(_call(sdk, data_uri, stream=True, incremental_output=True))
    assert len(seen) == 1
    assert seen[0].output.choices[0].finish_reason == "null"
    assert _only_entry(sdk)["error_code"] == "ConnectionDropped"


def test_sdk_non_stream_cut_raises_chunked_encoding_error(
    sdk: ScriptedServer, data_uri: str
) -> None:
    """A non-streaming reply cut after its headers makes the SDK call raise."""
    sdk.set_faults([{"fault": "cut"}])
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _call(sdk, data_uri, stream=False)


def test_fault_rule_matches_context_and_expires(sdk: ScriptedServer, data_uri: str) -> None:
    """A rule with context_contains and times=1 hits the first marked request only."""
    sdk.set_faults([{"match": {"context_contains": "#reject", "times": 1}, "fault": "400"}])
    statuses = [
        _call(sdk, data_uri, stream=False, context=context).status_code
        for context in ("plain", "call #reject", "call #reject")
    ]
    assert statuses == [200, 400, 200]
    assert [e["fault"] for e in sdk.journal()] == [None, "400", None]


@pytest.mark.parametrize(
    ("rate", "faulted"),
    [pytest.param(0.0, 0, id="never"), pytest.param(1.0, 3, id="always")],
)
def test_fault_rule_rate(sdk: ScriptedServer, data_uri: str, rate: float, faulted: int) -> None:
    """A rule's rate is the probability that a matching request gets the fault."""
    sdk.set_faults([{"match": {"rate": rate}, "fault": "500"}])
    statuses = [_call(sdk, data_uri, stream=False).status_code for _ in range(3)]
    assert statuses.count(500) == faulted


def test_openai_sdk_stream_gets_the_journal_text(sdk: ScriptedServer, data_uri: str) -> None:
    """The OpenAI SDK's streamed deltas join to the journal text, with a final usage chunk."""
    chunks = list(
        _openai_call(_openai(sdk), data_uri, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _only_entry(sdk)["text"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 100  # 25 audio tokens for each of 4 seconds


def test_openai_sdk_non_stream_content_is_the_journal_text(
    sdk: ScriptedServer, data_uri: str
) -> None:
    """A non-streaming OpenAI call returns the text as a string."""
    completion = _openai_call(_openai(sdk), data_uri)
    assert completion.choices[0].message.content == _only_entry(sdk)["text"]
    assert completion.choices[0].finish_reason == "stop"


def test_openai_sdk_wrong_key_raises_authentication_error(
    sdk: ScriptedServer, data_uri: str
) -> None:
    """A wrong key in compatible mode is a 401 invalid_api_key."""
    with pytest.raises(openai.AuthenticationError) as caught:
        _openai_call(_openai(sdk, key=BAD_KEY), data_uri)
    assert caught.value.code == "invalid_api_key"


def test_openai_sdk_raises_on_an_error_frame_mid_stream(sdk: ScriptedServer, data_uri: str) -> None:
    """An error mid-stream in compatible mode raises APIError carrying the code."""
    sdk.set_faults([{"fault": "error_frame_429", "after_deltas": 1}])
    with pytest.raises(openai.APIError) as caught:
        list(_openai_call(_openai(sdk), data_uri, stream=True))
    assert caught.value.code == "Throttling.RateQuota"


def _long_silence_uri() -> str:
    return encode_data_uri(np.zeros(301 * 16_000, dtype=np.int16), 16_000)


def _empty_wav_uri() -> str:
    header = (
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00"
        b"\x00\x7d\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
    )
    return "data:audio/wav;base64," + base64.b64encode(header).decode()


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        pytest.param(
            lambda: "data:audio/wav;base64,@@not base64@@",
            "The provided URL does not appear to be valid. Ensure it is correctly formatted.",
            id="garbage-base64",
        ),
        pytest.param(
            lambda: "data:audio/wav;base64," + base64.b64encode(b"hello, not audio" * 64).decode(),
            "The audio format is illegal and cannot be opened.",
            id="not-audio",
        ),
        pytest.param(lambda: "data:audio/wav;base64,", "The audio is empty", id="empty-payload"),
        pytest.param(_empty_wav_uri, "The audio is empty", id="wav-without-samples"),
        pytest.param(
            lambda: "data:audio/wav;base64," + "A" * (10_000_000 + 4),
            "Exceeded limit on max bytes per data-uri item : 10000000",
            id="oversize",
        ),
        pytest.param(_long_silence_uri, "The audio is too long", id="too-long"),
        pytest.param(
            lambda: "oss://bucket/key.wav",
            "The provided URL does not appear to be valid. Ensure it is correctly formatted.",
            id="oss-url",
        ),
    ],
)
def test_bad_audio_is_refused_and_the_server_keeps_serving(
    sdk: ScriptedServer, data_uri: str, audio: Any, message: str
) -> None:
    """Bad audio gets 400 InvalidParameter with the documented message; the next call works."""
    response = _call(sdk, audio(), stream=True, incremental_output=True)
    (refusal,) = list(response)
    assert (refusal.status_code, refusal.code) == (400, "InvalidParameter")
    assert refusal.message.startswith(message)
    assert _call(sdk, data_uri, stream=False).status_code == 200


def _native(server: ScriptedServer, audio: str, *, sse: bool = True, **headers: str) -> Any:
    body = {
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [{"audio": audio}]}]},
        "parameters": {"incremental_output": True},
    }
    headers = {"Authorization": f"Bearer {server.api_key}", **headers}
    if sse:
        headers["X-DashScope-SSE"] = "enable"
    return body, headers


def test_raw_sse_frames_share_one_request_id(
    scripted_server: ScriptedServer, data_uri: str
) -> None:
    """Frames count from 1, carry the x-request-id header's id, and end with stop."""
    body, headers = _native(scripted_server, data_uri)
    response = httpx.post(scripted_server.base_url + NATIVE_PATH, json=body, headers=headers)
    assert response.headers["content-type"] == "text/event-stream;charset=UTF-8"
    lines = response.text.split("\n")
    events = [orjson.loads(line[len("data:") :]) for line in lines if line.startswith("data:")]
    ids = [line for line in lines if line.startswith("id:")]
    assert ids == [f"id:{n}" for n in range(1, len(events) + 1)]
    assert {e["request_id"] for e in events} == {response.headers["x-request-id"]}
    assert [e["output"]["choices"][0]["finish_reason"] for e in events][-2:] == ["null", "stop"]


def test_raw_cut_ends_the_stream_without_a_stop_frame(
    scripted_server: ScriptedServer, data_uri: str
) -> None:
    """A cut stream delivers its first frame, then httpx raises RemoteProtocolError."""
    scripted_server.set_faults([{"fault": "cut", "after_deltas": 1}])
    body, headers = _native(scripted_server, data_uri)
    received = bytearray()
    url = scripted_server.base_url + NATIVE_PATH
    with httpx.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            _read_into(response, received)
    assert b'"finish_reason":"null"' in received
    assert b'"finish_reason":"stop"' not in received


def _read_into(response: httpx.Response, received: bytearray) -> None:
    for chunk in response.iter_bytes():
        received += chunk


def test_slow_first_byte_holds_back_the_headers(
    scripted_server: ScriptedServer, data_uri: str
) -> None:
    """slow_first_byte delays the response headers by delay_s."""
    scripted_server.set_faults([{"fault": "slow_first_byte", "delay_s": 0.6}])
    body, headers = _native(scripted_server, data_uri)
    started = time.monotonic()
    with httpx.stream(
        "POST", scripted_server.base_url + NATIVE_PATH, json=body, headers=headers
    ) as response:
        waited = time.monotonic() - started
        response.read()
    assert waited >= 0.6
    assert response.status_code == 200


def test_throttling_carries_retry_after(scripted_server: ScriptedServer, data_uri: str) -> None:
    """An injected 429 answers with a Retry-After header in whole seconds."""
    scripted_server.set_faults([{"fault": "429", "retry_after_s": 1.5}])
    body, headers = _native(scripted_server, data_uri, sse=False)
    response = httpx.post(scripted_server.base_url + NATIVE_PATH, json=body, headers=headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_async_calls_are_refused(scripted_server: ScriptedServer, data_uri: str) -> None:
    """X-DashScope-Async: enable on the sync path is a 403 AccessDenied, like the cloud's."""
    body, headers = _native(scripted_server, data_uri, sse=False, **{"X-DashScope-Async": "enable"})
    response = httpx.post(scripted_server.base_url + NATIVE_PATH, json=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["code"] == "AccessDenied"


def test_compatible_validation_error_uses_openais_shape(scripted_server: ScriptedServer) -> None:
    """A compatible-mode request without audio gets a 400 with an "error" object."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text"}]}]}
    headers = {"Authorization": f"Bearer {scripted_server.api_key}"}
    response = httpx.post(scripted_server.base_url + COMPATIBLE_PATH, json=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter_error"


@pytest.fixture
def audio_site() -> Iterator[str]:
    """A throwaway HTTP server over the shared recordings."""
    with serve_directory(AUDIO_DIR) as url:
        yield url


@pytest.mark.parametrize(
    ("path", "status"),
    [pytest.param(WAV, 200, id="found"), pytest.param("missing.wav", 400, id="missing")],
)
def test_audio_by_http_url(sdk: ScriptedServer, audio_site: str, path: str, status: int) -> None:
    """An http URL is downloaded and recognised; a URL that 404s is a 400 download failure."""
    response = _call(sdk, f"{audio_site}/{Path(path).name}", stream=False)
    assert response.status_code == status
    if status == 400:
        assert response.message == "Failed to download multimodal content."
    else:
        assert _text(response) == _only_entry(sdk)["text"]
