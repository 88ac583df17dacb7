"""One recording from event to terminal event: validate, fetch, decode, plan, transcribe, publish.

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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import stamina

import schemas
from streams.chunking import Chunk, ChunkPolicy, max_chunk_seconds, plan_chunks
from streams.config import Settings
from streams.decode import SAMPLE_RATE, Layout, SpooledAudio, decode_to_files
from streams.encode import encode_data_uri
from streams.errors import (
    DeadlineExceeded,
    PipelineError,
    RecognitionStreamCut,
    TransientError,
    retry_wait,
)
from streams.events import (
    RecognitionDefaults,
    Recording,
    event_id,
    failed_event,
    now_iso,
    parse_recording,
    recording_id_of,
)
from streams.fetch import FetchLimits, fetch
from streams.publish import Publisher
from streams.transcribe import RecognitionBackend, RecognitionOptions, Result
from streams.vad import SpeechDetector

__all__ = ["Pipeline", "chunk_policy", "fetch_limits"]

log = logging.getLogger(__name__)


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


def chunk_policy(settings: Settings) -> ChunkPolicy:
    """The planning stage's policy from the settings."""
    return ChunkPolicy(
        silence_s=settings.silence_threshold_s,
        pad_s=settings.speech_pad_s,
        max_chunk_s=max_chunk_seconds(
            settings.max_request_s, settings.max_request_bytes, SAMPLE_RATE
        ),
    )


def _decode_and_plan(
    path: Path,
    directory: Path,
    *,
    layout: Layout,
    roles_for: Callable[[int], tuple[str | None, ...]],
    max_duration_s: float,
    policy: ChunkPolicy,
    vad_aggressiveness: int,
) -> tuple[SpooledAudio, list[Chunk]]:
    """Decode to per-channel files while the VAD listens, then plan the requests (blocking)."""
    detectors: list[SpeechDetector] = []

    def listen(block: Any) -> None:
        if not detectors:
            detectors.extend(SpeechDetector(vad_aggressiveness) for _ in block)
        for detector, row in zip(detectors, block, strict=True):
            detector.feed(row)

    audio = decode_to_files(
        path, directory, layout=layout, max_duration_s=max_duration_s, on_block=listen
    )
    maps = [detector.finish() for detector in detectors]
    return audio, plan_chunks(maps, roles_for(len(maps)), policy, sample_rate=audio.sample_rate)


def _chunk_uri(audio: SpooledAudio, chunk: Chunk) -> str:
    return encode_data_uri(audio.read(chunk.channel, chunk.start, chunk.end), audio.sample_rate)


def _retry_backoff(exc: Exception) -> bool | float:
    """Retry transient errors only, waiting what the server asked for when it said."""
    return retry_wait(exc)  # the one policy, in streams/errors.py


class Pipeline:
    """Processes recording events into transcript events with shared clients and bounds."""

    def __init__(
        self,
        settings: Settings,
        backend: RecognitionBackend,
        publisher: Publisher,
        fetch_http: httpx.AsyncClient,
        *,
        retry_wait_initial_s: float = 0.5,
        retry_wait_max_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._publisher = publisher
        self._fetch_http = fetch_http
        self._policy = chunk_policy(settings)
        self._retry_wait = (retry_wait_initial_s, retry_wait_max_s)
        # Worker-wide bound on recognition requests in flight, across partitions.
        self._slots = asyncio.Semaphore(settings.asr_concurrency)
        self._in_flight = 0
        self.peak_in_flight = 0
        """Most requests (each holding its encoded chunk) in flight at once since start."""
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
        recording_id = recording.recording_id if recording else recording_id_of(raw)
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
        # Decoded PCM waits on disk, one raw file per channel; only the chunks in flight are
        # in memory, so a two-hour stereo call costs no more than a short one.
        with contextlib.ExitStack() as cleanup:
            spool = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="streams-")))
            with await fetch(recording.audio_url, self._limits, self._fetch_http) as fetched:
                timings["fetch_s"] = time.perf_counter() - t
                t = time.perf_counter()
                # Both caps are checked before the first request: the size by fetch, the
                # duration by decode, which finishes before anything is sent.
                audio, chunks = await asyncio.to_thread(
                    _decode_and_plan,
                    fetched.path,
                    spool,
                    layout="mix" if recording.layout == "mix" else "split",
                    roles_for=lambda channels: _roles(recording, channels),
                    max_duration_s=self._settings.max_audio_s,
                    policy=self._policy,
                    vad_aggressiveness=self._settings.vad_aggressiveness,
                )
            timings["decode_s"] = time.perf_counter() - t
            return await self._transcribe_chunks(recording, audio, chunks, progress, timings)

    async def _transcribe_chunks(
        self,
        recording: Recording,
        audio: SpooledAudio,
        chunks: list[Chunk],
        progress: _Progress,
        timings: dict[str, Any],
    ) -> dict[str, Any]:
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
                    group.create_task(self._recognize(recording, audio, chunk, options, progress))
                    for chunk in chunks
                ]
        except* PipelineError as errors:
            raise errors.exceptions[0] from None
        results = [task.result() for task in tasks]
        timings["transcribe_s"] = time.perf_counter() - t
        timings["first_delta_s"] = progress.first_delta_s
        timings["total_s"] = time.perf_counter() - progress.started
        log.info(
            "recording %s: %d requests on %d channel(s), %.1f of %.1f s sent; "
            "peak %d requests in flight in the worker (bound %d)",
            recording.recording_id,
            len(chunks),
            len(audio.paths),
            sum(chunk.duration_s for chunk in chunks),
            audio.duration_s,
            self.peak_in_flight,
            self._settings.asr_concurrency,
        )
        return self._final_event(recording, audio.duration_s, chunks, results, progress, timings)

    async def _recognize(
        self,
        recording: Recording,
        audio: SpooledAudio,
        chunk: Chunk,
        options: RecognitionOptions,
        progress: _Progress,
    ) -> Result:
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
                        recording, audio, chunk, options, progress, attempt
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
        audio: SpooledAudio,
        chunk: Chunk,
        options: RecognitionOptions,
        progress: _Progress,
        attempt: int,
    ) -> Result:
        # The chunk is read and encoded only once it holds a slot, and dropped when the slot
        # is given back: audio in memory is bounded by asr_concurrency, whatever the backlog.
        async with self._slots:
            with self._holding_slot():
                audio_uri = await asyncio.to_thread(_chunk_uri, audio, chunk)
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

    @contextlib.contextmanager
    def _holding_slot(self) -> Any:
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= 1

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
                    "end_s": round(chunk.end_s, 3),
                    "text": text,
                    "language": result.language,
                    "emotion": result.emotion,
                }
            )
        segments.sort(key=lambda s: (s["start_s"], s["channel"]))
        split = any(chunk.role is not None for chunk in chunks)
        turns = _turns(segments) if split else []
        if split:
            text = "\n".join(f"{turn['role']}: {turn['text']}" for turn in turns)
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
            "turns": turns,
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


def _roles(recording: Recording, channels: int) -> tuple[str | None, ...]:
    """Each channel's role: ``split`` always tags, ``auto`` only when there are two or more."""
    if recording.layout == "mix" or (recording.layout == "auto" and channels < 2):
        return (None,) * channels
    return tuple(
        recording.roles[i] if i < len(recording.roles) else f"channel{i}" for i in range(channels)
    )


def _turns(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation: segments in order of start, consecutive ones of one role joined.

    Times come from the requests (the recogniser returns text per request, not per word), so
    a turn is as precise as the speech regions the VAD found around it.
    """
    turns: list[dict[str, Any]] = []
    for segment in segments:
        if turns and turns[-1]["role"] == segment["role"]:
            turns[-1]["end_s"] = max(turns[-1]["end_s"], segment["end_s"])
            turns[-1]["text"] += " " + segment["text"]
            continue
        turns.append(
            {
                "role": segment["role"],
                "channel": segment["channel"],
                "start_s": segment["start_s"],
                "end_s": segment["end_s"],
                "text": segment["text"],
            }
        )
    return turns


def _most_common(values: Any) -> Any:
    counts = collections.Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None
