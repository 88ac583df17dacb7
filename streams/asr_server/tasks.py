"""Long-file tasks: the submit body they come from, their state, and how a poll shows them.

Parsing follows the vendor's submit body (docs/dashscope-protocol.md, long-file API); every
refusal is an :class:`~streams.asr_server.errors.ApiError` with the cloud's status and code.
Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request

from streams.asr_server.errors import BAD_URL, ApiError
from streams.asr_server.parsing import LANGUAGES
from streams.asr_server.uploads import UploadStore

__all__ = ["MODEL_PREFIX", "Task", "describe", "parse_submit", "stamp"]

MODEL_PREFIX = "qwen3-asr-flash-filetrans"


def stamp(unix: float | None) -> str | None:
    """A Unix time as the task API writes it: ``YYYY-MM-DD HH:MM:SS.mmm``, local time."""
    if unix is None:
        return None
    whole = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))
    return f"{whole}.{int(unix * 1000) % 1000:03d}"


@dataclass
class Task:
    """One long-file task, its options and how far it got."""

    task_id: str
    key: str
    file_url: str
    data: bytes | None
    """The resolved ``oss://`` object, or None to fetch ``file_url``."""
    channels: tuple[int, ...]
    language: str | None
    enable_itn: bool
    enable_words: bool
    base_url: str
    submitted_at: float = field(default_factory=time.time)
    scheduled_at: float | None = None
    ended_at: float | None = None
    status: str = "PENDING"
    code: str | None = None
    message: str | None = None
    seconds: int | None = None
    result: bytes | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    released: asyncio.Event = field(default_factory=asyncio.Event)
    held: bool = False


def parse_submit(body: bytes, key: str, request: Request, uploads: UploadStore | None) -> Task:
    """Validate a submit's body into a PENDING task; raise :class:`ApiError` as the cloud."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad_body() from exc
    if not isinstance(data, dict):
        raise _bad_body()
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad_param("model", model)
    if not model.startswith(MODEL_PREFIX):
        raise ApiError(400, "InvalidParameter", "Model not exist.")
    payload = data.get("input")
    url = payload.get("file_url") if isinstance(payload, dict) else None
    if not isinstance(url, str) or not url:
        raise _bad_param("input.file_url", url)
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad_param("parameters", parameters)
    channels = parameters.get("channel_id", [0])
    if (
        not isinstance(channels, list)
        or not channels
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels)
    ):
        raise _bad_param("channel_id", channels)
    language = parameters.get("language")
    if language is not None and language not in LANGUAGES:
        raise _bad_param("language", language)
    flags = {name: parameters.get(name, False) for name in ("enable_itn", "enable_words")}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise _bad_param(name, value)
    scheme = url.split(":", 1)[0].lower()
    resolved = None
    if scheme == "oss":
        if uploads is None:
            raise ApiError(400, "InvalidParameter", BAD_URL)
        resolved = uploads.resolve(url, resolve_header=UploadStore.wants_resolve(request))
    elif scheme not in ("http", "https"):
        raise ApiError(400, "InvalidParameter", BAD_URL)
    return Task(
        task_id=str(uuid.uuid4()),
        key=key,
        file_url=url,
        data=resolved,
        channels=tuple(dict.fromkeys(channels)),
        language=language,
        enable_itn=flags["enable_itn"],
        enable_words=flags["enable_words"],
        base_url=str(request.base_url).rstrip("/"),
    )


def describe(task_id: str, task: Task | None, request_id: str, results_path: str) -> dict[str, Any]:
    """The body of ``GET /api/v1/tasks/{task_id}`` for ``task`` (None: UNKNOWN)."""
    if task is None:
        return {
            "request_id": request_id,
            "output": {"task_id": task_id, "task_status": "UNKNOWN"},
        }
    output: dict[str, Any] = {
        "task_id": task.task_id,
        "task_status": task.status,
        "submit_time": stamp(task.submitted_at),
    }
    if task.scheduled_at is not None:
        output["scheduled_time"] = stamp(task.scheduled_at)
    if task.ended_at is not None:
        output["end_time"] = stamp(task.ended_at)
    body: dict[str, Any] = {"request_id": request_id, "output": output}
    if task.status == "RUNNING":
        output["task_metrics"] = {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 0}
    elif task.status == "SUCCEEDED":
        path = results_path.format(task_id=task.task_id, token=task.token)
        output["result"] = {"transcription_url": task.base_url + path}
        body["usage"] = {"seconds": task.seconds}
    elif task.status == "FAILED":
        output["code"], output["message"] = task.code, task.message
    return body


def _bad_body() -> ApiError:
    return ApiError(
        400, "InvalidParameter", "Required body invalid, please check the request body format."
    )


def _bad_param(name: str, value: object) -> ApiError:
    return ApiError(
        400,
        "InvalidParameter",
        f"Required parameter({name}) missing or invalid, please check the request parameters."
        f" (got {value!r})",
    )
