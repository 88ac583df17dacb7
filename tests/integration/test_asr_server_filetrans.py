"""The long-file API and the temporary upload of the scripted server, through the DashScope SDK.

One scripted server for the module, with tasks that stay PENDING 0.3 s and RUNNING 0.5 s (so a
poll sees every state) and the cloud's task-query quota of 20 a second.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest
from dashscope.audio.qwen_asr import QwenTranscription
from dashscope.utils.oss_utils import upload_file

from tests.audio import AUDIO_DIR, asset
from tests.fixtures.asr_server import ScriptedServer, run_scripted_server
from tests.fixtures.static_site import serve_directory

pytestmark = pytest.mark.integration

MODEL = "qwen3-asr-flash-filetrans"
STEREO = "en_fasterwhisper_stereo_diarization_LR.wav"  # 5.0 s, two speakers
WAV = "en_speechbrain_harvard_birch_canoe.wav"  # 3.26 s
RESOLVE = {"X-DashScope-OssResourceResolve": "enable"}
QUERY_QPS = 20


@pytest.fixture(scope="module")
def audio_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared recordings over HTTP, plus ``not-audio.wav`` (text in a .wav name)."""
    root = tmp_path_factory.mktemp("site")
    for name in (STEREO, WAV):
        (root / name).write_bytes(asset(name).read_bytes())
    (root / "not-audio.wav").write_text("this is not audio\n")
    with serve_directory(root) as url:
        yield url


@pytest.fixture(scope="module")
def filetrans_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedServer]:
    log = tmp_path_factory.mktemp("filetrans-server") / "server.log"
    flags = ["--filetrans-pending-s", "0.3", "--filetrans-delay-s", "0.5"]
    flags += ["--task-query-qps", str(QUERY_QPS)]
    with run_scripted_server(log, *flags) as server:
        yield server


@pytest.fixture
def sdk(filetrans_process: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> ScriptedServer:
    """The module's server, alive and reset, with the SDK pointed at it."""
    server = filetrans_process
    assert server.process.poll() is None, f"the ASR server died:\n{server.log_tail()}"
    server.reset()
    monkeypatch.setattr(dashscope, "base_http_api_url", f"{server.base_url}/api/v1")
    return server


def _poll_states(server: ScriptedServer, task_id: str) -> tuple[list[str], Any, int]:
    """Fetch every 0.1 s until the task ends: the distinct states in order, the last reply and
    the number of fetches."""
    states: list[str] = []
    deadline = time.monotonic() + 20
    fetches = 0
    while time.monotonic() < deadline:
        fetches += 1
        reply = QwenTranscription.fetch(task_id, api_key=server.api_key)
        assert reply.status_code == 200, reply
        status = reply.output["task_status"]
        if not states or states[-1] != status:
            states.append(status)
        if status in ("SUCCEEDED", "FAILED", "UNKNOWN"):
            return states, reply, fetches
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not end: {states}")


def _kinds(server: ScriptedServer, task_id: str | None = None) -> Counter[str]:
    entries = server.journal()
    return Counter(e["kind"] for e in entries if task_id is None or e.get("task_id") == task_id)


def test_sdk_task_runs_pending_running_succeeded(sdk: ScriptedServer, audio_site: str) -> None:
    """Both channels recognised apart; each billed; every state seen by polling."""
    url = f"{audio_site}/{STEREO}"
    submitted = QwenTranscription.async_call(
        model=MODEL, file_url=url, api_key=sdk.api_key, channel_id=[0, 1], enable_words=True
    )
    assert submitted.status_code == 200
    assert submitted.output["task_status"] == "PENDING"
    task_id = submitted.output["task_id"]
    states, final, fetches = _poll_states(sdk, task_id)
    assert states == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert final.usage["seconds"] == 10  # 5 s per channel
    result = httpx.get(final.output["result"]["transcription_url"], timeout=10).json()
    assert result["file_url"] == url
    assert [t["channel_id"] for t in result["transcripts"]] == [0, 1]
    for transcript in result["transcripts"]:
        assert transcript["text"]
        for sentence in transcript["sentences"]:
            words = sentence["words"]
            assert sentence["begin_time"] == words[0]["begin_time"]
            assert sentence["end_time"] == words[-1]["end_time"] <= 5000
            times = [(w["begin_time"], w["end_time"]) for w in words]
            assert times == sorted(times)
    # The journal counts what the client did: one submit, one entry per poll.
    counts = _kinds(sdk, task_id)
    assert (counts["submit"], counts["poll"], counts["task"]) == (1, fetches, 1)


def test_sdk_wait_returns_the_result(sdk: ScriptedServer, audio_site: str) -> None:
    submitted = QwenTranscription.async_call(
        model=MODEL, file_url=f"{audio_site}/{WAV}", api_key=sdk.api_key
    )
    final = QwenTranscription.wait(submitted, api_key=sdk.api_key)
    assert final.status_code == 200
    assert final.output["task_status"] == "SUCCEEDED"
    assert final.usage["seconds"] == 4
    for key in ("submit_time", "scheduled_time", "end_time"):
        assert len(final.output[key]) == len("2026-01-01 00:00:00.000")


@pytest.mark.parametrize(
    ("name", "code"),
    [
        pytest.param("missing.wav", "FILE_404_NOT_FOUND", id="404"),
        pytest.param("not-audio.wav", "FILE_PARSE_FAILED", id="undecodable"),
    ],
)
def test_unusable_audio_fails_the_task(
    sdk: ScriptedServer, audio_site: str, name: str, code: str
) -> None:
    submitted = QwenTranscription.async_call(
        model=MODEL, file_url=f"{audio_site}/{name}", api_key=sdk.api_key
    )
    assert submitted.status_code == 200  # the cloud accepts the task and fails it later
    final = QwenTranscription.wait(submitted, api_key=sdk.api_key)
    assert final.output["task_status"] == "FAILED"
    assert final.output["code"] == code
    assert final.output["message"]
    assert "result" not in final.output


def test_sdk_upload_then_filetrans(sdk: ScriptedServer, tmp_path: Path) -> None:
    """file:// → policy, form upload, oss:// with the resolve header, as the SDK does it."""
    local = tmp_path / WAV
    local.write_bytes((AUDIO_DIR / WAV).read_bytes())
    oss_url = upload_file(MODEL, f"file://{local}", sdk.api_key)
    assert oss_url.startswith("oss://")
    assert oss_url.endswith(f"/{WAV}")
    submitted = QwenTranscription.async_call(
        model=MODEL, file_url=oss_url, api_key=sdk.api_key, headers=RESOLVE
    )
    final = QwenTranscription.wait(submitted, api_key=sdk.api_key)
    assert final.output["task_status"] == "SUCCEEDED"
    assert _kinds(sdk)["upload"] == 1
    # Without the header the cloud does not resolve oss:// and refuses the submit.
    bare = QwenTranscription.async_call(model=MODEL, file_url=oss_url, api_key=sdk.api_key)
    assert bare.status_code == 400
    assert bare.code == "InvalidParameter"


def test_sdk_multimodal_call_with_a_local_file(sdk: ScriptedServer) -> None:
    """MultiModalConversation uploads a file:// audio and the sync API resolves the oss://."""
    response = dashscope.MultiModalConversation.call(
        api_key=sdk.api_key,
        model="qwen3-asr-flash",
        messages=[{"role": "user", "content": [{"audio": f"file://{AUDIO_DIR / WAV}"}]}],
        result_format="message",
    )
    assert response.status_code == 200, response
    text = response.output.choices[0].message.content[0]["text"]
    recognitions = [e for e in sdk.journal() if e["kind"] == "recognition"]
    assert [e["text"] for e in recognitions] == [text]
    assert recognitions[0]["audio_s"] == pytest.approx(3.26, abs=0.01)
    assert _kinds(sdk)["upload"] == 1


def test_oss_without_the_resolve_header_is_refused_by_the_sync_api(sdk: ScriptedServer) -> None:
    key = upload_file("qwen3-asr-flash", f"file://{AUDIO_DIR / WAV}", sdk.api_key)
    body = {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": key}]}]},
    }
    url = f"{sdk.base_url}/api/v1/services/aigc/multimodal-generation/generation"
    auth = {"Authorization": f"Bearer {sdk.api_key}"}
    assert httpx.post(url, json=body, headers=auth, timeout=10).status_code == 400
    resolved = httpx.post(url, json=body, headers=auth | RESOLVE, timeout=10)
    assert resolved.status_code == 200


def test_sync_call_to_the_filetrans_model_is_403(sdk: ScriptedServer, audio_site: str) -> None:
    url = f"{sdk.base_url}/api/v1/services/audio/asr/transcription"
    body = {"model": MODEL, "input": {"file_url": f"{audio_site}/{WAV}"}}
    reply = httpx.post(url, json=body, headers={"Authorization": f"Bearer {sdk.api_key}"})
    assert reply.status_code == 403
    assert reply.json()["message"] == "current user api does not support synchronous calls."


def test_task_queries_over_the_quota_get_429(sdk: ScriptedServer) -> None:
    """A burst of polls: at most 20 admitted in any calendar second, the rest 429."""
    url = f"{sdk.base_url}/api/v1/tasks/no-such-task"
    headers = {"Authorization": f"Bearer {sdk.api_key}"}
    with httpx.Client(headers=headers, timeout=10) as client:
        replies = [client.get(url) for _ in range(3 * QUERY_QPS)]
    refused = [r for r in replies if r.status_code == 429]
    assert refused
    assert {r.json()["code"] for r in refused} == {"Throttling.RateQuota"}
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert {r.status_code for r in replies} == {200, 429}
    polls = [e for e in sdk.journal() if e["kind"] == "poll"]
    admitted = Counter(int(e["time"]) for e in polls if e["http_status"] == 200)
    assert max(admitted.values()) <= QUERY_QPS
    # The SDK sees the refusal as a response, not an exception.
    assert QwenTranscription.fetch("no-such-task", api_key=sdk.api_key).status_code in (200, 429)


def test_a_held_task_stays_running_until_released(sdk: ScriptedServer, audio_site: str) -> None:
    sdk.set_faults([{"match": {"file_url_contains": WAV, "times": 1}, "fault": "task_hold"}])
    submitted = QwenTranscription.async_call(
        model=MODEL, file_url=f"{audio_site}/{WAV}", api_key=sdk.api_key
    )
    task_id = submitted.output["task_id"]
    time.sleep(1.5)
    assert QwenTranscription.fetch(task_id, api_key=sdk.api_key).output["task_status"] == "RUNNING"
    assert sdk.release(task_id) == [task_id]
    final = QwenTranscription.wait(task_id, api_key=sdk.api_key)
    assert final.output["task_status"] == "SUCCEEDED"
    task = [e for e in sdk.journal() if e["kind"] == "task" and e["task_id"] == task_id]
    assert task[0]["fault"] == "task_hold"
