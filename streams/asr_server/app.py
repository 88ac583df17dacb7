"""The HTTP side of the local ASR server: auth, quota, audio resolution, decoding, the two APIs.

Engine-neutral on purpose: engine-specific endpoints come in through ``extra_routes`` and
per-request bookkeeping through ``on_finished``. A streaming reply starts (HTTP 200 and
headers) only once the engine yields its first piece, so a refusal before that is a real
4xx/5xx reply (an SSE body for a native SSE request, as the cloud sends; JSON otherwise);
after it, errors travel as SSE error frames whose status is only in the ``:HTTP_STATUS/nnn``
comment (dashscope-protocol.md §3).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Send

from streams.api_limits import MAX_DATA_URI_BYTES, MAX_REQUEST_S
from streams.asr_server.engine import (
    DropConnection,
    Engine,
    EngineError,
    MalformedFrame,
    Piece,
    RecognitionRequest,
)
from streams.asr_server.protocol import (
    BAD_URL,
    MALFORMED_JSON,
    RATE_QUOTA,
    RATE_QUOTA_MESSAGE,
    ApiError,
    AsrRequest,
    CompatibleStream,
    NativeStream,
    billed_seconds,
    compatible_error_body,
    decode_data_uri,
    native_error_body,
    parse_compatible_request,
    parse_native_request,
    sse_error_frame,
)
from streams.asr_server.quota import RequestQuota
from streams.decode import decode_sync
from streams.errors import AudioTooLarge, AudioTooLong, PipelineError, UndecodableAudio
from streams.fetch import FetchLimits, fetch, fetch_client
from streams.netguard import redact_url

__all__ = [
    "COMPATIBLE_PATH",
    "NATIVE_PATH",
    "RequestOutcome",
    "create_app",
    "fetch_audio_url",
]

NATIVE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
COMPATIBLE_PATH = "/compatible-mode/v1/chat/completions"
SSE_TYPE = "text/event-stream;charset=UTF-8"
JSON_TYPE = "application/json"
MiB = 1024 * 1024
logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestOutcome:
    """What became of one request, handed to ``on_finished`` when the reply is over."""

    request_id: str
    endpoint: str
    """``native`` or ``compatible``."""
    received_at: float | None = None
    """Unix time the request arrived, refused or not (quota tests count by it)."""
    stream: bool = False
    http_status: int = 200
    error_code: str | None = None
    """Code of the error reply or error frame, if any."""
    error_message: str | None = None
    context: str | None = None
    language: str | None = None
    """Language the client asked for (None: detect, or the request never parsed)."""
    audio_s: float | None = None
    text: str = ""
    """Text actually sent to the client."""
    finish_reason: str | None = None
    """``stop`` or ``length`` once the final frame (or body) went out."""
    finished: bool = False
    """Whether the final frame (or the whole JSON body) went out."""


async def fetch_audio_url(url: str, limits: FetchLimits) -> bytes:
    """Download the audio an http(s) URL names through the worker's SSRF guard and caps.

    Every hop of a redirect chain is checked, and the connection goes only to the address
    that was checked (:mod:`streams.netguard`); private hosts need ``allow_private_hosts``.
    """
    try:
        async with fetch_client(limits) as client:
            fetched = await fetch(url, limits, client)
        with fetched:
            return await asyncio.to_thread(fetched.path.read_bytes)
    except AudioTooLarge as exc:
        raise ApiError(400, "InvalidParameter", "Multimodal file size is too large") from exc
    except PipelineError as exc:
        # The cloud says no more than this; the reason (say, a refused host) is logged.
        logger.info("audio URL %s not fetched: %s", redact_url(url), exc)
        message = "Failed to download multimodal content."
        raise ApiError(400, "InvalidParameter", message) from exc


def _decode_pcm(data: bytes, max_audio_s: float) -> np.ndarray:
    """Decode audio bytes to 16 kHz mono int16, translating decoder errors to API errors."""
    try:
        return decode_sync(io.BytesIO(data), layout="mix", max_duration_s=max_audio_s).channels[0]
    except AudioTooLong as exc:
        message = (
            f"The audio is too long: at most {max_audio_s:g} s of audio is accepted per "
            f"request ({exc.message})."
        )
        raise ApiError(400, "InvalidParameter", message) from exc
    except UndecodableAudio as exc:
        if exc.code == "empty_audio":
            raise ApiError(400, "InvalidParameter", "The audio is empty") from exc
        message = "The audio format is illegal and cannot be opened."
        raise ApiError(400, "InvalidParameter", message) from exc


class _Stream(StreamingResponse):
    """A streaming response that a :class:`DropConnection` leaves unfinished on purpose."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except DropConnection:
            # Returning without the final body message makes uvicorn close the socket
            # mid-body: the client sees a truncated chunked stream, like a network cut.
            logger.warning(
                "request %s: connection dropped on the engine's request",
                self.headers.get("x-request-id"),
            )
        finally:
            # Starlette leaves the generator suspended when the client goes away; close it
            # now so the engine stops and the outcome is reported at once, not at GC time.
            await _close(self.body_iterator)


async def _no_body() -> AsyncIterator[bytes]:
    raise DropConnection
    yield b""  # pragma: no cover  # makes this an async generator


_Encoder = NativeStream | CompatibleStream


@dataclass
class _Started:
    """A recognition whose first piece is in hand (None: the engine produced nothing)."""

    asr: AsrRequest
    pieces: AsyncIterator[Piece]
    first: Piece | None
    seconds: int


class _Server:
    """Request handlers sharing the engine and the limits."""

    def __init__(
        self,
        engine: Engine,
        api_key: str | None,
        max_audio_s: float,
        max_data_uri_bytes: int,
        on_finished: Callable[[RequestOutcome], None] | None,
        fetch_limits: FetchLimits,
        quota: RequestQuota | None = None,
    ):
        self.engine = engine
        self.quota = quota
        self.fetch_limits = fetch_limits
        self.api_key = api_key
        self.max_audio_s = max_audio_s
        self.max_data_uri_bytes = max_data_uri_bytes
        self.on_finished = on_finished

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "engine": self.engine.name})

    async def native(self, request: Request) -> Response:
        """Serve the native API: SSE when ``X-DashScope-SSE: enable``, else one JSON body."""
        return await self._serve(request, "native")

    async def compatible(self, request: Request) -> Response:
        """Serve the OpenAI-compatible chat-completions API."""
        return await self._serve(request, "compatible")

    async def _serve(self, request: Request, endpoint: str) -> Response:
        native = endpoint == "native"
        outcome = RequestOutcome(str(uuid.uuid4()), endpoint, received_at=time.time())
        sse = native and request.headers.get("x-dashscope-sse", "").lower() == "enable"
        outcome.stream = sse
        try:
            self._admit(self._authorize(request))
            if native and request.headers.get("x-dashscope-async", "").lower() == "enable":
                message = "current user api does not support asynchronous calls."
                raise ApiError(403, "AccessDenied", message)
            body = await self._body(request)
            asr = parse_native_request(body) if native else parse_compatible_request(body)
            outcome.stream = sse if native else asr.stream
            started = await self._start(asr, outcome)
            encoder = self._encoder(native, started, outcome.request_id)
            if outcome.stream:
                return self._stream(started, encoder, outcome)
            whole = await self._collect(started, outcome.request_id)
        except ApiError as exc:
            outcome.http_status, outcome.error_code = exc.status, exc.code
            outcome.error_message = exc.message
            self._report(outcome)
            return _refusal(exc, outcome.request_id, native=native, sse=sse)
        except DropConnection:
            outcome.error_code = "ConnectionDropped"
            self._report(outcome)
            return _Stream(_no_body(), headers={"x-request-id": outcome.request_id})
        except MalformedFrame:
            outcome.error_code = "MalformedFrame"
            self._report(outcome)
            headers = {"x-request-id": outcome.request_id}
            return Response(MALFORMED_JSON, 200, headers=headers, media_type=JSON_TYPE)
        if whole.finish_reason:
            encoder.finish_reason = whole.finish_reason
        body = encoder.body(whole.text, whole.language, whole.emotion)
        outcome.text, outcome.finished = whole.text, True
        outcome.finish_reason = encoder.finish_reason
        self._report(outcome)
        headers = {"x-request-id": outcome.request_id, "x-dashscope-finished": "true"}
        return Response(body, 200, headers=headers, media_type=JSON_TYPE)

    @staticmethod
    def _encoder(native: bool, started: _Started, request_id: str) -> _Encoder:
        asr, seconds = started.asr, started.seconds
        if native:
            incremental = asr.incremental_output is True  # absent: cumulative (§2.3)
            return NativeStream(
                request_id=request_id,
                seconds=seconds,
                incremental=incremental,
                language=asr.language,
            )
        return CompatibleStream(
            request_id=request_id,
            seconds=seconds,
            model=asr.model,
            created=int(time.time()),
            include_usage=asr.include_usage,
            language=asr.language,
        )

    def _authorize(self, request: Request) -> str:
        """Check the bearer key and return it (the quota counts per key)."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if self.api_key is None:
            return key
        # compare_digest: the time taken must not tell how much of a guessed key was right.
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            key.encode(), self.api_key.encode()
        ):
            raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")
        return key

    def _admit(self, key: str) -> None:
        """Count the request against its key's quota, or refuse it as the cloud does."""
        if self.quota is None:
            return
        retry_after = self.quota.admit(key)
        if retry_after is not None:
            raise ApiError(429, RATE_QUOTA, RATE_QUOTA_MESSAGE, retry_after_s=retry_after)

    async def _body(self, request: Request) -> bytes:
        # Room for one maximal data URI plus the JSON around it; beyond that, stop reading.
        cap = 2 * self.max_data_uri_bytes + MiB
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise ApiError(400, "InvalidParameter", "Multimodal file size is too large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _start(self, asr: AsrRequest, outcome: RequestOutcome) -> _Started:
        """Fetch and decode the audio, then wait for the engine's first piece."""
        outcome.context, outcome.language = asr.context, asr.language
        if asr.audio.startswith("data:"):
            data = await asyncio.to_thread(
                decode_data_uri, asr.audio, max_bytes=self.max_data_uri_bytes
            )
        elif asr.audio.split(":", 1)[0].lower() in ("http", "https"):
            data = await fetch_audio_url(asr.audio, self.fetch_limits)
        else:  # file:// and oss:// need the SDK's upload service, which is not emulated
            raise ApiError(400, "InvalidParameter", BAD_URL)
        pcm = await asyncio.to_thread(_decode_pcm, data, self.max_audio_s)
        recognition = RecognitionRequest(
            pcm=pcm,
            sample_rate=16_000,
            request_id=outcome.request_id,
            language=asr.language,
            context=asr.context,
            enable_itn=asr.enable_itn,
        )
        outcome.audio_s = recognition.duration_s
        pieces = self.engine.recognize(recognition)
        try:
            first = await self._next(pieces, outcome.request_id)
        except BaseException:
            await _close(pieces)
            raise
        return _Started(asr, pieces, first, billed_seconds(recognition.duration_s))

    async def _next(self, pieces: AsyncIterator[Piece], request_id: str) -> Piece | None:
        """Await the engine's next piece, turning its failures into the API's errors."""
        try:
            return await anext(pieces, None)
        except EngineError as exc:
            retry = exc.retry_after_s
            if exc.status == 429 and retry is None:
                retry = 1.0  # clients back off better with a hint than without
            raise ApiError(exc.status, exc.code, exc.message, retry_after_s=retry) from exc
        except (DropConnection, MalformedFrame):
            raise
        except Exception as exc:
            logger.exception("engine %s failed on request %s", self.engine.name, request_id)
            raise ApiError(500, "InternalError", _INTERNAL) from exc

    async def _collect(self, started: _Started, request_id: str) -> Piece:
        """Gather the whole transcript for a non-streaming reply, as one piece."""
        text, language, emotion, reason = "", started.asr.language, None, None
        piece = started.first
        try:
            while piece is not None:
                text += piece.text
                language = piece.language or language
                emotion = piece.emotion or emotion
                reason = piece.finish_reason or reason
                piece = await self._next(started.pieces, request_id)
        finally:
            await _close(started.pieces)
        return Piece(text, language, emotion, reason)

    def _stream(self, started: _Started, encoder: _Encoder, outcome: RequestOutcome) -> Response:
        headers = {
            "x-request-id": outcome.request_id,
            "x-dashscope-finished": "true",
            "cache-control": "no-cache",
        }
        frames = self._frames(started, encoder, outcome)
        return _Stream(frames, headers=headers, media_type=SSE_TYPE)

    async def _frames(
        self, started: _Started, encoder: _Encoder, outcome: RequestOutcome
    ) -> AsyncIterator[bytes]:
        try:
            if opening := encoder.start():
                yield opening
            piece = started.first
            while piece is not None:
                # Empty pieces only commit the response (an engine may need HTTP 200 first).
                if piece.text:
                    yield encoder.piece(piece.text, piece.language, piece.emotion)
                if piece.finish_reason:
                    encoder.finish_reason = piece.finish_reason
                piece = await self._next(started.pieces, outcome.request_id)
            yield encoder.finish()
            outcome.finished, outcome.finish_reason = True, encoder.finish_reason
        except ApiError as exc:
            outcome.error_code, outcome.error_message = exc.code, exc.message
            yield encoder.error(exc.status, exc.code, exc.message)
        except MalformedFrame:
            # A broken frame and then the end of the stream, as from a faulty proxy.
            outcome.error_code = "MalformedFrame"
            yield encoder.malformed()
        except DropConnection:
            outcome.error_code = "ConnectionDropped"
            raise
        finally:
            outcome.text = encoder.text
            await _close(started.pieces)
            self._report(outcome)

    def _report(self, outcome: RequestOutcome) -> None:
        if self.on_finished is None:
            return
        try:
            self.on_finished(outcome)
        except Exception:
            # Bookkeeping must not break a reply that is already on its way.
            logger.exception("on_finished failed for request %s", outcome.request_id)


_INTERNAL = "An internal error has occured, please try again later or contact service support."


def _refusal(exc: ApiError, request_id: str, *, native: bool, sse: bool) -> Response:
    """The reply to a request refused before its stream started.

    A native request that asked for SSE gets the error as an SSE body under the error's
    own status, as the cloud sends it (the SDK reads its first ``data:`` line); anything
    else gets the JSON body of its API.
    """
    headers = {"x-request-id": request_id}
    if exc.retry_after_s is not None:
        headers["retry-after"] = str(math.ceil(exc.retry_after_s))
    if sse:
        body = sse_error_frame(1, exc.status, exc.code, exc.message, request_id)
        return Response(body, exc.status, headers=headers, media_type=SSE_TYPE)
    if native:
        body = native_error_body(exc.code, exc.message, request_id)
    else:
        body = compatible_error_body(exc.status, exc.code, exc.message, request_id)
    return Response(body, exc.status, headers=headers, media_type=JSON_TYPE)


async def _close(pieces: AsyncIterator[Any]) -> None:
    """Close an engine's iterator even while the request is being cancelled."""
    aclose = getattr(pieces, "aclose", None)
    if aclose is not None:
        # Shielded: a client disconnect cancels the request, and the engine must still stop.
        with anyio.CancelScope(shield=True):
            await aclose()


def create_app(
    engine: Engine,
    *,
    api_key: str | None,
    max_audio_s: float = MAX_REQUEST_S,
    max_data_uri_bytes: int = MAX_DATA_URI_BYTES,
    extra_routes: Sequence[BaseRoute] = (),
    on_finished: Callable[[RequestOutcome], None] | None = None,
    allow_private_hosts: Sequence[str] = (),
    quota_rpm: int | None = None,
) -> Starlette:
    """Build the server around ``engine``; ``api_key=None`` accepts any key.

    ``allow_private_hosts`` lists host names and CIDR networks that audio URLs may reach
    although they are not public (the SSRF guard refuses them otherwise). ``quota_rpm``
    enforces the cloud's per-key request quota (:mod:`streams.asr_server.quota`); None or 0
    leaves requests unlimited.
    """
    limits = FetchLimits(
        max_bytes=max_data_uri_bytes, timeout_s=30.0, allow_private_hosts=tuple(allow_private_hosts)
    )
    quota = RequestQuota(quota_rpm) if quota_rpm else None
    server = _Server(engine, api_key, max_audio_s, max_data_uri_bytes, on_finished, limits, quota)
    routes: list[BaseRoute] = [
        Route(NATIVE_PATH, server.native, methods=["POST"]),
        Route(COMPATIBLE_PATH, server.compatible, methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)
