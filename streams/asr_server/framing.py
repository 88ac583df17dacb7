"""Reply framing for both APIs: the exact bytes of SSE frames and JSON bodies.

Native SSE frames carry no space after the field colons because the DashScope SDK recognises
only the exact line ``event:error`` (docs/dashscope-protocol.md §3.2); OpenAI-compatible frames
are ``data: {...}`` with a space and end with ``data: [DONE]`` (docs/dashscope-protocol.md §5).
Nothing here does I/O, so the byte layout can be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.api_limits import count_tokens

__all__ = [
    "MALFORMED_JSON",
    "CompatibleStream",
    "NativeStream",
    "compatible_error_body",
    "native_error_body",
    "sse_error_frame",
    "sse_result_frame",
]

AUDIO_TOKENS_PER_SECOND = 25  # OpenAI-compatible usage: 25 audio tokens per started second
# A reply cut short inside its JSON, as a faulty proxy might deliver it (fault injection).
MALFORMED_JSON = b'{"output":{"choices":[{"message":{"role":"assistant","content":[{"te'


def _annotations(language: str | None, emotion: str | None) -> list[dict[str, str]]:
    info = {"type": "audio_info"}
    if language is not None:
        info["language"] = language
    if emotion is not None:
        info["emotion"] = emotion
    return [info]


def native_error_body(code: str, message: str, request_id: str) -> bytes:
    """Build the JSON body of a native error reply."""
    return orjson.dumps({"code": code, "message": message, "request_id": request_id})


def sse_result_frame(event_id: int, payload: dict[str, Any]) -> bytes:
    """Frame one native result event."""
    return b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:%s\n\n" % (event_id, orjson.dumps(payload))


def sse_error_frame(event_id: int, status: int, code: str, message: str, request_id: str) -> bytes:
    """Frame one native error event; the status goes in a comment, as the cloud sends it."""
    body = native_error_body(code, message, request_id)
    return b"id:%d\nevent:error\n:HTTP_STATUS/%d\ndata:%s\n\n" % (event_id, status, body)


def compatible_error_body(status: int, code: str, message: str, request_id: str) -> bytes:
    """Build an error body in OpenAI's ``{"error": {...}}`` shape."""
    if status == 401:
        message, code = "Incorrect API key provided. ", "invalid_api_key"
    elif code == "InvalidParameter":
        code = "invalid_parameter_error"
    kind = "invalid_request_error" if status < 500 else "internal_error"
    error = {"message": message, "type": kind, "param": None, "code": code}
    return orjson.dumps({"error": error, "request_id": request_id})


@dataclass(kw_only=True)
class _Reply:
    """What both APIs' encoders share: the request's identity and the text sent so far."""

    request_id: str
    seconds: int
    """Billed audio duration (``streams.api_limits.billed_seconds``)."""
    language: str | None = None
    emotion: str | None = None
    text: str = ""
    """All text sent so far."""
    finish_reason: str = "stop"
    """What the last frame says: ``stop``, or ``length`` when the output hit its limit."""

    def _add(self, text: str, language: str | None, emotion: str | None) -> None:
        self.text += text
        self.language = language or self.language
        self.emotion = emotion or self.emotion


@dataclass(kw_only=True)
class NativeStream(_Reply):
    """Native replies: numbered SSE frames with deltas or cumulative text, or one JSON body."""

    incremental: bool
    """True: each frame has only the new text; False: all text so far
    (docs/dashscope-protocol.md §2.3)."""
    _next_id: int = field(default=1, repr=False)

    def start(self) -> bytes:
        """Return the bytes that open the stream (none in this API)."""
        return b""

    def piece(self, text: str, language: str | None = None, emotion: str | None = None) -> bytes:
        """Frame a new piece of text with ``finish_reason`` "null"."""
        self._add(text, language, emotion)
        return self._frame(self._payload(text if self.incremental else self.text, False))

    def finish(self) -> bytes:
        """Frame the last event (``finish_reason`` "stop"): empty in delta mode, else all text.

        ``finish_reason`` is "length" instead when the engine stopped at its output limit.
        """
        return self._frame(self._payload("" if self.incremental else self.text, True))

    def error(self, status: int, code: str, message: str) -> bytes:
        """Frame an error event that ends the stream."""
        self._next_id += 1
        return sse_error_frame(self._next_id - 1, status, code, message, self.request_id)

    def malformed(self) -> bytes:
        """Frame a result event whose ``data:`` is not JSON (fault injection)."""
        self._next_id += 1
        return b"id:%d\nevent:result\n:HTTP_STATUS/200\ndata:%s\n\n" % (
            self._next_id - 1,
            MALFORMED_JSON,
        )

    def body(self, text: str, language: str | None = None, emotion: str | None = None) -> bytes:
        """Build the JSON body of a non-streaming reply carrying the whole ``text``."""
        self._add(text, language, emotion)
        return orjson.dumps(self._payload(self.text, True))

    def _frame(self, payload: dict[str, Any]) -> bytes:
        self._next_id += 1
        return sse_result_frame(self._next_id - 1, payload)

    def _payload(self, text: str, finished: bool) -> dict[str, Any]:
        message = {
            "role": "assistant",
            "content": [{"text": text}],
            "annotations": _annotations(self.language, self.emotion),
        }
        reason = self.finish_reason if finished else "null"
        return {
            "output": {"choices": [{"message": message, "finish_reason": reason}]},
            "usage": {
                "input_tokens_details": {"text_tokens": 0},
                "output_tokens_details": {"text_tokens": count_tokens(self.text)},
                "seconds": self.seconds,
            },
            "request_id": self.request_id,
        }


@dataclass(kw_only=True)
class CompatibleStream(_Reply):
    """OpenAI-compatible replies: ``chat.completion.chunk`` frames or one ``chat.completion``."""

    model: str
    created: int
    include_usage: bool = False

    def start(self) -> bytes:
        """Frame the opening chunk that carries only the assistant role."""
        delta = {"content": "", "role": "assistant"}
        return self._chunk([{"index": 0, "logprobs": None, "delta": delta}])

    def piece(self, text: str, language: str | None = None, emotion: str | None = None) -> bytes:
        """Frame a delta chunk; like the cloud's, it has no ``finish_reason`` key."""
        self._add(text, language, emotion)
        annotations = _annotations(self.language, self.emotion)
        delta = {"content": text, "role": None, "annotations": annotations}
        return self._chunk([{"index": 0, "delta": delta}])

    def finish(self) -> bytes:
        """Frame the stop chunk, the usage chunk when asked for, and ``[DONE]``."""
        stop = {"index": 0, "delta": {"role": None}, "finish_reason": self.finish_reason}
        frames = self._chunk([stop])
        if self.include_usage:
            frames += self._chunk([], self._usage())
        return frames + b"data: [DONE]\n\n"

    def error(self, status: int, code: str, message: str) -> bytes:
        """Frame an error mid-stream as a ``data:`` object with an ``error`` key."""
        return b"data: " + compatible_error_body(status, code, message, self.request_id) + b"\n\n"

    def malformed(self) -> bytes:
        """Frame a chunk whose ``data:`` is not JSON (fault injection)."""
        return b"data: " + MALFORMED_JSON + b"\n\n"

    def body(self, text: str, language: str | None = None, emotion: str | None = None) -> bytes:
        """Build a non-streaming ``chat.completion`` body; its ``content`` is a string."""
        self._add(text, language, emotion)
        annotations = _annotations(self.language, self.emotion)
        message = {"role": "assistant", "content": self.text, "annotations": annotations}
        choice = {"index": 0, "finish_reason": self.finish_reason, "message": message}
        return orjson.dumps(self._envelope("chat.completion", [choice], self._usage()))

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk = self._envelope("chat.completion.chunk", choices, usage)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _envelope(
        self, kind: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{self.request_id}",
            "object": kind,
            "created": self.created,
            "model": self.model,
            "usage": usage,
            "choices": choices,
        }

    def _usage(self) -> dict[str, Any]:
        audio_tokens = AUDIO_TOKENS_PER_SECOND * self.seconds
        completion = count_tokens(self.text)
        return {
            "prompt_tokens": audio_tokens,
            "completion_tokens": completion,
            "total_tokens": audio_tokens + completion,
            "prompt_tokens_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
            "completion_tokens_details": {"text_tokens": completion},
            "seconds": self.seconds,
        }
