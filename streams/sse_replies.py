"""Reading the recogniser's replies: SSE events with their status comments, and its errors.

Error replies come in three shapes (docs/dashscope-protocol.md §3): a JSON body under the real
status; an SSE body under the real status (the cloud's answer to an SSE request refused
before its stream starts), whose first ``data:`` line is the error; and, once a stream has
started, an ``event:error`` frame whose status is only in the ``:HTTP_STATUS/nnn`` comment
before it. httpx-sse drops comments, so the stream is decoded here with httpx-sse's own
decoder and the comment kept alongside each event. Each shape maps, once, to the pipeline's
errors (streams/errors.py); the backends that use this are in streams/transcribe.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from streams.errors import (
    PipelineError,
    RecognitionProtocolError,
    RecognitionRejected,
    RecognitionThrottled,
    RecognitionTimeout,
    RecognitionUnauthorized,
    RecognitionUnavailable,
)

__all__ = [
    "Event",
    "EventReader",
    "error_from_reply",
    "json_object",
    "raise_for_reply",
    "read_events",
    "stream_error",
]


# DashScope error codes that do not follow from the HTTP status alone (a stream error frame
# may come without its status, and Arrearage is a 400 that no retry or edit can fix).
_CODE_ERRORS: dict[str, type[PipelineError]] = {
    "InvalidApiKey": RecognitionUnauthorized,
    "AccessDenied": RecognitionUnauthorized,
    "Arrearage": RecognitionUnauthorized,
    "InvalidParameter": RecognitionRejected,
    "DataInspectionFailed": RecognitionRejected,
    "ModelNotFound": RecognitionRejected,
    "InternalError": RecognitionUnavailable,
    "SystemError": RecognitionUnavailable,
    "ModelServingError": RecognitionUnavailable,  # "resources saturated, try again later"
    "ModelUnavailable": RecognitionUnavailable,
    "RequestTimeOut": RecognitionTimeout,
    "limit_requests": RecognitionThrottled,  # compatible mode's rate limit
}
# The status comment DashScope puts before each SSE event: ``:HTTP_STATUS/429``.
_STATUS_COMMENT = re.compile(r":HTTP_STATUS/(\d{3})\s*")


def error_from_reply(
    status: int, code: str | None, message: str, retry_after: str | None = None
) -> PipelineError:
    """Map an HTTP status and API error code to the pipeline error it means."""
    detail = f"recogniser answered {status} {code or ''}: {message}".replace("  ", " ")
    if status == 429 or (code or "").startswith("Throttling"):
        return RecognitionThrottled(detail, retry_after_s=_seconds(retry_after))
    if code:
        for prefix, cls in _CODE_ERRORS.items():
            if code == prefix or code.startswith(prefix + "."):
                return cls(detail)
    if status in (401, 403):
        return RecognitionUnauthorized(detail)
    if status >= 500 or status in (408, 409):
        return RecognitionUnavailable(detail)
    if 400 <= status < 500:
        return RecognitionRejected(detail)
    return RecognitionProtocolError(detail)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP-date Retry-After: fall back to our own backoff


async def raise_for_reply(response: httpx.Response) -> None:
    """Let a 200 event stream through; map any other reply to its pipeline error."""
    content_type = response.headers.get("content-type", "")
    sse = "text/event-stream" in content_type
    if response.status_code == 200 and sse:
        return
    raw = await response.aread()
    if response.status_code == 200:
        raise RecognitionProtocolError(
            f"expected an event stream, got {content_type!r}: {raw[:200]!r}"
        )
    error = _error_object(_first_sse_data(raw) if sse else raw)
    code, message = error.get("code"), error.get("message")
    raise error_from_reply(
        response.status_code,
        str(code) if code else None,
        str(message or raw[:200].decode(errors="replace")),
        response.headers.get("retry-after"),
    )


def _first_sse_data(raw: bytes) -> bytes:
    """The first ``data:`` line of an SSE-bodied error reply: the error, as the SDK reads it."""
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            return line[len(b"data:") :].strip()
    return b""


def _error_object(raw: bytes) -> dict[str, Any]:
    """The error in a reply body: DashScope's flat ``{code, message}`` or OpenAI's ``{error}``."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(payload, dict):
        return {}
    error = payload.get("error")
    return error if isinstance(error, dict) else payload


@dataclass(frozen=True)
class Event:
    """One SSE event and the status of the ``:HTTP_STATUS/nnn`` comment before it, if any."""

    event: str
    data: str
    status: int | None


class EventReader:
    """httpx-sse's decoder, plus the ``:HTTP_STATUS/nnn`` comments it drops."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._status: int | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line; return the event it completes, if any."""
        if found := _STATUS_COMMENT.fullmatch(line):
            self._status = int(found.group(1))
        sse = self._decoder.decode(line)
        if sse is None:
            return None
        status, self._status = self._status, None
        # An empty data buffer dispatches nothing (the SSE spec); httpx-sse's decoder would
        # send an empty event for each extra blank line once an ``id:`` was seen.
        return Event(sse.event, sse.data, status) if sse.data else None


async def read_events(response: httpx.Response) -> AsyncIterator[Event]:
    """Decode the response's event stream, splitting lines as the SSE spec does."""
    lines, reader = SSELineDecoder(), EventReader()
    async for text in response.aiter_text():
        for line in lines.decode(text):
            if (event := reader.feed(line)) is not None:
                yield event
    for line in lines.flush():
        if (event := reader.feed(line)) is not None:
            yield event


def stream_error(error: dict[str, Any], status: int | None) -> PipelineError:
    """Map an error event; its status is the comment's, when the recogniser sent one."""
    code = error.get("code")
    if status is None:
        # Compatible mode's ``data: {"error": ...}`` has no status: the code decides.
        status = 429 if str(code or "").startswith("Throttling") else 400
    return error_from_reply(status, str(code) if code else None, str(error.get("message", "")))


def json_object(data: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecognitionProtocolError(f"SSE data is not JSON: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise RecognitionProtocolError(f"SSE data is not an object: {data[:200]!r}")
    return value
