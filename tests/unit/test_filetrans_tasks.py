"""The long-file task state machine and the submit rules, in process (ASGI, no sockets)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from streams.asr_server.filetrans import FiletransConfig
from streams.asr_server.main import build_app
from streams.asr_server.scripted import ScriptedConfig
from tests.audio import asset

KEY = "sk-unit"
MODEL = "qwen3-asr-flash-filetrans"
SUBMIT = "/api/v1/services/audio/asr/transcription"
WAV = "en_speechbrain_harvard_birch_canoe.wav"
HEADERS = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"}


def _app(**config: Any) -> Starlette:
    settings = {"pending_s": 0.2, "delay_s": 0.3} | config
    return build_app(
        "scripted",
        api_key=KEY,
        scripted_config=ScriptedConfig(first_delta_s=0.0),
        filetrans=FiletransConfig(**settings),
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(query_qps=50))
    async with httpx.AsyncClient(transport=transport, base_url="http://asr") as http:
        yield http


async def _upload(http: httpx.AsyncClient, name: str = WAV) -> str:
    """The SDK's three steps, by hand: policy, form upload; returns the oss:// URL."""
    params = {"action": "getPolicy", "model": MODEL}
    policy = (await http.get("/api/v1/uploads", params=params, headers=HEADERS)).json()["data"]
    key = f"{policy['upload_dir']}/{name}"
    form = {
        "OSSAccessKeyId": policy["oss_access_key_id"],
        "Signature": policy["signature"],
        "policy": policy["policy"],
        "key": key,
        "x-oss-object-acl": policy["x_oss_object_acl"],
        "x-oss-forbid-overwrite": policy["x_oss_forbid_overwrite"],
        "success_action_status": "200",
        "x-oss-content-type": "audio/wav",
    }
    files = {"file": (name, asset(name).read_bytes(), "audio/wav")}
    response = await http.post(policy["upload_host"], data=form, files=files)
    assert response.status_code == 200, response.text
    return f"oss://{key}"


async def _submit(http: httpx.AsyncClient, url: str, **parameters: Any) -> httpx.Response:
    body = {"model": MODEL, "input": {"file_url": url}, "parameters": parameters}
    headers = HEADERS | {"X-DashScope-OssResourceResolve": "enable"}
    return await http.post(SUBMIT, json=body, headers=headers)


async def _statuses(http: httpx.AsyncClient, task_id: str, timeout_s: float = 5.0) -> list[Any]:
    """Poll every 50 ms until the task ends; return each distinct state in order, last whole."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = (await http.get(f"/api/v1/tasks/{task_id}", headers=HEADERS)).json()
        status = body["output"]["task_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("SUCCEEDED", "FAILED", "UNKNOWN"):
            seen[-1] = body
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} did not end: {seen}")


async def test_a_task_goes_pending_running_succeeded(client: httpx.AsyncClient) -> None:
    url = await _upload(client)
    submitted = await _submit(client, url, channel_id=[0], enable_words=True)
    assert submitted.status_code == 200
    output = submitted.json()["output"]
    assert output["task_status"] == "PENDING"
    *states, final = await _statuses(client, output["task_id"])
    assert states == ["PENDING", "RUNNING"]
    assert final["usage"] == {"seconds": 4}  # 3.26 s, billed in whole seconds
    times = [final["output"][k] for k in ("submit_time", "scheduled_time", "end_time")]
    assert times == sorted(times)
    result = (await client.get(final["output"]["result"]["transcription_url"])).json()
    assert result["file_url"] == url
    assert result["audio_info"] == {"format": "wav", "sample_rate": 16000}
    (channel,) = result["transcripts"]
    assert channel["channel_id"] == 0
    assert channel["sentences"]
    for sentence in channel["sentences"]:
        assert sentence["words"]
        assert sentence["begin_time"] <= sentence["end_time"] <= 3261


async def test_faults_fail_a_task_or_hold_it_running(client: httpx.AsyncClient) -> None:
    rules = [
        {"match": {"file_url_contains": "harvard", "times": 1}, "fault": "task_fail",
         "code": "FILE_403_FORBIDDEN", "message": "forbidden"},
        {"match": {"times": 1}, "fault": "task_hold"},
    ]  # fmt: skip
    assert (await client.post("/scripted/faults", json=rules)).status_code == 200
    task = (await _submit(client, await _upload(client))).json()["output"]["task_id"]
    final = (await _statuses(client, task))[-1]["output"]
    assert (final["task_status"], final["code"], final["message"]) == (
        "FAILED",
        "FILE_403_FORBIDDEN",
        "forbidden",
    )
    held = (await _submit(client, await _upload(client))).json()["output"]["task_id"]
    await asyncio.sleep(1.0)
    body = (await client.get(f"/api/v1/tasks/{held}", headers=HEADERS)).json()
    assert body["output"]["task_status"] == "RUNNING"
    assert "task_metrics" in body["output"]
    released = (await client.post("/scripted/release", json={"task_id": held})).json()
    assert released == {"released": [held]}
    assert (await _statuses(client, held))[-1]["output"]["task_status"] == "SUCCEEDED"
    kinds = [e["kind"] for e in (await client.get("/scripted/journal")).json()["entries"]]
    assert {"upload", "submit", "poll", "task"} <= set(kinds)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"{", 400, id="not-json"),
        pytest.param({"model": MODEL, "input": {}}, 400, id="no-url"),
        pytest.param({"model": "nope", "input": {"file_url": "http://x/a.wav"}}, 400, id="model"),
        pytest.param(
            {
                "model": MODEL,
                "input": {"file_url": "http://x/a.wav"},
                "parameters": {"channel_id": "0"},
            },
            400,
            id="channel-id",
        ),
        pytest.param(
            {
                "model": MODEL,
                "input": {"file_url": "http://x/a.wav"},
                "parameters": {"language": "xx"},
            },
            400,
            id="language",
        ),
        pytest.param({"model": MODEL, "input": {"file_url": "file:///a.wav"}}, 400, id="file"),
    ],
)
async def test_bad_submits_are_refused(client: httpx.AsyncClient, body: Any, status: int) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    response = await client.post(SUBMIT, headers=HEADERS, **kwargs)
    assert response.status_code == status
    assert response.json()["code"] == "InvalidParameter"


async def test_sync_calls_oss_without_header_and_unknown_tasks(client: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "input": {"file_url": "http://x/a.wav"}}
    sync = await client.post(SUBMIT, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert sync.status_code == 403
    assert "does not support synchronous calls" in sync.json()["message"]
    url = await _upload(client)
    bare = await client.post(SUBMIT, json={**body, "input": {"file_url": url}}, headers=HEADERS)
    assert bare.status_code == 400
    unknown = await client.get("/api/v1/tasks/0000", headers=HEADERS)
    assert unknown.json()["output"] == {"task_id": "0000", "task_status": "UNKNOWN"}
    wrong_key = await client.get("/api/v1/tasks/0000", headers={"Authorization": "Bearer no"})
    assert wrong_key.status_code == 401


async def test_concurrency_keeps_the_rest_pending() -> None:
    transport = httpx.ASGITransport(app=_app(pending_s=0.0, delay_s=0.6, concurrency=1))
    async with httpx.AsyncClient(transport=transport, base_url="http://asr") as http:
        url = await _upload(http)
        first = (await _submit(http, url)).json()["output"]["task_id"]
        second = (await _submit(http, url)).json()["output"]["task_id"]
        await asyncio.sleep(0.3)
        states = []
        for task in (first, second):
            body = (await http.get(f"/api/v1/tasks/{task}", headers=HEADERS)).json()
            states.append(body["output"]["task_status"])
        assert states == ["RUNNING", "PENDING"]
        assert (await _statuses(http, second))[-1]["output"]["task_status"] == "SUCCEEDED"


async def test_finished_tasks_beyond_the_retention_are_forgotten() -> None:
    transport = httpx.ASGITransport(app=_app(pending_s=0.0, delay_s=0.0, retention=2))
    async with httpx.AsyncClient(transport=transport, base_url="http://asr") as http:
        url = await _upload(http)
        tasks = []
        for _ in range(3):
            tasks.append((await _submit(http, url)).json()["output"]["task_id"])
            assert (await _statuses(http, tasks[-1]))[-1]["output"]["task_status"] == "SUCCEEDED"
        states = []
        for task in tasks:
            body = (await http.get(f"/api/v1/tasks/{task}", headers=HEADERS)).json()
            states.append(body["output"]["task_status"])
        assert states == ["UNKNOWN", "SUCCEEDED", "SUCCEEDED"]


async def test_submits_and_upload_policies_over_their_quota_get_429() -> None:
    app = build_app(
        "scripted",
        api_key=KEY,
        filetrans=FiletransConfig(pending_s=0.0, delay_s=0.0, submit_rpm=1),
        upload_qps=1,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://a"
    ) as http:
        url = await _upload(http)
        params = {"action": "getPolicy", "model": MODEL}
        policy = await http.get("/api/v1/uploads", params=params, headers=HEADERS)
        if policy.status_code == 200:  # the first one fell in the previous calendar second
            policy = await http.get("/api/v1/uploads", params=params, headers=HEADERS)
        assert policy.status_code == 429
        assert policy.json()["code"] == "Throttling.RateQuota"
        assert (await _submit(http, url)).status_code == 200
        refused = await _submit(http, url)
        assert refused.status_code == 429
        assert refused.json()["code"] == "Throttling.RateQuota"
        assert int(refused.headers["retry-after"]) >= 1
