"""The local server as a stand-in for the cloud's economics and errors, over real HTTP.

The request quota, the published limits, SSE-bodied refusals and mid-stream error frames,
each as a client meets them: raw HTTP for the bytes, the project's client for what it makes
of them (streams/transcribe.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dashscope
import httpx
import orjson
import pytest

from streams.api_limits import MAX_CONTEXT_TOKENS
from streams.asr_server.app import NATIVE_PATH
from streams.errors import RecognitionRejected, RecognitionThrottled
from streams.transcribe import DashScopeBackend, RecognitionOptions, Result, asr_client
from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer, run_scripted_server

pytestmark = pytest.mark.integration

MODEL = "qwen3-asr-flash"
WAV = "en_speechbrain_harvard_birch_canoe.wav"  # 3.26 s
RATE_QUOTA_MESSAGE = "Requests rate limit exceeded, please try again later."
OPTIONS = RecognitionOptions(model=MODEL, language="en")


@pytest.fixture(scope="module")
def data_uri() -> str:
    """A real recording as a base64 WAV data URI."""
    return "data:audio/wav;base64," + base64.b64encode(asset(WAV).read_bytes()).decode()


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedServer]:
    """A server that takes any key and lets each one 60 requests a minute, one a second."""
    log = tmp_path_factory.mktemp("quota-server") / "server.log"
    with run_scripted_server(log, api_key=None, extra_args=["--quota-rpm", "60"]) as server:
        yield server


@pytest.fixture(scope="module")
def one_a_minute(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedServer]:
    """A server that takes any key and lets each one a single request a minute."""
    log = tmp_path_factory.mktemp("rpm1-server") / "server.log"
    with run_scripted_server(log, api_key=None, extra_args=["--quota-rpm", "1"]) as server:
        yield server


def _native(audio: str, key: str, *, sse: bool) -> tuple[dict[str, Any], dict[str, str]]:
    body = {
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [{"audio": audio}]}]},
        "parameters": {"incremental_output": True},
    }
    headers = {"Authorization": f"Bearer {key}"}
    if sse:
        headers["X-DashScope-SSE"] = "enable"
    return body, headers


def _post(server: ScriptedServer, audio: str, key: str, *, sse: bool = False) -> httpx.Response:
    body, headers = _native(audio, key, sse=sse)
    return httpx.post(server.base_url + NATIVE_PATH, json=body, headers=headers, timeout=30)


def _entries(server: ScriptedServer, ids: set[str]) -> list[dict[str, Any]]:
    return [e for e in server.journal() if e["request_id"] in ids]


async def _burst(server: ScriptedServer, audio: str, key: str, count: int) -> list[httpx.Response]:
    body, headers = _native(audio, key, sse=False)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        calls = [client.post(NATIVE_PATH, json=body, headers=headers) for _ in range(count)]
        return list(await asyncio.gather(*calls))


async def test_a_calendar_second_admits_rpm_over_60(
    quota_server: ScriptedServer, data_uri: str
) -> None:
    """A burst at 60 RPM gets one request a second through; the rest are 429 RateQuota."""
    await asyncio.sleep(math.ceil(time.time()) - time.time() + 0.02)  # just after a second begins
    replies = await _burst(quota_server, data_uri, "sk-burst", 4)
    refused = [r for r in replies if r.status_code == 429]
    assert refused, [r.status_code for r in replies]
    assert {r.status_code for r in replies} == {200, 429}
    for reply in refused:
        assert reply.json()["code"] == "Throttling.RateQuota"
        assert reply.json()["message"] == RATE_QUOTA_MESSAGE
        assert reply.headers["retry-after"] == "1"
    entries = _entries(quota_server, {r.headers["x-request-id"] for r in replies})
    assert len(entries) == 4
    admitted = Counter(math.floor(e["received_at"]) for e in entries if e["http_status"] == 200)
    assert max(admitted.values()) == 1
    assert sorted(e["http_status"] for e in entries) == sorted(r.status_code for r in replies)
    assert {e["error_code"] for e in entries if e["http_status"] == 429} == {"Throttling.RateQuota"}


def test_the_minute_quota_is_per_key_and_says_when_to_come_back(
    one_a_minute: ScriptedServer, data_uri: str
) -> None:
    """At 1 RPM a key's second request waits about a minute; another key is not held up."""
    first = _post(one_a_minute, data_uri, "sk-minute-a")
    again = _post(one_a_minute, data_uri, "sk-minute-a")
    other = _post(one_a_minute, data_uri, "sk-minute-b")
    assert (first.status_code, again.status_code, other.status_code) == (200, 429, 200)
    assert 58 <= int(again.headers["retry-after"]) <= 60
    entry = one_a_minute.entry(again.headers["x-request-id"])
    assert (entry["http_status"], entry["error_code"]) == (429, "Throttling.RateQuota")
    assert entry["received_at"] >= one_a_minute.entry(first.headers["x-request-id"])["received_at"]


def _sse_error(status: int, code: str, message: str, request_id: str) -> bytes:
    data = orjson.dumps({"code": code, "message": message, "request_id": request_id})
    return b"id:1\nevent:error\n:HTTP_STATUS/%d\ndata:%s\n\n" % (status, data)


@pytest.mark.parametrize("sse", [pytest.param(True, id="sse"), pytest.param(False, id="json")])
def test_a_refusal_before_the_stream_comes_in_the_requests_own_format(
    scripted_server: ScriptedServer, data_uri: str, sse: bool
) -> None:
    """An SSE request refused up front gets an SSE body under the real status; others JSON."""
    scripted_server.set_faults([{"fault": "429", "retry_after_s": 2}])
    reply = _post(scripted_server, data_uri, scripted_server.api_key or "", sse=sse)
    request_id = reply.headers["x-request-id"]
    assert (reply.status_code, reply.headers["retry-after"]) == (429, "2")
    message = "Requests throttling triggered."
    if sse:
        assert reply.headers["content-type"] == "text/event-stream;charset=UTF-8"
        assert reply.content == _sse_error(429, "Throttling", message, request_id)
    else:
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"code": "Throttling", "message": message, "request_id": request_id}


@pytest.mark.parametrize("status", [429, 500, 503])
def test_mid_stream_errors_carry_their_status_only_in_a_comment(
    scripted_server: ScriptedServer, data_uri: str, status: int
) -> None:
    """After HTTP 200 an error is an event:error frame; its status is the :HTTP_STATUS comment."""
    scripted_server.set_faults([{"fault": "error_frame", "status": status, "after_deltas": 1}])
    reply = _post(scripted_server, data_uri, scripted_server.api_key or "", sse=True)
    assert reply.status_code == 200
    *results, last, end = reply.content.split(b"\n\n")
    assert (len(results), end) == (1, b"")
    head, data = last.rsplit(b"\ndata:", 1)
    assert head == b"id:2\nevent:error\n:HTTP_STATUS/%d" % status
    assert orjson.loads(data)["request_id"] == reply.headers["x-request-id"]
    entry = scripted_server.entry(reply.headers["x-request-id"])
    assert (entry["http_status"], entry["finished"]) == (200, False)
    assert entry["error_code"] == orjson.loads(data)["code"]


@pytest.mark.parametrize(
    ("payload_chars", "refused"),
    [pytest.param(10_000_000, False, id="at-the-limit"), pytest.param(10_000_004, True, id="over")],
)
def test_the_data_uri_limit_is_ten_million_bytes(
    scripted_server: ScriptedServer, payload_chars: int, refused: bool
) -> None:
    """The documented 10 MB is decimal: 10,000,000 bytes of base64 pass the size check."""
    audio = "data:audio/wav;base64," + "A" * payload_chars
    reply = _post(scripted_server, audio, scripted_server.api_key or "")
    assert (reply.status_code, reply.json()["code"]) == (400, "InvalidParameter")
    limit = "Exceeded limit on max bytes per data-uri item : 10000000"
    assert (reply.json()["message"] == limit) == refused


async def test_the_client_meets_the_context_limit_as_a_rejection(
    scripted_server: ScriptedServer, data_uri: str
) -> None:
    """A context over 10,000 tokens is a permanent 400 that says so; the limit itself passes."""
    async with _client() as http:
        backend = DashScopeBackend(http, scripted_server.base_url, scripted_server.api_key)
        at_limit = RecognitionOptions(model=MODEL, context="word " * MAX_CONTEXT_TOKENS)
        result = await _result(backend, data_uri, at_limit)
        over = RecognitionOptions(model=MODEL, context="word " * (MAX_CONTEXT_TOKENS + 1))
        with pytest.raises(RecognitionRejected) as caught:
            await _result(backend, data_uri, over)
    assert result.text
    assert "10001 tokens" in caught.value.message


async def test_the_client_waits_as_long_as_the_quota_says(
    one_a_minute: ScriptedServer, data_uri: str
) -> None:
    """The quota's SSE-bodied 429 is asr_throttled with its Retry-After and its message."""
    async with _client() as http:
        backend = DashScopeBackend(http, one_a_minute.base_url, "sk-client-quota")
        await _result(backend, data_uri, OPTIONS)
        with pytest.raises(RecognitionThrottled) as caught:
            await _result(backend, data_uri, OPTIONS)
    assert caught.value.retry_after_s is not None
    assert 58 <= caught.value.retry_after_s <= 60
    assert caught.value.message.endswith(f"Throttling.RateQuota: {RATE_QUOTA_MESSAGE}")


def test_the_official_sdk_reads_an_sse_bodied_refusal(
    one_a_minute: ScriptedServer, data_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dashscope's SDK takes the status from the reply and the code from the SSE body."""
    monkeypatch.setattr(dashscope, "base_http_api_url", f"{one_a_minute.base_url}/api/v1")

    def call() -> Any:
        (response, *_) = list(
            dashscope.MultiModalConversation.call(
                api_key="sk-sdk-quota",
                model=MODEL,
                messages=[{"role": "user", "content": [{"audio": data_uri}]}],
                stream=True,
                incremental_output=True,
            )
        )
        return response

    assert call().status_code == 200
    refusal = call()
    assert (refusal.status_code, refusal.code) == (429, "Throttling.RateQuota")
    assert refusal.message == RATE_QUOTA_MESSAGE
    assert refusal.headers["content-type"] == "text/event-stream;charset=UTF-8"


@contextlib.asynccontextmanager
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    async with asr_client(
        "httpx", connect_timeout_s=10.0, read_timeout_s=5.0, concurrency=4
    ) as client:
        yield client


async def _result(backend: DashScopeBackend, uri: str, options: RecognitionOptions) -> Result:
    async for item in backend.stream(uri, options):
        if isinstance(item, Result):
            return item
    raise AssertionError("no result")
