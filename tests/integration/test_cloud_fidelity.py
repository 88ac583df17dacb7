"""The local server as a stand-in for the cloud's economics and errors, over real HTTP.

The request quota, the published limits, SSE-bodied refusals and mid-stream error frames,
each as a client meets them: raw HTTP for the bytes, the project's client for what it makes
of them (streams/transcribe.py).
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from streams.asr_server.app import NATIVE_PATH
from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer, run_scripted_server

pytestmark = pytest.mark.integration

MODEL = "qwen3-asr-flash"
WAV = "en_speechbrain_harvard_birch_canoe.wav"  # 3.26 s
RATE_QUOTA_MESSAGE = "Requests rate limit exceeded, please try again later."


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
