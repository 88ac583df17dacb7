"""One recording from event to terminal event: validate, fetch, decode, plan, transcribe, publish.

:meth:`Pipeline.process` never raises for a bad recording: every outcome is exactly one
terminal event (final or failed), published and acknowledged by the broker before it returns,
so the caller may then let the recording's offset be committed. Only a failure to publish
(the broker itself is gone) propagates, so that the offset is *not* committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import stamina

from streams.audiostages import AudioStages
from streams.audiowork import Planned, request_uri
from streams.chunking import ChunkPolicy, Request
from streams.crashloop import FIRST_RUN, Run
from streams.decode import SpooledAudio
from streams.errors import (
    DeadlineExceeded,
    PipelineError,
    RecognitionStreamCut,
    TransientError,
    retry_wait,
)
from streams.event_types import FailedEvent, FinalEvent, TerminalEvent
from streams.events import (
    RecognitionDefaults,
    Recording,
    failed_event,
    final_event,
    parse_recording,
    recording_id_of,
)
from streams.fetch import FetchLimits
from streams.intake import fetch_and_plan
from streams.publish import EventPublisher
from streams.transcribe import RecognitionBackend, RecognitionOptions, Result

__all__ = ["Pipeline", "PipelineRules"]

log = logging.getLogger(__name__)


@dataclass
class _Progress:
    """What the recording's concurrent requests share while they run."""

    started: float
    run: Run = FIRST_RUN
    """Which start this is: partial events number attempts above earlier runs' (crashloop)."""
    sequence: int = 0
    attempts: int = 0
    first_delta_s: float | None = None
    last_error: PipelineError | None = None


@dataclass(frozen=True)
class PipelineRules:
    """What the pipeline is allowed and told to do, ready-made (streams/runtime.py builds it)."""

    defaults: RecognitionDefaults
    """Recognition options a recording event may override."""
    fetch_limits: FetchLimits
    chunk_policy: ChunkPolicy
    split_plan: Literal["turns", "packed"]
    max_audio_s: float
    vad_aggressiveness: int
    deadline_s: float
    """The most one recording may take, from its event to its terminal event."""
    attempts: int
    """Attempts per request, retries included."""
    concurrency: int
    """Recognition requests in flight in the worker, across partitions."""
    price_per_second_usd: float
    model_for: Callable[[str], str] = str
    """The model name the recogniser serves for a requested one (the region's suffix)."""


class Pipeline:
    """Processes recording events into transcript events with shared clients and bounds."""

    def __init__(
        self,
        rules: PipelineRules,
        backend: RecognitionBackend,
        publisher: EventPublisher,
        fetch_http: httpx.AsyncClient,
        *,
        retry_wait_initial_s: float = 0.5,
        retry_wait_max_s: float = 10.0,
        stages: AudioStages | None = None,
    ) -> None:
        self._rules = rules
        self._stages = stages if stages is not None else AudioStages(0)
        self._backend = backend
        self._publisher = publisher
        self._fetch_http = fetch_http
        self._retry_wait = (retry_wait_initial_s, retry_wait_max_s)
        self._slots = asyncio.Semaphore(rules.concurrency)  # requests in flight, worker-wide
        self._in_flight = 0
        self.peak_in_flight = 0  # most requests (each holding its chunk) in flight at once

    async def process(self, raw: bytes, *, where: str = "", run: Run = FIRST_RUN) -> TerminalEvent:
        """Turn one raw recording event into its published terminal event, and return it."""
        progress = _Progress(started=time.perf_counter(), run=run)
        recording: Recording | None = None
        try:
            recording = parse_recording(raw, self._rules.defaults)
            async with asyncio.timeout(self._rules.deadline_s):
                event = await self._transcribe(recording, progress)
        except TimeoutError:
            last = progress.last_error
            error: PipelineError = DeadlineExceeded(
                f"recording not done within {self._rules.deadline_s:.0f} s"
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
        await self._publisher.final(event, source=where)
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
    ) -> FailedEvent:
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

    async def _transcribe(self, recording: Recording, progress: _Progress) -> FinalEvent:
        timings: dict[str, float | None] = {}
        with tempfile.TemporaryDirectory(prefix="streams-") as spool:
            planned, stage_s = await fetch_and_plan(
                recording,
                Path(spool),
                rules=self._rules,
                split_plan=self._rules.split_plan,
                http=self._fetch_http,
                stages=self._stages,
            )
            timings.update(stage_s)
            if planned.same_signal:
                log.info(
                    "recording %s: both channels carry the same signal", recording.recording_id
                )
            return await self._transcribe_requests(recording, planned, progress, timings)

    async def _transcribe_requests(
        self,
        recording: Recording,
        planned: Planned,
        progress: _Progress,
        timings: dict[str, float | None],
    ) -> FinalEvent:
        t = time.perf_counter()
        options = RecognitionOptions(
            model=self._rules.model_for(recording.model),
            language=recording.language,
            enable_itn=recording.enable_itn,
            context=recording.context,
        )
        by_channel: dict[int, list[Request]] = {}
        for request in planned.requests:
            by_channel.setdefault(request.channel, []).append(request)
        results: dict[Request, Result] = {}
        try:
            async with asyncio.TaskGroup() as group:
                for requests in by_channel.values():
                    group.create_task(
                        self._recognize_channel(
                            recording, planned.audio, requests, options, progress, results
                        )
                    )
        except* PipelineError as errors:
            raise _first(errors) from None
        timings["transcribe_s"] = time.perf_counter() - t
        timings["first_delta_s"] = progress.first_delta_s
        timings["total_s"] = time.perf_counter() - progress.started
        log.info(
            "recording %s: %d requests (%s plan) on %d channel(s), %.1f of %.1f s sent; "
            "peak %d requests in flight in the worker (bound %d)",
            recording.recording_id,
            len(planned.requests),
            planned.plan,
            len(by_channel),
            sum(request.duration_s for request in planned.requests),
            planned.audio.duration_s,
            self.peak_in_flight,
            self._rules.concurrency,
        )
        return final_event(
            recording,
            [(request, results[request]) for request in planned.requests],
            plan=planned.plan,
            split=planned.split,
            audio_seconds=planned.audio.duration_s,
            attempts=progress.attempts,
            timings=timings,
            backend=self._backend.name,
            price_per_second_usd=self._rules.price_per_second_usd,
            hold=planned.music,
            tones=planned.tones,
        )

    async def _recognize_channel(
        self,
        recording: Recording,
        audio: SpooledAudio,
        requests: list[Request],
        options: RecognitionOptions,
        progress: _Progress,
        results: dict[Request, Result],
    ) -> None:
        """Recognise one channel's requests; detect its language once unless told otherwise.

        Short requests detected alone drift (a two-second English turn came back in Thai), so
        unless told, the channel's longest speech goes first and its language goes to the rest.
        """
        rest = requests
        if options.language is None and not recording.mixed_languages and len(requests) > 1:
            leader = max(requests, key=lambda r: r.speech_s)
            results[leader] = await self._recognize(recording, audio, leader, options, progress)
            rest = [r for r in requests if r is not leader]
            if results[leader].language:
                options = dataclasses.replace(options, language=results[leader].language)

        async def one(request: Request) -> None:
            results[request] = await self._recognize(recording, audio, request, options, progress)

        async with asyncio.TaskGroup() as group:
            for request in rest:
                group.create_task(one(request))

    async def _recognize(
        self,
        recording: Recording,
        audio: SpooledAudio,
        request: Request,
        options: RecognitionOptions,
        progress: _Progress,
    ) -> Result:
        attempt = 0
        result: Result | None = None
        async for retry in stamina.retry_context(
            on=retry_wait,  # transient errors only, as long as the server asked (errors.py)
            attempts=self._rules.attempts,
            timeout=None,  # the recording's deadline bounds the whole
            wait_initial=self._retry_wait[0],
            wait_max=self._retry_wait[1],
        ):
            with retry:
                attempt += 1
                try:
                    result = await self._stream_once(
                        recording, audio, request, options, progress, attempt
                    )
                except TransientError as exc:
                    progress.last_error = exc
                    log.info(
                        "recording %s request %d.%d attempt %d: %s",
                        recording.recording_id,
                        request.channel,
                        request.index,
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
        request: Request,
        options: RecognitionOptions,
        progress: _Progress,
        attempt: int,
    ) -> Result:
        # The audio is read and encoded only once the request holds a slot, and dropped when
        # the slot is given back: audio in memory is bounded by asr_concurrency.
        async with self._slots:
            with self._holding_slot():
                audio_uri = await self._stages.run(
                    "encode", recording.recording_id, request_uri, audio, request
                )
                progress.attempts += 1
                text = ""
                items = self._backend.stream(audio_uri, options)
                async with contextlib.aclosing(items) as stream:
                    async for item in stream:
                        if isinstance(item, Result):
                            return item
                        if progress.first_delta_s is None:
                            progress.first_delta_s = time.perf_counter() - progress.started
                        text += item.text
                        await self._publisher.partial(
                            recording.recording_id,
                            run=progress.run.number,
                            attempt=progress.run.attempt_base + attempt,
                            sequence=progress.sequence,
                            channel=request.channel,
                            role=request.role,
                            chunk_index=request.index,
                            chunk_start_s=request.start_s,
                            delta=item.text,
                            text=text,
                        )
                        progress.sequence += 1
        raise RecognitionStreamCut("recognition stream ended without a result")

    @contextlib.contextmanager
    def _holding_slot(self) -> Iterator[None]:
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= 1


def _first(group: BaseExceptionGroup[PipelineError]) -> PipelineError:
    """The first error of a group that task groups may have nested (one per channel)."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
