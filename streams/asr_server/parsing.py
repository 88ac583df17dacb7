"""Request parsing for both APIs: validate a body and refuse it as the cloud would.

Native bodies follow docs/dashscope-protocol.md §1, OpenAI-compatible ones §5. Every refusal is
an :class:`~streams.asr_server.errors.ApiError` with the cloud's status, code and message.
Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson

from streams.api_limits import MAX_CONTEXT_TOKENS, count_tokens
from streams.asr_server.errors import BAD_URL, EMPTY_AUDIO, ApiError

__all__ = [
    "LANGUAGES",
    "AsrRequest",
    "decode_data_uri",
    "parse_compatible_request",
    "parse_native_request",
]

LANGUAGES = frozenset(
    "zh yue en ja de ko ru fr pt ar it es hi id th tr uk vi cs da fil fi is ms no pl sv".split()  # noqa: SIM905
)
BAD_BODY = "Required body invalid, please check the request body format."
NO_MESSAGES = 'Either "prompt" or "messages" must exist and cannot both be none.'
NO_USER = "The input messages do not contain elements with the role of user."
# Stable names and dated snapshots, plus the US region's "-us" variants.
_MODEL = re.compile(r"qwen3-asr-flash(-\d{4}-\d{2}-\d{2})?(-us)?")


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
