"""The filetrans backend's first half: from a recording event to a durable task entry.

:meth:`TaskStarter.start` validates the event, fetches and decodes the audio, runs the VAD
(streams/audiowork.py, as the streaming pipeline does), compacts each channel's speech into
its section of one mono FLAC (streams/filetrans_audio.py), uploads it (or passes a public
``https://`` audio_url through when allowed), submits ONE task for the call, and writes the
task entry to the ledger, waiting for the broker. Then it returns, and the recording's offset
moves on: the partition does not wait for the recogniser. The task poller
(streams/filetrans_poller.py) finishes the recording.

A failure before the task exists is answered at once with one failed event, as the pipeline
does; the caller (streams/answer.py) records it in the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from streams.analytics import talk_spans
from streams.audiostages import AudioStages
from streams.audiowork import Planned
from streams.crashloop import Run
from streams.errors import DeadlineExceeded, PipelineError
from streams.event_types import FailedEvent
from streams.events import Recording, failed_event, parse_recording, recording_id_of
from streams.filetrans_audio import StretchMap, compact_audio
from streams.filetrans_client import FiletransClient
from streams.filetrans_final import TaskEntry
from streams.idempotency import Ledger
from streams.intake import fetch_and_plan
from streams.netguard import redact_urls
from streams.pipeline import PipelineRules
from streams.publish import EventPublisher

__all__ = ["FiletransRules", "TaskStarter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FiletransRules:
    """The filetrans backend's settings, as plain values (streams/runtime.py builds them)."""

    model: str = "qwen3-asr-flash-filetrans"
    pass_url: bool = False
    gap_s: float = 0.4
    poll_initial_s: float = 1.0
    poll_max_s: float = 15.0


class TaskStarter:
    """Submits one filetrans task per recording and keeps it in the ledger."""

    def __init__(
        self,
        rules: PipelineRules,
        filetrans: FiletransRules,
        client: FiletransClient,
        ledger: Ledger,
        publisher: EventPublisher,
        fetch_http: httpx.AsyncClient,
        stages: AudioStages,
    ) -> None:
        self._rules = rules
        self._ft = filetrans
        self._client = client
        self._ledger = ledger
        self._publisher = publisher
        self._fetch_http = fetch_http
        self._stages = stages

    async def start(self, raw: bytes, *, where: str, run: Run) -> FailedEvent | None:
        """Submit the recording's task and keep it; or publish and return its failed event."""
        started = time.time()
        recording: Recording | None = None
        try:
            recording = parse_recording(raw, self._rules.defaults)
            async with asyncio.timeout(self._rules.deadline_s):
                entry = await self._submit(recording, where, run, started)
        except TimeoutError:
            error: PipelineError = DeadlineExceeded(
                f"no filetrans task submitted within {self._rules.deadline_s:.0f} s"
            )
        except PipelineError as exc:
            error = exc
        except Exception as exc:
            log.exception("unexpected error on recording at %s", where)
            error = PipelineError(f"internal error: {type(exc).__name__}: {exc}")
        else:
            await self._ledger.record_task(entry.recording_id, entry.to_value())
            log.info(
                "recording %s at %s: filetrans task %s submitted; the offset moves on",
                entry.recording_id,
                where,
                entry.task_id,
                extra={"recording_id": entry.recording_id, "task_id": entry.task_id},
            )
            return None
        recording_id = recording.recording_id if recording else recording_id_of(raw)
        failed = failed_event(
            error, raw=raw, recording=recording, recording_id=recording_id, attempts=0
        )
        await self._publisher.failed(failed)
        log.warning(
            "recording %s failed at %s: %s (%s, stage %s)",
            recording_id,
            where,
            error.code,
            error.message,
            error.stage,
            extra={"recording_id": recording_id, "outcome": "failed", "code": error.code},
        )
        return failed

    async def _submit(
        self, recording: Recording, where: str, run: Run, started: float
    ) -> TaskEntry:
        rid = recording.recording_id
        with tempfile.TemporaryDirectory(prefix="streams-ft-") as spool:
            planned, timings = await fetch_and_plan(
                recording,
                Path(spool),
                rules=self._rules,
                split_plan="packed",
                http=self._fetch_http,
                stages=self._stages,
            )
            t = time.perf_counter()
            channels = sorted({r.channel for r in planned.requests})
            roles = self._roles(recording, planned)
            model = self._model(recording)
            task_id: str | None = None
            request_ids: list[str] = []
            passed = (
                self._ft.pass_url
                and recording.audio_url.startswith("https://")
                and planned.audio.source_channels == len(planned.audio.paths)
            )
            tracks = 1  # the compacted file: one track, a section per channel
            if passed:
                channels = list(range(len(planned.audio.paths)))
                tracks = len(channels)
                duration = planned.audio.duration_s
                maps = [StretchMap(((0.0, duration, 0.0),), 0.0)] * len(channels)
                file_url = recording.audio_url
            elif channels:
                compact = await self._stages.run(
                    "encode",
                    rid,
                    compact_audio,
                    planned.audio,
                    planned.requests,
                    channels,
                    self._ft.gap_s,
                )
                maps = list(compact.maps)
                name = re.sub(r"[^A-Za-z0-9._-]+", "-", rid)[:80] + ".flac"
                file_url = await self._client.upload(compact.flac, name=name, model=model)
            else:
                maps = []  # no speech: no task, an empty final
            timings["upload_s"] = time.perf_counter() - t
            if channels:
                task_id, request_id = await self._client.submit(
                    file_url,
                    model=model,
                    channels=list(range(tracks)),
                    language=recording.language,
                    enable_itn=recording.enable_itn,
                )
                request_ids = [request_id] if request_id else []
        timings["submitted_s"] = time.time() - started
        split = planned.split
        talk = talk_spans(planned.requests, roles if split else (None,))
        return TaskEntry(
            recording_id=rid,
            task_id=task_id,
            source=where,
            deadline=started + self._rules.deadline_s,
            started=started,
            run=run.number,
            attempt_base=run.attempt_base,
            model=model,
            split=split,
            channels=channels,
            roles=list(roles),
            maps=maps,
            audio_seconds=planned.audio.duration_s,
            speech_seconds=sum(r.speech_s for r in planned.requests),
            sent_seconds=max((m.file_seconds for m in maps), default=0.0) * tracks,
            talk=[(role, list(spans)) for role, spans in talk.items()],
            hold=list(planned.music),
            tones=list(planned.tones),
            call=recording.call,
            original={**recording.original, "audio_url": redact_urls(recording.audio_url)},
            redaction=recording.redaction,
            request_ids=request_ids,
            timings=timings,
            tracks=tracks,
        )

    def _model(self, recording: Recording) -> str:
        """The event's own model if it named one, else the filetrans model."""
        named = (recording.original.get("recognition") or {}).get("model")
        return self._rules.model_for(named or self._ft.model)

    @staticmethod
    def _roles(recording: Recording, planned: Planned) -> tuple[str | None, ...]:
        channels = len(planned.audio.paths)
        if not planned.split:
            return (None,) * channels
        return tuple(
            recording.roles[i] if i < len(recording.roles) else f"channel{i}"
            for i in range(channels)
        )
