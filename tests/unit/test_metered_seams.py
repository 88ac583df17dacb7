"""Metrics taken at the seams: the metered backend and the metered publisher."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.errors import RecognitionRejected, RecognitionUnavailable
from streams.metrics import MeteredBackend, MeteredPublisher, Metrics
from streams.publish import TopicNames
from streams.transcribe import Delta, RecognitionOptions, Result

OPTIONS = RecognitionOptions(model="qwen3-asr-flash")
TOPICS = TopicNames(partial="p", final="f", failed="x")


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class _Backend:
    """Answers from a script: each call takes the next entry (an exception or text)."""

    name = "fake"

    def __init__(self, *script: str | Exception) -> None:
        self.script = list(script)

    async def stream(self, audio_uri: str, options: RecognitionOptions) -> AsyncIterator[Any]:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        yield Delta(step)
        yield Result(text=step)


async def _drain(backend: MeteredBackend, audio_uri: str) -> list[Any]:
    async with contextlib.aclosing(backend.stream(audio_uri, OPTIONS)) as stream:
        return [item async for item in stream]


class TestMeteredBackend:
    async def test_counts_requests_by_outcome_and_retries_of_a_chunk(self) -> None:
        """A transient failure, its retry and a permanent failure are counted apart."""
        metrics = Metrics(CollectorRegistry())
        backend = MeteredBackend(
            _Backend(RecognitionUnavailable("503"), "hello", RecognitionRejected("400")), metrics
        )
        chunk = "data:audio/flac;base64,AAAA"
        with pytest.raises(RecognitionUnavailable):
            await _drain(backend, chunk)
        assert [type(i) for i in await _drain(backend, chunk)] == [Delta, Result]
        with pytest.raises(RecognitionRejected):
            await _drain(backend, "data:audio/flac;base64,BBBB")

        def requests(status: str) -> float:
            return _value(metrics, "streams_asr_requests_total", backend="fake", status=status)

        assert requests("asr_unavailable") == 1
        assert requests("ok") == 1
        assert requests("asr_rejected") == 1
        assert _value(metrics, "streams_asr_retries_total") == 1
        first_delta = "streams_asr_first_delta_seconds_count"
        assert _value(metrics, first_delta, backend="fake") == 1

    async def test_closing_after_the_result_counts_as_ok(self) -> None:
        """The pipeline stops reading at the Result; that request still counts as ok."""
        metrics = Metrics(CollectorRegistry())
        backend = MeteredBackend(_Backend("hi"), metrics)
        async with contextlib.aclosing(backend.stream("data:x", OPTIONS)) as stream:
            async for item in stream:
                if isinstance(item, Result):
                    break
        assert _value(metrics, "streams_asr_requests_total", backend="fake", status="ok") == 1


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *, wait: bool) -> None:
        self.sent.append((topic, value))


class TestMeteredPublisher:
    async def test_final_events_add_audio_cost_and_stage_timings(self) -> None:
        """Each final event adds its seconds and cost and one observation per stage."""
        metrics = Metrics(CollectorRegistry())
        publisher = MeteredPublisher(_Sender(), TOPICS, metrics)
        timings = {"fetch_s": 0.01, "decode_s": 0.2, "first_delta_s": 0.5, "total_s": 1.5}
        for _ in range(2):
            await publisher.final(
                {
                    "recording_id": "r-1",
                    "audio_seconds": 10.5,
                    "sent_seconds": 9.0,
                    "billed_seconds": 10,
                    "estimated_cost_usd": 0.00035,
                    "timings": {**timings, "transcribe_s": None},
                }
            )
        assert _value(metrics, "streams_recordings_completed_total") == 2
        assert _value(metrics, "streams_audio_recorded_seconds_total") == 21.0
        assert _value(metrics, "streams_audio_sent_seconds_total") == 18.0
        assert _value(metrics, "streams_estimated_cost_usd_total") == pytest.approx(0.0007)
        assert _value(metrics, "streams_stage_seconds_count", stage="decode") == 2
        assert _value(metrics, "streams_stage_seconds_sum", stage="total") == 3.0
        # A stage without a time (None) is not observed.
        assert _value(metrics, "streams_stage_seconds_count", stage="transcribe") == 0

    async def test_failed_events_count_under_their_code(self) -> None:
        """A failed event counts once under its error code; other codes stay at zero."""
        metrics = Metrics(CollectorRegistry())
        publisher = MeteredPublisher(_Sender(), TOPICS, metrics)
        await publisher.failed(
            {"recording_id": "r-2", "event_id": "e", "error": {"code": "audio_not_found"}}
        )
        assert _value(metrics, "streams_recordings_failed_total", code="audio_not_found") == 1
        exposition = metrics.exposition().decode()
        assert 'streams_recordings_failed_total{code="asr_rejected"} 0.0' in exposition

    def test_in_flight_rises_and_falls_around_a_recording(self) -> None:
        """The in-flight gauge counts the recordings inside ``recording()`` blocks."""
        metrics = Metrics(CollectorRegistry())
        with metrics.recording():
            assert _value(metrics, "streams_recordings_in_flight") == 1
        assert _value(metrics, "streams_recordings_in_flight") == 0
