"""One recording from event to terminal event: validate, fetch, decode, transcribe, publish.

:meth:`Pipeline.process` never raises for a bad recording: every outcome is exactly one
terminal event (final or failed), published and acknowledged by the broker before it returns,
so the caller may then let the recording's offset be committed. Only a failure to publish
(the broker itself is gone) propagates, so that the offset is *not* committed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson
import stamina

import schemas
from streams.config import Settings
from streams.decode import SAMPLE_RATE, decode
from streams.encode import encode_data_uri
from streams.errors import DeadlineExceeded, PipelineError, RecognitionStreamCut, TransientError
from streams.events import (
    RecognitionDefaults,
    Recording,
    event_id,
    failed_event,
    now_iso,
    parse_recording,
)
from streams.fetch import FetchLimits, fetch
from streams.publish import Publisher
from streams.transcribe import RecognitionBackend, RecognitionOptions, Result

__all__ = ["Chunk", "Pipeline", "fetch_limits", "plan_chunks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """A stretch of one channel that goes to the recogniser in one request."""

    channel: int
    role: str | None
    index: int
    start_s: float
    pcm: np.ndarray

    @property
    def duration_s(self) -> float:
        """Length of the chunk in seconds."""
        return len(self.pcm) / SAMPLE_RATE


def plan_chunks(
    channels: tuple[np.ndarray, ...], roles: tuple[str | None, ...], max_request_s: float
) -> list[Chunk]:
    """Cut each channel into requests no longer than ``max_request_s``.

    Cuts fall on fixed boundaries for now; silence-aware cutting is a separate stage to come.
    """
    step = int(max_request_s * SAMPLE_RATE)
    chunks = []
    for channel, pcm in enumerate(channels):
        for index, start in enumerate(range(0, len(pcm), step)):
            chunks.append(
                Chunk(
                    channel, roles[channel], index, start / SAMPLE_RATE, pcm[start : start + step]
                )
            )
    return chunks


@dataclass
class _Progress:
    """What the recording's concurrent requests share while they run."""

    started: float
    sequence: int = 0
    attempts: int = 0
    first_delta_s: float | None = None
    last_error: PipelineError | None = None


def fetch_limits(settings: Settings) -> FetchLimits:
    """The fetch stage's limits from the settings."""
    return FetchLimits(
        max_bytes=settings.max_audio_bytes,
        timeout_s=settings.fetch_timeout_s,
        file_roots=settings.file_roots,
        allow_private_hosts=settings.allow_private_hosts,
    )


def _retry_backoff(exc: Exception) -> bool | float:
    """Retry transient errors only, waiting what the server asked for when it said."""
    if isinstance(exc, TransientError):
        if exc.retry_after_s is not None:
            return max(exc.retry_after_s, 0.01)
        return True
    return False


class Pipeline:
    """Processes recording events into transcript events with shared clients and bounds."""

    def __init__(
        self,
        settings: Settings,
        backend: RecognitionBackend,
        publisher: Publisher,
        fetch_http: httpx.AsyncClient,
        *,
        max_request_s: float = 300.0,
        retry_wait_initial_s: float = 0.5,
        retry_wait_max_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._publisher = publisher
        self._fetch_http = fetch_http
        self._max_request_s = max_request_s
        self._retry_wait = (retry_wait_initial_s, retry_wait_max_s)
        # Worker-wide bound on recognition requests in flight, across partitions.
        self._slots = asyncio.Semaphore(settings.asr_concurrency)
        self._defaults = RecognitionDefaults(
            model=settings.asr_model,
            language=settings.language,
            enable_itn=settings.enable_itn,
            context=settings.context,
            layout=settings.channel_layout,
            roles=settings.channel_roles,
        )
        self._limits = fetch_limits(settings)

    async def process(self, raw: bytes, *, where: str = "") -> dict[str, Any]:
        """Turn one raw recording event into its published terminal event, and return it."""
        progress = _Progress(started=time.perf_counter())
        recording: Recording | None = None
        try:
            recording = parse_recording(raw, self._defaults)
            async with asyncio.timeout(self._settings.recording_deadline_s):
                event = await self._transcribe(recording, progress)
        except TimeoutError:
            last = progress.last_error
            error: PipelineError = DeadlineExceeded(
                f"recording not done within {self._settings.recording_deadline_s:.0f} s"
                + (f"; last error: {last.message}" if last else "")
            )
            return await self._fail(error, raw, recording, progress, where)
        except PipelineError as exc:
            return await self._fail(exc, raw, recording, progress, where)
        except Exception as exc:
            # A bug must not stop the agent nor lose the recording: it fails with a code
            # that says so, and the traceback goes to the log.
            log.exception("unexpected error on recording at %s", where)
            error = PipelineError(f"internal error: {type(exc).__name__}: {exc}")
            return await self._fail(error, raw, recording, progress, where)
        await self._publisher.final(event)
        log.info(
            "recording %s final at %s: %.1f s audio, %d requests, %.2f s total",
            event["recording_id"],
            where,
            event["audio_seconds"],
            progress.attempts,
            event["timings"]["total_s"],
            extra={
                "recording_id": event["recording_id"],
                "outcome": "final",
                "audio_s": event["audio_seconds"],
                "requests": progress.attempts,
                "timings": event["timings"],
            },
        )
        return event

    async def _fail(
        self,
        error: PipelineError,
        raw: bytes,
        recording: Recording | None,
        progress: _Progress,
        where: str,
    ) -> dict[str, Any]:
        recording_id = recording.recording_id if recording else _salvage_id(raw)
        event = failed_event(
            error,
            raw=raw,
            recording=recording,
            recording_id=recording_id,
            attempts=progress.attempts,
        )
        await self._publisher.failed(event)
        log.warning(
            "recording %s failed at %s: %s (%s, stage %s)",
            recording_id,
            where,
            error.code,
            error.message,
            error.stage,
            extra={
                "recording_id": recording_id,
                "outcome": "failed",
                "code": error.code,
                "stage": error.stage,
                "requests": progress.attempts,
                "timings": {"total_s": round(time.perf_counter() - progress.started, 4)},
            },
        )
        return event

    async def _transcribe(self, recording: Recording, progress: _Progress) -> dict[str, Any]:
        timings: dict[str, Any] = {}
        t = time.perf_counter()
        with await fetch(recording.audio_url, self._limits, self._fetch_http) as fetched:
            timings["fetch_s"] = time.perf_counter() - t
            t = time.perf_counter()
            layout = "mix" if recording.layout == "mix" else "split"
            audio = await decode(
                fetched.path, layout=layout, max_duration_s=self._settings.max_audio_s
            )
        timings["decode_s"] = time.perf_counter() - t
        split = len(audio.channels) > 1
        roles = tuple(
            (recording.roles[i] if i < len(recording.roles) else f"channel{i}") if split else None
            for i in range(len(audio.channels))
        )
        chunks = plan_chunks(audio.channels, roles, self._max_request_s)

        t = time.perf_counter()
        options = RecognitionOptions(
            model=recording.model,
            language=recording.language,
            enable_itn=recording.enable_itn,
            context=recording.context,
        )
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._recognize(recording, chunk, options, progress))
                    for chunk in chunks
                ]
        except* PipelineError as errors:
            raise errors.exceptions[0] from None
        results = [task.result() for task in tasks]
        timings["transcribe_s"] = time.perf_counter() - t
        timings["first_delta_s"] = progress.first_delta_s
        timings["total_s"] = time.perf_counter() - progress.started
        return self._final_event(recording, audio.duration_s, chunks, results, progress, timings)

    async def _recognize(
        self,
        recording: Recording,
        chunk: Chunk,
        options: RecognitionOptions,
        progress: _Progress,
    ) -> Result:
        audio_uri = await asyncio.to_thread(encode_data_uri, chunk.pcm, SAMPLE_RATE)
        attempt = 0
        result: Result | None = None
        async for retry in stamina.retry_context(
            on=_retry_backoff,
            attempts=self._settings.asr_attempts,
            timeout=None,  # the recording's deadline bounds the whole
            wait_initial=self._retry_wait[0],
            wait_max=self._retry_wait[1],
        ):
            with retry:
                attempt += 1
                try:
                    result = await self._stream_once(
                        recording, chunk, audio_uri, options, progress, attempt
                    )
                except TransientError as exc:
                    progress.last_error = exc
                    log.info(
                        "recording %s chunk %d.%d attempt %d: %s",
                        recording.recording_id,
                        chunk.channel,
                        chunk.index,
                        attempt,
                        exc.message,
                    )
                    raise
        assert result is not None  # the retry loop ends only on success or by raising
        return result

    async def _stream_once(
        self,
        recording: Recording,
        chunk: Chunk,
        audio_uri: str,
        options: RecognitionOptions,
        progress: _Progress,
        attempt: int,
    ) -> Result:
        async with self._slots:
            progress.attempts += 1
            text = ""
            async with contextlib.aclosing(self._backend.stream(audio_uri, options)) as stream:
                async for item in stream:
                    if isinstance(item, Result):
                        return item
                    if progress.first_delta_s is None:
                        progress.first_delta_s = time.perf_counter() - progress.started
                    text += item.text
                    await self._publisher.partial(
                        recording.recording_id,
                        attempt=attempt,
                        sequence=progress.sequence,
                        channel=chunk.channel,
                        role=chunk.role,
                        chunk_index=chunk.index,
                        chunk_start_s=chunk.start_s,
                        delta=item.text,
                        text=text,
                    )
                    progress.sequence += 1
        raise RecognitionStreamCut("recognition stream ended without a result")

    def _final_event(
        self,
        recording: Recording,
        audio_seconds: float,
        chunks: list[Chunk],
        results: list[Result],
        progress: _Progress,
        timings: dict[str, Any],
    ) -> dict[str, Any]:
        segments = []
        for chunk, result in zip(chunks, results, strict=True):
            text = result.text.strip()
            if not text:
                continue
            segments.append(
                {
                    "channel": chunk.channel,
                    "role": chunk.role,
                    "start_s": round(chunk.start_s, 3),
                    "end_s": round(chunk.start_s + chunk.duration_s, 3),
                    "text": text,
                    "language": result.language,
                    "emotion": result.emotion,
                }
            )
        segments.sort(key=lambda s: (s["start_s"], s["channel"]))
        split = any(chunk.role is not None for chunk in chunks)
        if split:
            text = "\n".join(f"{s['role']}: {s['text']}" for s in segments)
        else:
            text = " ".join(s["text"] for s in segments)
        billed = sum(result.billed_seconds for result in results)
        return {
            "schema_version": schemas.SCHEMA_VERSION,
            "type": "final",
            "event_id": event_id("final", recording.recording_id),
            "recording_id": recording.recording_id,
            "text": text,
            "language": _most_common(s["language"] for s in segments),
            "emotion": _most_common(s["emotion"] for s in segments),
            "segments": segments,
            "audio_seconds": round(audio_seconds, 3),
            "sent_seconds": round(sum(chunk.duration_s for chunk in chunks), 3),
            "billed_seconds": billed,
            "estimated_cost_usd": round(billed * self._settings.price_per_second_usd, 6),
            "backend": self._backend.name,
            "model": recording.model,
            "request_ids": [r.request_id for r in results if r.request_id],
            "attempts": max(progress.attempts, 1),
            "timings": {k: (round(v, 4) if v is not None else None) for k, v in timings.items()},
            "call": recording.call,
            "completed_at": now_iso(),
        }


def _most_common(values: Any) -> Any:
    counts = collections.Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def _salvage_id(raw: bytes) -> str | None:
    """The recording id of an invalid event, when one can still be read from it."""
    with contextlib.suppress(orjson.JSONDecodeError):
        data = orjson.loads(raw)
        if isinstance(data, dict) and isinstance(data.get("recording_id"), str):
            value: str = data["recording_id"]
            if 0 < len(value) <= 200:
                return value
    return None
