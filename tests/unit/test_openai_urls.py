"""Where the openai backend sends its requests: DashScope compatible mode or a vLLM /v1 root."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from streams.transcribe import OpenAIBackend, RecognitionOptions, Result

SSE = (
    b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        pytest.param(
            "https://dashscope-intl.aliyuncs.com",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/chat/completions",
            id="dashscope-host",
        ),
        pytest.param(
            "http://vllm:8000/v1/", "http://vllm:8000/v1/chat/completions", id="vllm-v1-root"
        ),
    ],
)
async def test_requests_go_to_the_chat_completions_route(base_url: str, expected: str) -> None:
    """A bare host gets the compatible-mode path; an OpenAI-style /v1 root the plain one."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=SSE)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = OpenAIBackend(client, base_url, "sk-test")
        stream = backend.stream("data:audio/flac;base64,AA", RecognitionOptions(model="m"))
        async with contextlib.aclosing(stream) as items:
            results = [item async for item in items if isinstance(item, Result)]
    assert seen == [expected]
    assert results
