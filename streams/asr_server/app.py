"""The HTTP side of the local ASR server: auth, quota, audio resolution, decoding, the two APIs.

Engine-neutral on purpose: engine-specific endpoints come in through ``extra_routes`` and
per-request bookkeeping through ``on_finished``. A streaming reply starts (HTTP 200 and
headers) only once the engine yields its first piece, so a refusal before that is a real
4xx/5xx reply (an SSE body for a native SSE request, as the cloud sends; JSON otherwise);
after it, errors travel as SSE error frames whose status is only in the ``:HTTP_STATUS/nnn``
comment (docs/dashscope-protocol.md §3).
Uploaded ``oss://`` audio (uploads.py) is resolved given X-DashScope-OssResourceResolve.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from streams.api_limits import MAX_DATA_URI_BYTES, MAX_REQUEST_S, billed_seconds
from streams.asr_server.audio import decode_pcm, fetch_audio_url
from streams.asr_server.engine import Engine, Piece, RecognitionRequest
from streams.asr_server.errors import (
    BAD_URL,
    INTERNAL_MESSAGE,
    RATE_QUOTA,
    RATE_QUOTA_MESSAGE,
    ApiError,
    DropConnection,
    EngineError,
    MalformedFrame,
)
from streams.asr_server.filetrans import FiletransConfig, FiletransService
from streams.asr_server.framing import MALFORMED_JSON, CompatibleStream, NativeStream
from streams.asr_server.parsing import (
    AsrRequest,
    decode_data_uri,
    parse_compatible_request,
    parse_native_request,
)
from streams.asr_server.quota import RequestQuota
from streams.asr_server.responses import (
    JSON_TYPE,
    SSE_TYPE,
    CuttableStream,
    aclose_shielded,
    cut_body,
    refusal,
)
from streams.asr_server.uploads import UploadStore, upload_routes
from streams.fetch import FetchLimits

__all__ = ["COMPATIBLE_PATH", "NATIVE_PATH", "RequestOutcome", "create_app"]

NATIVE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
COMPATIBLE_PATH = "/compatible-mode/v1/chat/completions"
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
        uploads: UploadStore | None = None,
    ):
        self.engine = engine
        self.uploads = uploads
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
            oss = UploadStore.wants_resolve(request)
            started = await self._start(asr, outcome, oss_resolve=oss)
            encoder = self._encoder(native, started, outcome.request_id)
            if outcome.stream:
                return self._stream(started, encoder, outcome)
            whole = await self._collect(started, outcome.request_id)
        except ApiError as exc:
            outcome.http_status, outcome.error_code = exc.status, exc.code
            outcome.error_message = exc.message
            self._report(outcome)
            return refusal(exc, outcome.request_id, native=native, sse=sse)
        except DropConnection as exc:
            outcome.error_code = exc.code
            self._report(outcome)
            return CuttableStream(cut_body(), headers={"x-request-id": outcome.request_id})
        except MalformedFrame as exc:
            outcome.error_code = exc.code
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
            # absent: cumulative (docs/dashscope-protocol.md §2.3)
            incremental = asr.incremental_output is True
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

    async def _start(
        self, asr: AsrRequest, outcome: RequestOutcome, *, oss_resolve: bool = False
    ) -> _Started:
        """Fetch and decode the audio, then wait for the engine's first piece."""
        outcome.context, outcome.language = asr.context, asr.language
        if asr.audio.startswith("data:"):
            data = await asyncio.to_thread(
                decode_data_uri, asr.audio, max_bytes=self.max_data_uri_bytes
            )
        elif asr.audio.split(":", 1)[0].lower() in ("http", "https"):
            data = await fetch_audio_url(asr.audio, self.fetch_limits)
        elif asr.audio.startswith("oss://") and self.uploads is not None:
            data = self.uploads.resolve(asr.audio, resolve_header=oss_resolve)
        else:  # file:// is the SDK's to upload; it never reaches a server
            raise ApiError(400, "InvalidParameter", BAD_URL)
        pcm = await asyncio.to_thread(decode_pcm, data, self.max_audio_s)
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
            await aclose_shielded(pieces)
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
            raise ApiError(500, "InternalError", INTERNAL_MESSAGE) from exc

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
            await aclose_shielded(started.pieces)
        return Piece(text, language, emotion, reason)

    def _stream(self, started: _Started, encoder: _Encoder, outcome: RequestOutcome) -> Response:
        headers = {
            "x-request-id": outcome.request_id,
            "x-dashscope-finished": "true",
            "cache-control": "no-cache",
        }
        frames = self._frames(started, encoder, outcome)
        return CuttableStream(frames, headers=headers, media_type=SSE_TYPE)

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
        except MalformedFrame as exc:
            # A broken frame and then the end of the stream, as from a faulty proxy.
            outcome.error_code = exc.code
            yield encoder.malformed()
        except DropConnection as exc:
            outcome.error_code = exc.code
            raise
        finally:
            outcome.text = encoder.text
            await aclose_shielded(started.pieces)
            self._report(outcome)

    def _report(self, outcome: RequestOutcome) -> None:
        if self.on_finished is None:
            return
        try:
            self.on_finished(outcome)
        except Exception:
            # Bookkeeping must not break a reply that is already on its way.
            logger.exception("on_finished failed for request %s", outcome.request_id)


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
    filetrans: FiletransConfig | None = None,
    upload_capacity_mb: int = 1024,
    upload_qps: int = 0,
    journal: Callable[[dict[str, Any]], None] | None = None,
) -> Starlette:
    """Build the server around ``engine``; ``api_key=None`` accepts any key.

    ``allow_private_hosts`` lists host names and CIDR networks that audio URLs may reach
    although they are not public (the SSRF guard refuses them otherwise). ``quota_rpm``
    enforces the cloud's per-key request quota (:mod:`streams.asr_server.quota`); None or 0
    leaves requests unlimited. ``filetrans`` configures the long-file API; uploads are kept up
    to ``upload_capacity_mb``, the policy API admits ``upload_qps`` a second per key (0: no
    limit); ``journal`` receives the long-file API's events (uploads, submits, polls, tasks).
    """
    limits = FetchLimits(
        max_bytes=max_data_uri_bytes, timeout_s=30.0, allow_private_hosts=tuple(allow_private_hosts)
    )
    quota = RequestQuota(quota_rpm) if quota_rpm else None
    uploads = UploadStore(upload_capacity_mb * MiB)
    server = _Server(
        engine, api_key, max_audio_s, max_data_uri_bytes, on_finished, limits, quota, uploads
    )
    tasks = FiletransService(
        engine,
        filetrans or FiletransConfig(),
        authorize=server._authorize,
        fetch_limits=limits,
        uploads=uploads,
        journal=journal,
    )
    routes: list[BaseRoute] = [
        *upload_routes(uploads, server._authorize, upload_qps, journal),
        *tasks.routes(),
        Route(NATIVE_PATH, server.native, methods=["POST"]),
        Route(COMPATIBLE_PATH, server.compatible, methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)
