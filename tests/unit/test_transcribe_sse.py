"""How the client decodes DashScope's event stream: the status comment httpx-sse would drop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from streams.errors import PipelineError, RecognitionRejected, RecognitionUnavailable
from streams.transcribe import DashScopeBackend, Delta, RecognitionOptions, Result

RESULT = (
    b'id:1\r\nevent:result\r\n:HTTP_STATUS/200\r\ndata:{"output":{"choices":[{"message":'
    b'{"role":"assistant","content":[{"text":"Hello"}]},"finish_reason":"null"}]},'
    b'"request_id":"r-1"}\r\n\r\n'
)


class Chunks(httpx.AsyncByteStream):
    """A body that arrives in the given pieces, as a network might cut it."""

    def __init__(self, body: bytes, sizes: list[int]) -> None:
        self.pieces = []
        for size in sizes:
            self.pieces.append(body[:size])
            body = body[size:]
        self.pieces.append(body)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


async def _deltas_then_error(body: bytes, sizes: list[int]) -> tuple[list[str], PipelineError]:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream;charset=UTF-8"}
        return httpx.Response(200, headers=headers, stream=Chunks(body, sizes))

    deltas: list[str] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = DashScopeBackend(client, "http://asr", "sk-test")
        stream = backend.stream("data:audio/wav;base64,AA", RecognitionOptions(model="m"))
        with pytest.raises(PipelineError) as caught:
            await _collect(stream, deltas)
    return deltas, caught.value


async def _collect(stream: AsyncIterator[Delta | Result], deltas: list[str]) -> None:
    async with contextlib.aclosing(stream) as items:
        async for item in items:
            assert isinstance(item, Delta)
            deltas.append(item.text)


async def test_a_status_comment_split_across_reads_still_counts() -> None:
    """`:HTTP_STATUS/500` cut mid-line and CRLF line ends: the error is still a 500."""
    error = b'id:2\r\nevent:error\r\n:HTTP_STATUS/500\r\ndata:{"code":"Novel","message":"m"}\r\n'
    error += b"\r\n"
    body = RESULT + error
    cut = len(RESULT) + error.index(b"/5") + 2
    deltas, caught = await _deltas_then_error(body, [7, cut - 7])
    assert deltas == ["Hello"]
    assert isinstance(caught, RecognitionUnavailable)
    assert "500 Novel" in caught.message


async def test_a_status_comment_applies_to_its_own_event_only() -> None:
    """An error event without a comment does not inherit the result event's 200 or any other."""
    error = b'id:2\r\nevent:error\r\ndata:{"code":"Novel","message":"m"}\r\n\r\n'
    _, caught = await _deltas_then_error(b":HTTP_STATUS/503\r\n" + RESULT + error, [])
    assert isinstance(caught, RecognitionRejected)  # no status: a code it does not know is a 400
