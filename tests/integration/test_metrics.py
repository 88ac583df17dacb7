"""A running worker's /metrics, scraped after real work, matches the events it published."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer
from tests.fixtures.worker import Stack, stop_and_drain, validate

pytestmark = pytest.mark.integration

GOOD = ("en_speechbrain_harvard_birch_canoe.wav", "de_picovoice_leopard_test_de.wav")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(url: str, timeout_s: float = 60.0) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.get(url, timeout=5)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _event(rid: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"schema_version": 1, "recording_id": rid, "audio_url": asset(name).as_uri(), **extra}


async def test_metrics_match_the_work_done(stack: Stack, scripted_server: ScriptedServer) -> None:
    """Counts, seconds, cost, stage latencies and request outcomes equal what the events say."""
    # One request refused with 500 once (then retried), one rejected for good with 400.
    scripted_server.set_faults(
        [
            {"match": {"context_contains": "#flaky", "times": 1}, "fault": "500"},
            {"match": {"context_contains": "#reject"}, "fault": "400"},
        ]
    )
    port = _free_port()
    stack.start_worker(STREAMS_WEB_ENABLED="true", STREAMS_WEB_PORT=str(port))
    events = [
        _event("good-1", GOOD[0]),
        _event("good-2", GOOD[1]),
        _event(
            "stereo", "en_fasterwhisper_stereo_diarization_LR.wav", channels={"layout": "split"}
        ),
        _event("flaky", GOOD[0], recognition={"context": "#flaky"}),
        _event("rejected", GOOD[0], recognition={"context": "#reject"}),
        {
            "schema_version": 1,
            "recording_id": "missing",
            "audio_url": (stack.tmp / "nowhere.wav").as_uri(),
        },
    ]
    await stack.publish(events)
    wanted = {e["recording_id"] for e in events}
    messages = await stack.collect(
        lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= wanted
    )
    finals = [m.value for m in messages if m.topic == stack.final]
    failed = [m.value for m in messages if m.topic == stack.failed]
    partials = [m.value for m in messages if m.topic == stack.partial]
    assert len(finals) == 4
    assert sorted(f["error"]["code"] for f in failed) == ["asr_rejected", "audio_not_found"]

    # Terminal events are published before the metrics move: wait for the last one to count
    # (the deadline only bounds a hang; a busy machine may take a while).
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 60
    last = ("streams_recordings_failed_total", (("code", "audio_not_found"),))
    while (m := _scrape(metrics_url))[last] < 1:
        assert time.monotonic() < deadline, "metrics never counted the last recording"
        await asyncio.sleep(0.2)

    def value(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("streams_recordings_completed_total") == 4
    assert value("streams_recordings_failed_total", code="asr_rejected") == 1
    assert value("streams_recordings_failed_total", code="audio_not_found") == 1
    assert value("streams_recordings_failed_total", code="undecodable_audio") == 0
    assert value("streams_recordings_in_flight") == 0
    assert value("streams_audio_recorded_seconds_total") == pytest.approx(
        sum(f["audio_seconds"] for f in finals)
    )
    assert value("streams_audio_sent_seconds_total") == pytest.approx(
        sum(f["sent_seconds"] for f in finals)
    )
    assert value("streams_audio_billed_seconds_total") == sum(f["billed_seconds"] for f in finals)
    assert value("streams_estimated_cost_usd_total") == pytest.approx(
        sum(f["estimated_cost_usd"] for f in finals)
    )
    for stage in ("fetch", "decode", "first_delta", "transcribe", "total"):
        assert value("streams_stage_seconds_count", stage=stage) == 4
        assert value("streams_stage_seconds_sum", stage=stage) == pytest.approx(
            sum(f["timings"][f"{stage}_s"] for f in finals), abs=1e-3
        )
    # Requests: one per chunk of the finals (two for the split call), plus the 500 and the 400.
    ok = sum(len(f["request_ids"]) for f in finals)
    assert ok == 5
    assert value("streams_asr_requests_total", backend="dashscope", status="ok") == ok
    assert value("streams_asr_requests_total", backend="dashscope", status="asr_unavailable") == 1
    assert value("streams_asr_requests_total", backend="dashscope", status="asr_rejected") == 1
    assert value("streams_asr_retries_total") == 1
    assert value("streams_asr_first_delta_seconds_count", backend="dashscope") == ok
    assert value("streams_partial_events_total") >= len(partials) > 0
    # The journal agrees: seven requests reached the recogniser.
    assert len(scripted_server.journal()) == 7

    # Every event the worker published, read to the end once it has stopped: one terminal
    # event per recording (so the counters above counted each once), all schema-valid.
    drained = await stop_and_drain(stack)
    assert sorted(m.value["recording_id"] for m in stack.terminal(drained)) == sorted(wanted)
    drained_partials = [m for m in drained if m.topic == stack.partial]
    assert value("streams_partial_events_total") == len(drained_partials)
    for message in drained:
        validate(message)
