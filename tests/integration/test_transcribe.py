"""The project's recognition client against the scripted server over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import dashscope
import httpx
import pytest

from streams.decode import SAMPLE_RATE, decode_sync
from streams.encode import encode_data_uri
from streams.errors import (
    PipelineError,
    RecognitionProtocolError,
    RecognitionRejected,
    RecognitionStreamCut,
    RecognitionThrottled,
    RecognitionTimeout,
    RecognitionUnauthorized,
    RecognitionUnavailable,
)
from streams.transcribe import (
    DashScopeBackend,
    Delta,
    OpenAIBackend,
    RecognitionOptions,
    Result,
    asr_client,
)
from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer

pytestmark = pytest.mark.integration

OPTIONS = RecognitionOptions(model="qwen3-asr-flash", language="en", context="billing call")


@pytest.fixture(scope="module")
def data_uri() -> str:
    pcm = decode_sync(asset("en_pocketsphinx_librivox_sense_sensibility_0870.wav")).channels[0]
    return encode_data_uri(pcm, SAMPLE_RATE)


@pytest.fixture(params=["httpx", "aiohttp"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """The shared client the worker builds, over each transport it can use."""
    async with asr_client(
        request.param, connect_timeout_s=10.0, read_timeout_s=2.0, concurrency=8
    ) as client:
        yield client


async def _run(backend: Any, uri: str) -> tuple[list[str], Result]:
    deltas: list[str] = []
    async for item in backend.stream(uri, OPTIONS):
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            return deltas, item
    raise AssertionError("no result")


def _sdk_text(server: ScriptedServer, uri: str, *, stream: bool) -> str:
    dashscope.base_http_api_url = f"{server.base_url}/api/v1"
    messages = [
        {"role": "system", "content": [{"text": OPTIONS.context}]},
        {"role": "user", "content": [{"audio": uri}]},
    ]
    reply = dashscope.MultiModalConversation.call(
        api_key=server.api_key,
        model=OPTIONS.model,
        messages=messages,
        result_format="message",
        asr_options={"language": "en", "enable_itn": False},
        stream=stream,
        incremental_output=True,
    )
    if not stream:
        assert reply.status_code == 200, reply
        return "".join(c["text"] for c in reply.output.choices[0].message.content)
    pieces = []
    for part in reply:
        assert part.status_code == 200, part
        pieces += [c["text"] for c in part.output.choices[0].message.content]
    return "".join(pieces)


@pytest.mark.parametrize("stream", [True, False], ids=["sdk-stream", "sdk-non-stream"])
async def test_client_and_official_sdk_get_the_same_text(
    scripted_server: ScriptedServer, http: httpx.AsyncClient, data_uri: str, stream: bool
) -> None:
    """The project's client and the official dashscope SDK read the same transcript."""
    backend = DashScopeBackend(http, scripted_server.base_url, scripted_server.api_key)
    deltas, result = await _run(backend, data_uri)
    assert result.text == "".join(deltas)
    assert result.text == _sdk_text(scripted_server, data_uri, stream=stream)
    assert result.text == scripted_server.entry(result.request_id)["text"]
    assert result.language == "en"
    assert result.billed_seconds == 8  # ceil of 7.1 s
    assert len(deltas) > 1


async def test_openai_backend_gets_the_same_text(
    scripted_server: ScriptedServer, http: httpx.AsyncClient, data_uri: str
) -> None:
    """The OpenAI-compatible backend reads the same transcript as the native one."""
    native = DashScopeBackend(http, scripted_server.base_url, scripted_server.api_key)
    compatible = OpenAIBackend(http, scripted_server.base_url, scripted_server.api_key)
    _, expected = await _run(native, data_uri)
    deltas, result = await _run(compatible, data_uri)
    assert result.text == "".join(deltas) == expected.text
    assert result.billed_seconds == expected.billed_seconds


async def test_the_request_carries_options_and_context(
    scripted_server: ScriptedServer, http: httpx.AsyncClient, data_uri: str
) -> None:
    """Language and context reach the recogniser as the API defines them."""
    backend = DashScopeBackend(http, scripted_server.base_url, scripted_server.api_key)
    _, result = await _run(backend, data_uri)
    entry = scripted_server.entry(result.request_id)
    assert entry["context"] == "billing call"
    assert entry["language"] == "en"


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        pytest.param({"fault": "400"}, RecognitionRejected, "asr_rejected", id="400"),
        pytest.param({"fault": "401"}, RecognitionUnauthorized, "asr_unauthorized", id="401"),
        pytest.param(
            {"fault": "429", "retry_after_s": 3}, RecognitionThrottled, "asr_throttled", id="429"
        ),
        pytest.param({"fault": "500"}, RecognitionUnavailable, "asr_unavailable", id="500"),
        pytest.param(
            {"fault": "cut", "after_deltas": 2}, RecognitionStreamCut, "asr_stream_cut", id="cut"
        ),
        pytest.param(
            {"fault": "error_frame_429", "after_deltas": 1},
            RecognitionThrottled,
            "asr_throttled",
            id="error-frame",
        ),
        pytest.param(
            {"fault": "slow_first_byte", "delay_s": 5}, RecognitionTimeout, "asr_timeout", id="slow"
        ),
        # The status of a mid-stream error is only in its `:HTTP_STATUS/nnn` comment; a code
        # the client does not know leaves the decision to that status.
        pytest.param(
            {"fault": "error_frame", "status": 500, "code": "Novel.Failure"},
            RecognitionUnavailable,
            "asr_unavailable",
            id="error-frame-500",
        ),
        pytest.param(
            {"fault": "error_frame", "status": 503, "after_deltas": 2},
            RecognitionUnavailable,
            "asr_unavailable",
            id="error-frame-503",
        ),
        pytest.param(
            {"fault": "error_frame", "status": 429, "code": "Novel.Failure"},
            RecognitionThrottled,
            "asr_throttled",
            id="error-frame-429",
        ),
        pytest.param(
            {"fault": "error_frame", "status": 400, "code": "Novel.Failure"},
            RecognitionRejected,
            "asr_rejected",
            id="error-frame-400",
        ),
        pytest.param(
            {"fault": "error_frame", "status": 500, "code": "RequestTimeOut", "after_deltas": 0},
            RecognitionTimeout,
            "asr_timeout",
            id="error-frame-request-timeout",
        ),
        pytest.param(
            {"fault": "malformed_frame", "after_deltas": 1},
            RecognitionProtocolError,
            "asr_protocol_error",
            id="malformed-frame",
        ),
        # Refused before the stream: an SSE body whose `data:` line names the code.
        pytest.param(
            {"fault": "400", "code": "Arrearage", "message": "Access denied, please make sure."},
            RecognitionUnauthorized,
            "asr_unauthorized",
            id="sse-body-arrearage",
        ),
    ],
)
async def test_faults_become_pipeline_errors(
    scripted_server: ScriptedServer,
    http: httpx.AsyncClient,
    data_uri: str,
    fault: dict[str, Any],
    error: type[PipelineError],
    code: str,
) -> None:
    """Each failure of the recogniser surfaces as one precise pipeline error."""
    scripted_server.set_faults([fault])
    backend = DashScopeBackend(http, scripted_server.base_url, scripted_server.api_key)
    with pytest.raises(error) as caught:
        await _run(backend, data_uri)
    assert caught.value.code == code
    if fault["fault"] == "429":
        assert caught.value.retry_after_s == 3
    if "message" in fault:
        assert caught.value.message.endswith(fault["message"])


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        pytest.param("ModelServingError", 500, RecognitionUnavailable, id="model-serving"),
        pytest.param("SystemError", 500, RecognitionUnavailable, id="system-error"),
        pytest.param("RequestTimeOut", 500, RecognitionTimeout, id="request-timeout"),
        pytest.param("limit_requests", 429, RecognitionThrottled, id="limit-requests"),
    ],
)
async def test_transient_codes_are_retried_even_without_a_status(
    scripted_server: ScriptedServer,
    http: httpx.AsyncClient,
    data_uri: str,
    code: str,
    status: int,
    error: type[PipelineError],
) -> None:
    """Compatible mode's mid-stream errors carry no status: these codes alone mean "retry"."""
    scripted_server.set_faults([{"fault": "error_frame", "status": status, "code": code}])
    backend = OpenAIBackend(http, scripted_server.base_url, scripted_server.api_key)
    with pytest.raises(error) as caught:
        await _run(backend, data_uri)
    assert caught.value.retryable
    assert code in caught.value.message


@pytest.mark.parametrize("backend_class", [DashScopeBackend, OpenAIBackend])
async def test_a_reply_cut_at_the_output_limit_is_flagged(
    scripted_server: ScriptedServer, http: httpx.AsyncClient, data_uri: str, backend_class: Any
) -> None:
    """finish_reason "length" ends the stream but marks the Result truncated, not complete."""
    backend = backend_class(http, scripted_server.base_url, scripted_server.api_key)
    _, whole = await _run(backend, data_uri)
    scripted_server.set_faults([{"fault": "length", "after_deltas": 2}])
    deltas, cut = await _run(backend, data_uri)
    assert (whole.truncated, cut.truncated) == (False, True)
    assert cut.text == "".join(deltas) == scripted_server.entry(cut.request_id)["text"]
    assert whole.text.startswith(cut.text)
    assert cut.text != whole.text
    assert scripted_server.entry(cut.request_id)["finish_reason"] == "length"


async def test_compatible_mode_reports_the_apis_request_id(
    scripted_server: ScriptedServer, http: httpx.AsyncClient, data_uri: str
) -> None:
    """The request id is the x-request-id the server logged, not the chunks' chatcmpl id."""
    backend = OpenAIBackend(http, scripted_server.base_url, scripted_server.api_key)
    _, result = await _run(backend, data_uri)
    assert result.request_id is not None
    assert not result.request_id.startswith("chatcmpl-")
    assert scripted_server.entry(result.request_id)["endpoint"] == "compatible"


async def test_a_wrong_key_is_never_echoed(
    scripted_server: ScriptedServer, http: httpx.AsyncClient, data_uri: str
) -> None:
    """An authentication failure names the problem without repeating the key."""
    backend = DashScopeBackend(http, scripted_server.base_url, "sk-secret-wrong-key")
    with pytest.raises(RecognitionUnauthorized) as caught:
        await _run(backend, data_uri)
    assert "sk-secret-wrong-key" not in str(caught.value)
    assert "sk-secret-wrong-key" not in repr(caught.value)
