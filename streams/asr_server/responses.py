"""The HTTP replies the server builds: refusals, and streams that can break on purpose.

A native request that asked for SSE is refused with an SSE body under the error's own status,
as the cloud does (docs/dashscope-protocol.md §3.2); anything else gets its API's JSON body.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import anyio
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from streams.asr_server.errors import ApiError, DropConnection
from streams.asr_server.framing import compatible_error_body, native_error_body, sse_error_frame

__all__ = ["JSON_TYPE", "SSE_TYPE", "CuttableStream", "aclose_shielded", "cut_body", "refusal"]

SSE_TYPE = "text/event-stream;charset=UTF-8"
JSON_TYPE = "application/json"
logger = logging.getLogger(__name__)


class CuttableStream(StreamingResponse):
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
            await aclose_shielded(self.body_iterator)


async def cut_body() -> AsyncIterator[bytes]:
    """A body that breaks off before its first byte (for a :class:`CuttableStream`)."""
    raise DropConnection
    yield b""  # pragma: no cover  # makes this an async generator


def refusal(exc: ApiError, request_id: str, *, native: bool, sse: bool) -> Response:
    """The reply to a request refused before its stream started."""
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


async def aclose_shielded(pieces: AsyncIterable[Any]) -> None:
    """Close an async iterator (an engine's pieces) even while the request is being cancelled.

    Typed as an iterable because that is what Starlette declares a body to be; one without
    ``aclose`` is left alone.
    """
    aclose = getattr(pieces, "aclose", None)
    if aclose is not None:
        # Shielded: a client disconnect cancels the request, and the engine must still stop.
        with anyio.CancelScope(shield=True):
            await aclose()
