"""Recognition over Server-Sent Events: DashScope's native protocol and the OpenAI-compatible one.

A backend streams one chunk of audio (a ``data:`` URI) and yields :class:`Delta` pieces as they
arrive, then one :class:`Result`. Protocol and HTTP failures are translated here, once, into
the pipeline's errors (streams/errors.py); retrying is the caller's business.

Error replies come in three shapes (dashscope-protocol.md §3): a JSON body under the real
status; an SSE body under the real status (the cloud's answer to an SSE request refused
before its stream starts), whose first ``data:`` line is the error; and, once a stream has
started, an ``event:error`` frame whose status is only in the ``:HTTP_STATUS/nnn`` comment
before it. httpx-sse drops comments, so the stream is decoded here with httpx-sse's own
decoder and the comment kept alongside each event.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson
from httpx_sse import SSEError, aconnect_sse
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from streams.errors import (
    PipelineError,
    RecognitionProtocolError,
    RecognitionRejected,
    RecognitionStreamCut,
    RecognitionThrottled,
    RecognitionTimeout,
    RecognitionUnauthorized,
    RecognitionUnavailable,
)

__all__ = [
    "DashScopeBackend",
    "Delta",
    "OpenAIBackend",
    "RecognitionBackend",
    "RecognitionOptions",
    "Result",
    "asr_client",
    "error_from_reply",
]

NATIVE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
OPENAI_PATH = "/compatible-mode/v1/chat/completions"


@dataclass(frozen=True)
class RecognitionOptions:
    """What the API lets a caller choose for one request."""

    model: str
    language: str | None = None
    enable_itn: bool = False
    context: str = ""


@dataclass(frozen=True)
class Delta:
    """New text since the previous delta of the same request."""

    text: str


@dataclass
class Result:
    """The end of one request: whole text plus what the recogniser reported about it."""

    text: str = ""
    language: str | None = None
    emotion: str | None = None
    billed_seconds: int = 0
    request_id: str | None = None
    """The API's request id: the ``x-request-id`` header, never compatible mode's chatcmpl id."""
    annotations: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    """The recogniser stopped at its output limit (``finish_reason: "length"``)."""


class RecognitionBackend(Protocol):
    """Streams the recognition of one chunk of audio."""

    name: str

    def stream(self, audio_uri: str, options: RecognitionOptions) -> AsyncIterator[Delta | Result]:
        """Yield deltas as they arrive, then exactly one Result; raise PipelineError subclasses."""
        ...


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


def asr_client(
    transport: str, *, connect_timeout_s: float, read_timeout_s: float, concurrency: int
) -> httpx.AsyncClient:
    """The worker's one HTTP client for recognition, over httpx's own pool or aiohttp.

    The aiohttp transport costs about 40% less CPU per streamed request than httpx's pool
    (tests/benchmarks/bench_client.py); httpx-sse works unchanged on top of either.
    """
    # A quiet SSE stream is not a dead one: the read timeout is the longest silence we
    # accept on an open stream, not the 5 s httpx default.
    timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=60.0, pool=None)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency)
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return httpx.AsyncClient(
            transport=AiohttpTransport(limits=limits), timeout=timeout, follow_redirects=False
        )
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)


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


class _SSEBackend:
    """What both protocols share: one POST, an SSE reply, errors mapped once."""

    name = "base"
    path = ""

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_key: str | None) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + self.path
        self._api_key = api_key

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _body(self, audio_uri: str, options: RecognitionOptions) -> dict[str, Any]:
        raise NotImplementedError

    async def stream(
        self, audio_uri: str, options: RecognitionOptions
    ) -> AsyncIterator[Delta | Result]:
        """Yield deltas as they arrive, then exactly one Result."""
        body = orjson.dumps(self._body(audio_uri, options))
        headers = {**self._headers(), "Content-Type": "application/json"}
        received = False
        try:
            async with aconnect_sse(
                self._client, "POST", self._url, content=body, headers=headers
            ) as source:
                await _raise_for_reply(source.response)
                async for item in self._frames(source.response):
                    received = True
                    yield item
        except httpx.TimeoutException as exc:
            if received and isinstance(exc, httpx.ConnectTimeout):
                # httpx-aiohttp names every dropped connection ConnectTimeout; once frames
                # arrived, the connection existed and was cut.
                raise RecognitionStreamCut(f"stream broke mid-way: {exc!r}") from exc
            raise RecognitionTimeout(
                f"recogniser sent nothing for too long ({type(exc).__name__})"
            ) from exc
        except (httpx.TransportError, SSEError) as exc:
            # httpx-sse's SSEError subclasses TransportError; both mean the connection broke.
            # (A wrong content type, its other use, is refused by _raise_for_reply first.)
            if received:
                raise RecognitionStreamCut(f"stream broke mid-way: {exc!r}") from exc
            raise RecognitionUnavailable(f"cannot reach the recogniser: {exc!r}") from exc

    def _frames(self, response: httpx.Response) -> AsyncIterator[Delta | Result]:
        raise NotImplementedError


async def _raise_for_reply(response: httpx.Response) -> None:
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
class _Event:
    """One SSE event and the status of the ``:HTTP_STATUS/nnn`` comment before it, if any."""

    event: str
    data: str
    status: int | None


class _EventReader:
    """httpx-sse's decoder, plus the ``:HTTP_STATUS/nnn`` comments it drops."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._status: int | None = None

    def feed(self, line: str) -> _Event | None:
        """Take one line; return the event it completes, if any."""
        if found := _STATUS_COMMENT.fullmatch(line):
            self._status = int(found.group(1))
        sse = self._decoder.decode(line)
        if sse is None:
            return None
        status, self._status = self._status, None
        # An empty data buffer dispatches nothing (the SSE spec); httpx-sse's decoder would
        # send an empty event for each extra blank line once an ``id:`` was seen.
        return _Event(sse.event, sse.data, status) if sse.data else None


async def _events(response: httpx.Response) -> AsyncIterator[_Event]:
    """Decode the response's event stream, splitting lines as the SSE spec does."""
    lines, reader = SSELineDecoder(), _EventReader()
    async for text in response.aiter_text():
        for line in lines.decode(text):
            if (event := reader.feed(line)) is not None:
                yield event
    for line in lines.flush():
        if (event := reader.feed(line)) is not None:
            yield event


def _stream_error(error: dict[str, Any], status: int | None) -> PipelineError:
    """Map an error event; its status is the comment's, when the recogniser sent one."""
    code = error.get("code")
    if status is None:
        # Compatible mode's ``data: {"error": ...}`` has no status: the code decides.
        status = 429 if str(code or "").startswith("Throttling") else 400
    return error_from_reply(status, str(code) if code else None, str(error.get("message", "")))


def _json(data: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecognitionProtocolError(f"SSE data is not JSON: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise RecognitionProtocolError(f"SSE data is not an object: {data[:200]!r}")
    return value


class DashScopeBackend(_SSEBackend):
    """DashScope's native multimodal-generation endpoint with ``X-DashScope-SSE: enable``."""

    name = "dashscope"
    path = NATIVE_PATH

    def _headers(self) -> dict[str, str]:
        return {**super()._headers(), "X-DashScope-SSE": "enable", "X-Accel-Buffering": "no"}

    def _body(self, audio_uri: str, options: RecognitionOptions) -> dict[str, Any]:
        asr_options: dict[str, Any] = {"enable_itn": options.enable_itn}
        if options.language:
            asr_options["language"] = options.language
        return {
            "model": options.model,
            "input": {
                "messages": [
                    {"role": "system", "content": [{"text": options.context}]},
                    {"role": "user", "content": [{"audio": audio_uri}]},
                ]
            },
            "parameters": {
                "asr_options": asr_options,
                "incremental_output": True,
                "result_format": "message",
            },
        }

    async def _frames(self, response: httpx.Response) -> AsyncIterator[Delta | Result]:
        result = Result()
        pieces: list[str] = []
        async for sse in _events(response):
            payload = _json(sse.data)
            if sse.event == "error":
                raise _stream_error(payload, sse.status)
            try:
                choice = payload["output"]["choices"][0]
                message = choice["message"]
            except (KeyError, IndexError, TypeError) as exc:
                raise RecognitionProtocolError(
                    f"result frame without output.choices[0].message: {sse.data[:200]!r}"
                ) from exc
            text = "".join(
                item.get("text", "")
                for item in message.get("content") or []
                if isinstance(item, dict)
            )
            if text:
                pieces.append(text)
                yield Delta(text)
            _note_frame(result, payload, message.get("annotations") or [])
            if choice.get("finish_reason") in ("stop", "length"):
                result.text = "".join(pieces)
                result.truncated = choice["finish_reason"] == "length"
                yield result
                return
        raise RecognitionStreamCut("stream ended before a frame with finish_reason 'stop'")


def _note_frame(result: Result, payload: dict[str, Any], annotations: list[Any]) -> None:
    result.request_id = payload.get("request_id") or result.request_id
    usage = payload.get("usage") or {}
    if isinstance(usage, dict) and isinstance(usage.get("seconds"), int | float):
        result.billed_seconds = math.ceil(usage["seconds"])
    for note in annotations:
        if isinstance(note, dict) and note.get("type") == "audio_info":
            result.annotations = [note]
            result.language = note.get("language") or result.language
            result.emotion = note.get("emotion") or result.emotion


class OpenAIBackend(_SSEBackend):
    """OpenAI-compatible chat completions, as DashScope's compatible mode and vLLM speak it."""

    name = "openai"
    path = OPENAI_PATH

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_key: str | None) -> None:
        super().__init__(client, base_url, api_key)
        # A base URL ending in /v1 is an OpenAI-style one (vLLM: http://host:8000/v1) and
        # takes the plain route; a bare host gets DashScope's compatible-mode path.
        if base_url.rstrip("/").endswith("/v1"):
            self._url = base_url.rstrip("/") + "/chat/completions"

    def _body(self, audio_uri: str, options: RecognitionOptions) -> dict[str, Any]:
        asr_options: dict[str, Any] = {"enable_itn": options.enable_itn}
        if options.language:
            asr_options["language"] = options.language
        messages: list[dict[str, Any]] = []
        if options.context:
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": options.context}]}
            )
        messages.append(
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": audio_uri}}],
            }
        )
        return {
            "model": options.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "asr_options": asr_options,
        }

    async def _frames(self, response: httpx.Response) -> AsyncIterator[Delta | Result]:
        # The chunks' ``id`` is a chatcmpl id that the API's logs and support do not know.
        result = Result(request_id=response.headers.get("x-request-id"))
        pieces: list[str] = []
        finished = False
        async for sse in _events(response):
            if sse.data.strip() == "[DONE]":
                if not finished:
                    break
                result.text = "".join(pieces)
                yield result
                return
            payload = _json(sse.data)
            if sse.event == "error" or "error" in payload or "code" in payload:
                error = payload.get("error")
                raise _stream_error(error if isinstance(error, dict) else payload, sse.status)
            result.request_id = result.request_id or payload.get("request_id")
            usage = payload.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("seconds"), int | float):
                result.billed_seconds = math.ceil(usage["seconds"])
            for choice in payload.get("choices") or []:
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                if text:
                    pieces.append(text)
                    yield Delta(text)
                _note_frame(result, {}, delta.get("annotations") or [])
                if choice.get("finish_reason") in ("stop", "length"):
                    finished = True
                    result.truncated = choice["finish_reason"] == "length"
        raise RecognitionStreamCut("stream ended before 'data: [DONE]'")
