"""The qwen3-asr-flash wire protocol as pure functions: parse requests, frame replies.

Everything follows docs/dashscope-protocol.md. Native SSE frames carry no space after the
field colons because the DashScope SDK recognises only the exact line ``event:error`` (§3.2);
OpenAI-compatible frames are ``data: {...}`` with a space and end with ``data: [DONE]`` (§5).
Nothing here does I/O, so the byte layout can be tested on its own.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.api_limits import MAX_CONTEXT_TOKENS, billed_seconds, count_tokens

__all__ = [
    "BAD_URL",
    "EMPTY_AUDIO",
    "LANGUAGES",
    "MALFORMED_JSON",
    "RATE_QUOTA",
    "RATE_QUOTA_MESSAGE",
    "ApiError",
    "AsrRequest",
    "CompatibleStream",
    "NativeStream",
    "billed_seconds",
    "compatible_error_body",
    "count_tokens",
    "decode_data_uri",
    "native_error_body",
    "parse_compatible_request",
    "parse_native_request",
    "sse_error_frame",
    "sse_result_frame",
]

LANGUAGES = frozenset(
    "zh yue en ja de ko ru fr pt ar it es hi id th tr uk vi cs da fil fi is ms no pl sv".split()  # noqa: SIM905
)
AUDIO_TOKENS_PER_SECOND = 25  # OpenAI-compatible usage: 25 audio tokens per started second
BAD_BODY = "Required body invalid, please check the request body format."
BAD_URL = "The provided URL does not appear to be valid. Ensure it is correctly formatted."
NO_MESSAGES = 'Either "prompt" or "messages" must exist and cannot both be none.'
NO_USER = "The input messages do not contain elements with the role of user."
EMPTY_AUDIO = "The audio is empty"
# A reply cut short inside its JSON, as a faulty proxy might deliver it (fault injection).
MALFORMED_JSON = b'{"output":{"choices":[{"message":{"role":"assistant","content":[{"te'
RATE_QUOTA = "Throttling.RateQuota"
RATE_QUOTA_MESSAGE = "Requests rate limit exceeded, please try again later."
# Stable names and dated snapshots, plus the US region's "-us" variants.
_MODEL = re.compile(r"qwen3-asr-flash(-\d{4}-\d{2}-\d{2})?(-us)?")


class ApiError(Exception):
    """A refusal with the HTTP status and DashScope code the cloud would send."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def _invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


def _bad_param(name: str, value: object = None) -> ApiError:
    got = "" if value is None else f" (got {value!r})"
    return _invalid(
        f"Required parameter({name}) missing or invalid, please check the request parameters.{got}"
    )


@dataclass(frozen=True)
class AsrRequest:
    """One validated recognition request, whichever of the two APIs it came through."""

    model: str
    audio: str
    """An http(s) URL or a ``data:`` URI."""
    context: str = ""
    """Text of the optional system message (glossary, background)."""
    language: str | None = None
    enable_itn: bool = False
    incremental_output: bool | None = None
    """Native API only; None when the client left it out (then the text is cumulative)."""
    stream: bool = False
    """OpenAI-compatible API only; the native API switches on the X-DashScope-SSE header."""
    include_usage: bool = False


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(BAD_BODY) from exc
    if not isinstance(data, dict):
        raise _invalid(BAD_BODY)
    return data


def _check_model(model: object) -> str:
    if not isinstance(model, str) or not model:
        raise _bad_param("model", model)
    if model.startswith("qwen3-asr-flash-filetrans"):
        raise ApiError(403, "AccessDenied", "current user api does not support synchronous calls.")
    if not _MODEL.fullmatch(model):
        raise _invalid("Model not exist.")
    return model


def _asr_options(options: object) -> tuple[str | None, bool]:
    """Validate ``asr_options``; ``enable_lid`` (2025 samples) is accepted and ignored."""
    if options is None:
        return None, False
    if not isinstance(options, dict):
        raise _bad_param("asr_options", options)
    language = options.get("language")
    if language is not None and language not in LANGUAGES:
        raise _bad_param("asr_options.language", language)
    itn = options.get("enable_itn", False)
    if not isinstance(itn, bool):
        raise _bad_param("asr_options.enable_itn", itn)
    return language, itn


def _system_text(content: object) -> str:
    """Join the text of a system message given as a string or a list of text items."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_param("messages.content", content)
    texts = [item.get("text") for item in content if isinstance(item, dict)]
    if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
        raise _bad_param("messages.content.text")
    return "".join(texts)  # type: ignore[arg-type]  # all str, checked just above


def _check_context(context: str) -> None:
    """Refuse a context over the API's token limit, counted as the worker counts it."""
    tokens = count_tokens(context)
    if tokens > MAX_CONTEXT_TOKENS:
        raise _invalid(
            f"The context (system message) is too long: {tokens} tokens, "
            f"more than the limit of {MAX_CONTEXT_TOKENS} tokens."
        )


def _split_messages(messages: object) -> tuple[str, list[Any]]:
    """Return the context text and the user message's content list."""
    if not isinstance(messages, list) or not messages:
        raise _invalid(NO_MESSAGES)
    if not all(isinstance(m, dict) for m in messages):
        raise _bad_param("messages")
    context = ""
    rest = messages
    if messages[0].get("role") == "system":
        context = _system_text(messages[0].get("content"))
        rest = messages[1:]
    _check_context(context)
    users = [m for m in rest if m.get("role") == "user"]
    if not users:
        raise _invalid(NO_USER)
    # The API takes exactly one user turn and nothing else ("仅允许设置一组消息").
    if len(rest) != 1:
        raise _bad_param("messages")
    content = users[0].get("content")
    if not isinstance(content, list) or len(content) != 1 or not isinstance(content[0], dict):
        raise _bad_param("messages.content")
    return context, content


def parse_native_request(body: bytes) -> AsrRequest:
    """Validate a native request body; raise :class:`ApiError` as the cloud would."""
    data = _load_object(body)
    model = _check_model(data.get("model"))
    payload = data.get("input")
    if not isinstance(payload, dict):
        raise _invalid(NO_MESSAGES)
    context, content = _split_messages(payload.get("messages"))
    audio = content[0].get("audio")
    if not isinstance(audio, str) or not audio:
        raise _bad_param("audio", audio)
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _bad_param("parameters", parameters)
    language, itn = _asr_options(parameters.get("asr_options"))
    incremental = parameters.get("incremental_output")
    if incremental is not None and not isinstance(incremental, bool):
        raise _bad_param("incremental_output", incremental)
    # `stream` (sent by SDK 1.x) and `result_format` are tolerated: the header decides streaming
    # and the reply always has the `choices` shape.
    return AsrRequest(model, audio, context, language, itn, incremental)


def parse_compatible_request(body: bytes) -> AsrRequest:
    """Validate an OpenAI-compatible chat-completions body; raise :class:`ApiError`."""
    data = _load_object(body)
    model = _check_model(data.get("model"))
    context, content = _split_messages(data.get("messages"))
    audio_item = content[0].get("input_audio")
    audio = audio_item.get("data") if isinstance(audio_item, dict) else None
    if not isinstance(audio, str) or not audio:
        raise _bad_param("input_audio.data", audio)
    language, itn = _asr_options(data.get("asr_options"))
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad_param("stream", stream)
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad_param("stream_options", options)
    usage = options.get("include_usage", False) is True
    return AsrRequest(model, audio, context, language, itn, None, stream, usage)


def decode_data_uri(uri: str, *, max_bytes: int) -> bytes:
    """Return the bytes of a base64 ``data:`` URI whose encoded payload is at most ``max_bytes``."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise _invalid(BAD_URL)
    if len(payload) > max_bytes:
        raise _invalid(f"Exceeded limit on max bytes per data-uri item : {max_bytes}")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        try:  # some encoders wrap base64 at 76 columns
            data = base64.b64decode("".join(payload.split()), validate=True)
        except binascii.Error as exc:
            raise _invalid(BAD_URL) from exc
    if not data:
        raise _invalid(EMPTY_AUDIO)
    return data


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
    """Billed audio duration (:func:`billed_seconds`)."""
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
    """True: each frame has only the new text; False: all text so far (§2.3)."""
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
