"""Prometheus metrics of a worker, taken at the pipeline's seams.

Nothing in the pipeline knows about metrics. They come from three wrappers: around the
recognition backend (requests by outcome, time to first delta, retries), around the
publisher (every terminal event carries the recording's audio seconds, cost, timings or error
code), and around the agent's call of the pipeline (recordings in flight). The worker serves
them in Prometheus' text format at ``/metrics`` on its web port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any

import faust
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from streams.errors import PipelineError, TransientError
from streams.event_types import FailedEvent, FinalEvent
from streams.publish import Publisher, Sender, TopicNames
from streams.transcribe import Delta, RecognitionBackend, RecognitionOptions, Result

__all__ = ["STAGES", "MeteredBackend", "MeteredPublisher", "Metrics", "add_metrics_page"]

# Stage timings of a final event (``timings.<stage>_s``) that are always exported.
STAGES = ("fetch", "decode", "first_delta", "transcribe", "total")
# From a local file in tens of milliseconds to a long call at the default 900 s deadline.
_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)
# Chunks whose last request failed transiently, remembered to count the next one as a retry.
_MAX_REMEMBERED_FAILURES = 10_000


def _error_codes(cls: type[PipelineError] = PipelineError) -> set[str]:
    codes = {cls.code}
    for sub in cls.__subclasses__():
        codes |= _error_codes(sub)
    return codes


class Metrics:
    """The worker's metrics, in a registry of their own (plus process and GC collectors)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.in_flight = Gauge(
            "streams_recordings_in_flight", "Recordings being processed now.", registry=r
        )
        self.completed = Counter(
            "streams_recordings_completed", "Recordings that ended in a final event.", registry=r
        )
        self.failed = Counter(
            "streams_recordings_failed",
            "Recordings that ended in a failed event, by error code.",
            ["code"],
            registry=r,
        )
        self.audio_seconds = Counter(
            "streams_audio_recorded_seconds",
            "Seconds of audio in the recordings that completed.",
            registry=r,
        )
        self.sent_seconds = Counter(
            "streams_audio_sent_seconds",
            "Seconds of audio sent to the recogniser for the recordings that completed.",
            registry=r,
        )
        self.billed_seconds = Counter(
            "streams_audio_billed_seconds",
            "Seconds of audio the recogniser reported as billed.",
            registry=r,
        )
        self.cost_usd = Counter(
            "streams_estimated_cost_usd",
            "Estimated recognition cost of the completed recordings, in US dollars.",
            registry=r,
        )
        self.stage_seconds = Histogram(
            "streams_stage_seconds",
            "Seconds a completed recording spent in each stage (first_delta: from the event "
            "to the first recognised text; total: the whole recording).",
            ["stage"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.asr_requests = Counter(
            "streams_asr_requests",
            "Recognition requests by backend and outcome: ok, cancelled or an error code.",
            ["backend", "status"],
            registry=r,
        )
        self.asr_retries = Counter(
            "streams_asr_retries",
            "Recognition requests that repeat a chunk after a transient error.",
            registry=r,
        )
        self.asr_first_delta_seconds = Histogram(
            "streams_asr_first_delta_seconds",
            "Seconds from sending a recognition request to its first delta.",
            ["backend"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.partial_events = Counter(
            "streams_partial_events", "Partial transcript events published.", registry=r
        )
        self.rate_share_partitions = Gauge(
            "streams_asr_rate_share_partitions",
            "Partitions of the recordings topic this worker holds, whose time slots it may "
            "send recognition requests in (streams/ratelimit.py).",
            registry=r,
        )
        self.rate_share_rpm = Gauge(
            "streams_asr_rate_share_requests_per_minute",
            "This worker's share of the account's request quota: the quota times the "
            "partitions it holds over all partitions.",
            registry=r,
        )
        # Zero-valued series from the start, so dashboards and rate() see them before work.
        for code in sorted(_error_codes()):
            self.failed.labels(code=code)
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)

    @classmethod
    def for_worker(cls) -> Metrics:
        """Metrics plus the process, platform and garbage collector collectors."""
        metrics = cls()
        process_collector.ProcessCollector(registry=metrics.registry)
        platform_collector.PlatformCollector(registry=metrics.registry)
        gc_collector.GCCollector(registry=metrics.registry)
        return metrics

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Count one recording as in flight while the block runs."""
        self.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight.dec()

    def observe_final(self, event: Mapping[str, Any]) -> None:
        """Account for a published final event."""
        self.completed.inc()
        self.audio_seconds.inc(event.get("audio_seconds") or 0)
        self.sent_seconds.inc(event.get("sent_seconds") or 0)
        self.billed_seconds.inc(event.get("billed_seconds") or 0)
        self.cost_usd.inc(event.get("estimated_cost_usd") or 0)
        for key, value in (event.get("timings") or {}).items():
            if key.endswith("_s") and isinstance(value, int | float):
                self.stage_seconds.labels(stage=key.removesuffix("_s")).observe(value)

    def observe_failed(self, event: Mapping[str, Any]) -> None:
        """Account for a published failed event."""
        self.failed.labels(code=(event.get("error") or {}).get("code") or "internal_error").inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class MeteredBackend:
    """A recognition backend that counts its requests, their outcome and first-delta time."""

    def __init__(self, inner: RecognitionBackend, metrics: Metrics) -> None:
        self.name = inner.name
        self._inner = inner
        self._metrics = metrics
        self._failed_chunks: set[int] = set()

    async def stream(
        self, audio_uri: str, options: RecognitionOptions
    ) -> AsyncGenerator[Delta | Result, None]:
        """Stream through the wrapped backend, recording what happens."""
        m = self._metrics
        # The pipeline encodes a chunk once and sends the same string on every attempt;
        # str caches its hash, so this costs nothing after the first request.
        chunk = hash(audio_uri)
        if chunk in self._failed_chunks:
            self._failed_chunks.discard(chunk)
            m.asr_retries.inc()
        started = time.perf_counter()
        status = "asr_stream_cut"  # the stream ended without a result
        first_delta = True
        try:
            inner = self._inner.stream(audio_uri, options)
            async with contextlib.aclosing(inner) as stream:
                async for item in stream:
                    if isinstance(item, Result):
                        status = "ok"
                    elif first_delta:
                        first_delta = False
                        m.asr_first_delta_seconds.labels(backend=self.name).observe(
                            time.perf_counter() - started
                        )
                    yield item
        except PipelineError as exc:
            status = exc.code
            if isinstance(exc, TransientError):
                if len(self._failed_chunks) >= _MAX_REMEMBERED_FAILURES:
                    self._failed_chunks.clear()
                self._failed_chunks.add(chunk)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # Closed by the caller: after the result that is the normal end; before it, a
            # sibling chunk failed or the recording ran out of time.
            if status != "ok":
                status = "cancelled"
            raise
        except Exception:
            status = "internal_error"
            raise
        finally:
            if status == "asr_stream_cut":
                self._failed_chunks.add(chunk)
            m.asr_requests.labels(backend=self.name, status=status).inc()


class MeteredPublisher(Publisher):
    """A publisher that accounts for every event once the broker has it."""

    def __init__(self, sender: Sender, topics: TopicNames, metrics: Metrics) -> None:
        super().__init__(sender, topics)
        self._metrics = metrics

    async def partial(self, recording_id: str, **fields: Any) -> None:
        """Publish a partial event and count it."""
        await super().partial(recording_id, **fields)
        self._metrics.partial_events.inc()

    async def final(self, event: FinalEvent, *, source: str = "") -> None:
        """Publish a final event, then account for its audio, cost and timings."""
        await super().final(event, source=source)
        self._metrics.observe_final(event)

    async def failed(self, event: FailedEvent) -> None:
        """Publish a failed event, then count it under its error code."""
        await super().failed(event)
        self._metrics.observe_failed(event)


def add_metrics_page(app: faust.App, metrics: Metrics, path: str = "/metrics") -> None:
    """Serve ``metrics`` at ``path`` on the worker's web server."""

    @app.page(path)
    async def _metrics(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        # aiohttp refuses a charset inside content_type=, and the Prometheus type has one.
        return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
