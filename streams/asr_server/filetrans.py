"""The vendor's asynchronous long-file API (``qwen3-asr-flash-filetrans``), served locally.

- ``POST /api/v1/services/audio/asr/transcription`` with ``X-DashScope-Async: enable`` submits
  ``{"model", "input": {"file_url"}, "parameters": {"channel_id", "language", "enable_itn",
  "enable_words"}}`` and answers ``{"request_id", "output": {"task_id", "task_status":
  "PENDING"}}`` (a UUID task id). ``oss://`` URLs need ``X-DashScope-OssResourceResolve``
  (:mod:`streams.asr_server.uploads`).
- ``GET /api/v1/tasks/{task_id}`` answers the task's state: PENDING, RUNNING (with
  ``task_metrics``), SUCCEEDED (``result.transcription_url`` and ``usage.seconds``, each
  channel billed in whole seconds) or FAILED (``code``, ``message``); ``submit_time``,
  ``scheduled_time`` and ``end_time`` as ``YYYY-MM-DD HH:MM:SS.mmm`` (server local time). An
  id the server does not know (another key's, expired, or lost in a restart) is ``UNKNOWN``.
- ``GET /filetrans/results/{task_id}/{token}.json`` is the result file (no key needed, like
  the cloud's signed URL): ``file_url``, ``audio_info`` and per channel ``transcripts`` with
  sentences and words in milliseconds (:mod:`streams.asr_server.sentences`).

Each task runs in its own asyncio task: PENDING for ``pending_s``, then (once one of
``concurrency`` slots is free; 0: no limit) RUNNING for ``delay_s`` plus the recognition
itself, each requested channel decoded apart and recognised with word timestamps. Tasks are
kept, finished or not, up to ``retention`` (the oldest finished go first) and for 24 h after
they end. Quotas per key, as the cloud's: ``submit_rpm`` submits a minute and ``query_qps``
polls a second (0: none), refused with 429 ``Throttling.RateQuota``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams.api_limits import billed_seconds
from streams.asr_server.engine import Engine, RecognitionRequest, WordEngine
from streams.asr_server.errors import (
    RATE_QUOTA,
    RATE_QUOTA_MESSAGE,
    ApiError,
    AsrServerError,
)
from streams.asr_server.faults import FaultRule
from streams.asr_server.filetrans_audio import TaskFailed, load_channels
from streams.asr_server.quota import RequestQuota
from streams.asr_server.responses import JSON_TYPE, refusal
from streams.asr_server.sentences import channel_transcript
from streams.asr_server.tasks import Task, describe, parse_submit
from streams.asr_server.uploads import UploadStore
from streams.fetch import FetchLimits

__all__ = ["SUBMIT_PATH", "TASKS_PATH", "FiletransConfig", "FiletransService"]

SUBMIT_PATH = "/api/v1/services/audio/asr/transcription"
TASKS_PATH = "/api/v1/tasks/{task_id}"
RESULTS_PATH = "/filetrans/results/{task_id}/{token}.json"
RESULT_TTL_S = 24 * 3600.0
_MODEL_PREFIX = "qwen3-asr-flash-filetrans"
_NO_SUCH_KEY = (
    "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"
)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FiletransConfig:
    """How long-file tasks run; times in seconds."""

    pending_s: float = 0.1
    """Time a task stays PENDING before it may run."""
    delay_s: float = 0.2
    """Time a task stays RUNNING before its recognition starts (a benchmark's fixed cost)."""
    concurrency: int = 0
    """Tasks RUNNING at once; 0: no limit."""
    retention: int = 10_000
    """Tasks remembered; beyond it the oldest finished ones are forgotten."""
    submit_rpm: int = 0
    """Submits a key may make per minute (and per second, RPM/60); 0: no quota."""
    query_qps: int = 0
    """Task queries a key may make per second; 0: no quota."""
    max_audio_s: float = 12 * 3600.0
    max_bytes: int = 2 * 1024**3


class TaskFaults(Protocol):
    def task_fault(self, file_url: str) -> FaultRule | None: ...


class FiletransService:
    """Submitted tasks, the asyncio tasks that run them, and the routes of the API."""

    def __init__(
        self,
        engine: Engine,
        config: FiletransConfig,
        *,
        authorize: Callable[[Request], str],
        fetch_limits: FetchLimits,
        uploads: UploadStore | None = None,
        journal: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.engine = engine
        self.config = config
        self.authorize = authorize
        self.fetch_limits = FetchLimits(
            max_bytes=config.max_bytes,
            timeout_s=max(fetch_limits.timeout_s, 600.0),
            allow_private_hosts=fetch_limits.allow_private_hosts,
        )
        self.uploads = uploads
        self.journal = journal
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self._runners: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.concurrency) if config.concurrency else None
        self._submits = RequestQuota(config.submit_rpm) if config.submit_rpm else None
        self._queries = RequestQuota(config.query_qps * 60) if config.query_qps else None

    # -- routes ------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The API's routes, plus ``POST /scripted/release`` when the engine injects faults."""
        routes = [
            Route(SUBMIT_PATH, self.submit, methods=["POST"]),
            Route(TASKS_PATH, self.query, methods=["GET"]),
            Route(RESULTS_PATH, self.result_file, methods=["GET"]),
        ]
        if hasattr(self.engine, "task_fault"):
            routes.append(Route("/scripted/release", self.release, methods=["POST"]))
        return routes

    async def submit(self, request: Request) -> Response:
        """Validate a submit, start its task and answer PENDING."""
        request_id = str(uuid.uuid4())
        event: dict[str, Any] = {"kind": "submit", "time": time.time(), "task_id": None}
        try:
            key = self.authorize(request)
            if request.headers.get("x-dashscope-async", "").lower() != "enable":
                message = "current user api does not support synchronous calls."
                raise ApiError(403, "AccessDenied", message)
            _admit(self._submits, key)
            task = parse_submit(await request.body(), key, request, self.uploads)
        except ApiError as exc:
            self._log({**event, "request_id": request_id, "http_status": exc.status,
                       "error_code": exc.code, "status": None})  # fmt: skip
            return refusal(exc, request_id, native=True, sse=False)
        self.tasks[task.task_id] = task
        self._forget()
        runner = asyncio.create_task(self._run(task), name=f"filetrans-{task.task_id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        self._log({**event, "request_id": request_id, "task_id": task.task_id,
                   "http_status": 200, "error_code": None, "status": "PENDING"})  # fmt: skip
        self._log_task(task)
        body = {
            "request_id": request_id,
            "output": {"task_id": task.task_id, "task_status": "PENDING"},
        }
        return JSONResponse(body, headers={"x-request-id": request_id})

    async def query(self, request: Request) -> Response:
        """Answer a task's state, as ``GET /api/v1/tasks/{task_id}`` does."""
        request_id = str(uuid.uuid4())
        task_id = request.path_params["task_id"]
        event = {"kind": "poll", "request_id": request_id, "task_id": task_id, "time": time.time()}
        try:
            key = self.authorize(request)
            _admit(self._queries, key)
        except ApiError as exc:
            self._log({**event, "http_status": exc.status, "error_code": exc.code, "status": None})
            return refusal(exc, request_id, native=True, sse=False)
        task = self.tasks.get(task_id)
        if task is not None and task.key != key:
            task = None
        body = describe(task_id, task, request_id, RESULTS_PATH)
        self._log({**event, "http_status": 200, "error_code": None,
                   "status": body["output"]["task_status"]})  # fmt: skip
        return Response(orjson.dumps(body), 200, media_type=JSON_TYPE)

    async def result_file(self, request: Request) -> Response:
        """The result JSON of a SUCCEEDED task (the ``transcription_url``)."""
        task = self.tasks.get(request.path_params["task_id"])
        if task is None or task.result is None or task.token != request.path_params["token"]:
            return Response(_NO_SUCH_KEY, 404, media_type="application/xml")
        return Response(task.result, 200, media_type=JSON_TYPE)

    async def release(self, request: Request) -> Response:
        """Let held tasks go on: ``{"task_id": ...}`` one, an empty body every held task."""
        raw = await request.body()
        try:
            wanted = orjson.loads(raw).get("task_id") if raw.strip() else None
        except (ValueError, AttributeError):
            return JSONResponse({"error": 'expected {"task_id": ...} or nothing'}, 400)
        released = []
        for task in self.tasks.values():
            if task.held and not task.released.is_set() and wanted in (None, task.task_id):
                task.released.set()
                released.append(task.task_id)
        return JSONResponse({"released": released})

    # -- parsing and state -------------------------------------------------------------

    def _forget(self) -> None:
        """Drop expired tasks, and the oldest finished ones beyond ``retention``."""
        now = time.time()
        extra = len(self.tasks) - self.config.retention
        for task_id, task in list(self.tasks.items()):
            if task.ended_at is None:
                continue
            if extra > 0 or task.ended_at + RESULT_TTL_S < now:
                del self.tasks[task_id]
                extra -= 1

    # -- running -----------------------------------------------------------------------

    async def _run(self, task: Task) -> None:
        try:
            await asyncio.sleep(self.config.pending_s)
            async with self._slots or contextlib.nullcontext():
                task.status, task.scheduled_at = "RUNNING", time.time()
                self._log_task(task)
                fault = self._fault(task)
                if fault is not None and fault.fault == "task_hold":
                    task.held = True
                    self._log_task(task, fault="task_hold")
                    await task.released.wait()
                await asyncio.sleep(self.config.delay_s)
                if fault is not None and fault.fault == "task_fail":
                    raise TaskFailed(
                        fault.code or "FILE_DOWNLOAD_FAILED",
                        fault.message or "Failed to download the file.",
                    )
                await self._recognize(task)
                task.status = "SUCCEEDED"
        except TaskFailed as exc:
            task.status, task.code, task.message = "FAILED", exc.code, exc.message
        except Exception:
            logger.exception("long-file task %s failed", task.task_id)
            task.status, task.code = "FAILED", "InternalError"
            task.message = "An internal error has occured, please try again later."
        finally:
            task.ended_at = time.time()
            task.data = None
            self._log_task(task)

    def _fault(self, task: Task) -> FaultRule | None:
        if not hasattr(self.engine, "task_fault"):
            return None
        return cast(TaskFaults, self.engine).task_fault(task.file_url)

    async def _recognize(self, task: Task) -> None:
        if not isinstance(self.engine, WordEngine):
            raise TaskFailed("InternalError", f"engine {self.engine.name} gives no word times")
        audio = await load_channels(
            task.file_url, task.data, task.channels, self.fetch_limits, self.config.max_audio_s
        )
        transcripts, seconds = [], 0
        for channel_id, pcm in zip(task.channels, audio.channels, strict=True):
            recognition = RecognitionRequest(
                pcm=pcm,
                sample_rate=16_000,
                request_id=f"{task.task_id}/{channel_id}",
                language=task.language,
                enable_itn=task.enable_itn,
            )
            try:
                timed = await self.engine.recognize_words(recognition)
            except AsrServerError as exc:
                raise TaskFailed(exc.code, exc.message) from exc
            transcript = channel_transcript(
                channel_id, timed.words, language=timed.language, emotion=timed.emotion
            )
            if not task.enable_words:
                for sentence in transcript["sentences"]:
                    del sentence["words"]
            transcripts.append(transcript)
            seconds += billed_seconds(recognition.duration_s)
        result = {
            "file_url": task.file_url,
            "audio_info": {"format": audio.format, "sample_rate": audio.sample_rate},
            "transcripts": transcripts,
        }
        task.result, task.seconds = orjson.dumps(result), seconds

    # -- journal -----------------------------------------------------------------------

    def _log(self, event: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal(event)

    def _log_task(self, task: Task, **extra: Any) -> None:
        self._log(
            {
                "request_id": f"task:{task.task_id}",
                "kind": "task",
                "task_id": task.task_id,
                "file_url": task.file_url,
                "channels": list(task.channels),
                "status": task.status,
                "submitted_at": task.submitted_at,
                "scheduled_at": task.scheduled_at,
                "finished_at": task.ended_at,
                "error_code": task.code,
                "seconds": task.seconds,
                **extra,
            }
        )

    async def close(self) -> None:
        """Cancel the tasks still running (server shutdown)."""
        for runner in list(self._runners):
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)


def _admit(quota: RequestQuota | None, key: str) -> None:
    if quota is None:
        return
    retry_after = quota.admit(key)
    if retry_after is not None:
        raise ApiError(429, RATE_QUOTA, RATE_QUOTA_MESSAGE, retry_after_s=retry_after)
