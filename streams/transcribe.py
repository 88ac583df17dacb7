"""Recognition over Server-Sent Events: DashScope's native protocol and the OpenAI-compatible one.

A backend streams one chunk of audio (a ``data:`` URI) and yields :class:`Delta` pieces as they
arrive, then one :class:`Result`. Protocol and HTTP failures are translated once into the
pipeline's errors (streams/errors.py), by the reply reader in streams/sse_replies.py, which
also knows the three shapes an error reply comes in; retrying is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson
from httpx_sse import SSEError, aconnect_sse

from streams.errors import (
    RecognitionProtocolError,
    RecognitionStreamCut,
    RecognitionTimeout,
    RecognitionUnavailable,
)
from streams.sse_replies import (
    json_object,
    raise_for_reply,
    read_events,
    stream_error,
)

__all__ = [
    "DashScopeBackend",
    "Delta",
    "OpenAIBackend",
    "RecognitionBackend",
    "RecognitionOptions",
    "Result",
    "asr_client",
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

    def stream(
        self, audio_uri: str, options: RecognitionOptions
    ) -> AsyncGenerator[Delta | Result, None]:
        """Yield deltas as they arrive, then exactly one Result; raise PipelineError subclasses."""
        ...


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
    ) -> AsyncGenerator[Delta | Result, None]:
        """Yield deltas as they arrive, then exactly one Result."""
        body = orjson.dumps(self._body(audio_uri, options))
        headers = {**self._headers(), "Content-Type": "application/json"}
        received = False
        try:
            async with aconnect_sse(
                self._client, "POST", self._url, content=body, headers=headers
            ) as source:
                await raise_for_reply(source.response)
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
            # (A wrong content type, its other use, is refused by raise_for_reply first.)
            if received:
                raise RecognitionStreamCut(f"stream broke mid-way: {exc!r}") from exc
            raise RecognitionUnavailable(f"cannot reach the recogniser: {exc!r}") from exc

    def _frames(self, response: httpx.Response) -> AsyncIterator[Delta | Result]:
        raise NotImplementedError


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
        async for sse in read_events(response):
            payload = json_object(sse.data)
            if sse.event == "error":
                raise stream_error(payload, sse.status)
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
        async for sse in read_events(response):
            if sse.data.strip() == "[DONE]":
                if not finished:
                    break
                result.text = "".join(pieces)
                yield result
                return
            payload = json_object(sse.data)
            if sse.event == "error" or "error" in payload or "code" in payload:
                error = payload.get("error")
                raise stream_error(error if isinstance(error, dict) else payload, sse.status)
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
