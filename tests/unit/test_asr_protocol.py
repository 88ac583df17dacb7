"""The local ASR server's wire protocol: request validation and the exact reply bytes."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from streams import api_limits
from streams.api_limits import billed_seconds, count_tokens
from streams.asr_server.errors import BAD_URL, EMPTY_AUDIO, ApiError
from streams.asr_server.framing import (
    MALFORMED_JSON,
    CompatibleStream,
    NativeStream,
    compatible_error_body,
    sse_error_frame,
    sse_result_frame,
)
from streams.asr_server.parsing import (
    decode_data_uri,
    parse_compatible_request,
    parse_native_request,
)

RID = "568e2bf0-d6f2-97f8-9f15-a57b11dc6977"
AUDIO = "data:audio/wav;base64,UklGRg=="


def _native_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "qwen3-asr-flash",
        "input": {
            "messages": [
                {"role": "system", "content": [{"text": "glossary: Qwen"}]},
                {"role": "user", "content": [{"audio": AUDIO}]},
            ]
        },
        "parameters": {
            "asr_options": {"language": "zh", "enable_itn": False},
            "incremental_output": True,
            "result_format": "message",
        },
    }
    body.update(overrides)
    return body


def _events(frames: bytes) -> list[dict[str, Any]]:
    """Parse native SSE bytes into the JSON of each ``data:`` line."""
    return [
        orjson.loads(line[len(b"data:") :])
        for line in frames.split(b"\n")
        if line.startswith(b"data:")
    ]


def test_result_frame_bytes_match_the_documented_layout() -> None:
    """A result event is id, event, status comment and data lines with no space after colons."""
    frame = sse_result_frame(1, {"request_id": "r-1"})
    assert frame == b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"request_id":"r-1"}\n\n'


def test_error_frame_bytes_match_the_documented_layout() -> None:
    """An error event carries its status in a comment and code, message, request_id as data."""
    frame = sse_error_frame(2, 429, "Throttling", "Requests throttling triggered.", RID)
    assert frame == (
        b"id:2\nevent:error\n:HTTP_STATUS/429\n"
        b'data:{"code":"Throttling","message":"Requests throttling triggered.",'
        b'"request_id":"' + RID.encode() + b'"}\n\n'
    )


def test_native_stream_first_frame_is_the_documented_json() -> None:
    """The first delta frame holds choices, annotations, usage and the request id."""
    stream = NativeStream(request_id=RID, seconds=1, incremental=True, language="zh")
    frame = stream.piece("欢迎", emotion="neutral")
    assert frame.startswith(b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{")
    assert _events(frame) == [
        {
            "output": {
                "choices": [
                    {
                        "message": {
                            "role": "assistant",
                            "content": [{"text": "欢迎"}],
                            "annotations": [
                                {"type": "audio_info", "language": "zh", "emotion": "neutral"}
                            ],
                        },
                        "finish_reason": "null",
                    }
                ]
            },
            "usage": {
                "input_tokens_details": {"text_tokens": 0},
                "output_tokens_details": {"text_tokens": 2},
                "seconds": 1,
            },
            "request_id": RID,
        }
    ]


@pytest.mark.parametrize(
    ("incremental", "texts"),
    [
        pytest.param(True, ["Hello", " there", " friend.", ""], id="deltas"),
        pytest.param(
            False,
            ["Hello", "Hello there", "Hello there friend.", "Hello there friend."],
            id="cumulative",
        ),
    ],
)
def test_native_stream_sends_deltas_or_cumulative_text(incremental: bool, texts: list[str]) -> None:
    """Incremental output sends each new piece; otherwise every frame repeats all text so far."""
    stream = NativeStream(request_id=RID, seconds=2, incremental=incremental)
    frames = b"".join(stream.piece(t) for t in ("Hello", " there", " friend.")) + stream.finish()
    events = _events(frames)
    assert [e["output"]["choices"][0]["message"]["content"][0]["text"] for e in events] == texts
    assert [e["output"]["choices"][0]["finish_reason"] for e in events] == [
        "null",
        "null",
        "null",
        "stop",
    ]


def test_native_stream_numbers_events_from_one() -> None:
    """Event ids count 1, 2, 3 across result and error frames."""
    stream = NativeStream(request_id=RID, seconds=1, incremental=True)
    frames = stream.piece("a") + stream.piece(" b") + stream.error(429, "Throttling", "slow down")
    ids = [line for line in frames.split(b"\n") if line.startswith(b"id:")]
    assert ids == [b"id:1", b"id:2", b"id:3"]


def test_native_body_is_one_finished_message() -> None:
    """The non-streaming body has the whole text and finish_reason stop."""
    body = orjson.loads(
        NativeStream(request_id=RID, seconds=3, incremental=False).body("Hi all.", "en")
    )
    choice = body["output"]["choices"][0]
    assert choice["message"]["content"] == [{"text": "Hi all."}]
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["seconds"] == 3
    assert body["request_id"] == RID


def test_compatible_stream_chunks_follow_the_documented_sequence() -> None:
    """Role chunk, delta chunks without finish_reason, stop chunk, usage chunk, then [DONE]."""
    stream = CompatibleStream(
        request_id=RID, seconds=1, model="qwen3-asr-flash", created=7, include_usage=True
    )
    raw = stream.start() + stream.piece("欢迎", "zh", "neutral") + stream.finish()
    blocks = raw.split(b"\n\n")
    assert blocks[-2:] == [b"data: [DONE]", b""]
    assert all(block.startswith(b"data: ") for block in blocks[:-1])
    role, delta, stop, usage = (orjson.loads(b[len(b"data: ") :]) for b in blocks[:-2])
    assert role["choices"] == [
        {"index": 0, "logprobs": None, "delta": {"content": "", "role": "assistant"}}
    ]
    assert delta["object"] == "chat.completion.chunk"
    assert "finish_reason" not in delta["choices"][0]
    assert delta["choices"][0]["delta"]["content"] == "欢迎"
    assert stop["choices"] == [{"index": 0, "delta": {"role": None}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"]["seconds"] == 1
    assert usage["usage"]["prompt_tokens_details"]["audio_tokens"] == 25


def test_compatible_stream_without_include_usage_has_no_usage_chunk() -> None:
    """Without stream_options.include_usage the stop chunk is followed by [DONE] alone."""
    stream = CompatibleStream(request_id=RID, seconds=1, model="m", created=7)
    assert stream.finish().count(b"data: ") == 2


def test_compatible_body_content_is_a_string() -> None:
    """The non-streaming chat.completion carries the text as a plain string."""
    stream = CompatibleStream(request_id=RID, seconds=1, model="qwen3-asr-flash", created=7)
    body = orjson.loads(stream.body("欢迎使用阿里云。", "zh", "neutral"))
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "欢迎使用阿里云。"
    assert body["usage"]["total_tokens"] == 25 + body["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("status", "code", "expected_code"),
    [
        pytest.param(401, "InvalidApiKey", "invalid_api_key", id="401"),
        pytest.param(400, "InvalidParameter", "invalid_parameter_error", id="400"),
        pytest.param(429, "Throttling", "Throttling", id="429"),
    ],
)
def test_compatible_errors_use_openais_shape(status: int, code: str, expected_code: str) -> None:
    """Errors in compatible mode nest message, type, param and code under "error"."""
    body = orjson.loads(compatible_error_body(status, code, "why", RID))
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == expected_code
    assert body["request_id"] == RID


def test_native_request_parses_the_documented_example() -> None:
    """The official body yields context, audio and options."""
    request = parse_native_request(orjson.dumps(_native_body()))
    assert (request.model, request.audio, request.context) == (
        "qwen3-asr-flash",
        AUDIO,
        "glossary: Qwen",
    )
    assert (request.language, request.enable_itn, request.incremental_output) == ("zh", False, True)


def test_native_request_tolerates_sdk_extras() -> None:
    """SDK 1.x's parameters.stream and old samples' enable_lid are accepted and ignored."""
    body = _native_body(
        parameters={"stream": True, "asr_options": {"enable_lid": True}, "result_format": "text"}
    )
    request = parse_native_request(orjson.dumps(body))
    assert request.language is None
    assert request.incremental_output is None


def test_compatible_request_reads_input_audio_and_top_level_options() -> None:
    """input_audio.data, top-level asr_options, stream and include_usage are read."""
    body = {
        "model": "qwen3-asr-flash",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "ctx"}]},
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": AUDIO}}]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "asr_options": {"language": "en", "enable_itn": True},
    }
    request = parse_compatible_request(orjson.dumps(body))
    assert (request.audio, request.context, request.language) == (AUDIO, "ctx", "en")
    assert (request.enable_itn, request.stream, request.include_usage) == (True, True, True)


def _user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


@pytest.mark.parametrize(
    ("body", "status", "message_part"),
    [
        pytest.param(b"{not json", 400, "Required body invalid", id="not-json"),
        pytest.param(b"[]", 400, "Required body invalid", id="not-an-object"),
        pytest.param(_native_body(model=None), 400, "parameter(model)", id="no-model"),
        pytest.param(_native_body(model="qwen-max"), 400, "Model not exist.", id="unknown-model"),
        pytest.param(
            _native_body(model="qwen3-asr-flash-filetrans"),
            403,
            "does not support synchronous calls",
            id="filetrans-model",
        ),
        pytest.param(
            {"model": "qwen3-asr-flash", "messages": [_user([{"audio": AUDIO}])]},
            400,
            'Either "prompt" or "messages" must exist',
            id="messages-outside-input",
        ),
        pytest.param(
            _native_body(input={"messages": [{"role": "system", "content": [{"text": "x"}]}]}),
            400,
            "do not contain elements with the role of user",
            id="no-user-message",
        ),
        pytest.param(
            _native_body(
                input={"messages": [_user([{"audio": AUDIO}]), _user([{"audio": AUDIO}])]}
            ),
            400,
            "parameter(messages)",
            id="two-user-messages",
        ),
        pytest.param(
            _native_body(input={"messages": [_user([{"audio": AUDIO}, {"audio": AUDIO}])]}),
            400,
            "parameter(messages.content)",
            id="two-audio-items",
        ),
        pytest.param(
            _native_body(input={"messages": [_user([{"text": "hi"}])]}),
            400,
            "parameter(audio)",
            id="no-audio-item",
        ),
        pytest.param(
            _native_body(parameters={"asr_options": {"language": "xx"}}),
            400,
            "parameter(asr_options.language) missing or invalid, please check the request "
            "parameters. (got 'xx')",
            id="unknown-language",
        ),
        pytest.param(
            _native_body(parameters={"asr_options": {"enable_itn": "yes"}}),
            400,
            "parameter(asr_options.enable_itn)",
            id="itn-not-bool",
        ),
        pytest.param(
            _native_body(parameters={"incremental_output": "true"}),
            400,
            "parameter(incremental_output)",
            id="incremental-not-bool",
        ),
    ],
)
def test_native_request_errors(body: Any, status: int, message_part: str) -> None:
    """Malformed native requests raise the status and message the cloud sends."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(ApiError) as caught:
        parse_native_request(raw)
    assert caught.value.status == status
    assert caught.value.code == ("InvalidParameter" if status == 400 else "AccessDenied")
    assert message_part in caught.value.message


def test_compatible_request_without_input_audio_is_refused() -> None:
    """A compatible-mode user item without input_audio.data is a 400 InvalidParameter."""
    body = {"model": "qwen3-asr-flash", "messages": [_user([{"type": "text", "text": "hi"}])]}
    with pytest.raises(ApiError) as caught:
        parse_compatible_request(orjson.dumps(body))
    assert (caught.value.status, caught.value.code) == (400, "InvalidParameter")


def test_data_uri_decodes_wrapped_base64() -> None:
    """Base64 wrapped at 76 columns decodes like unwrapped base64."""
    payload = base64.encodebytes(b"RIFF" * 40).decode()
    assert "\n" in payload
    assert decode_data_uri(f"data:audio/wav;base64,{payload}", max_bytes=1000) == b"RIFF" * 40


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        pytest.param("data:audio/wav,UklGRg==", BAD_URL, id="not-base64"),
        pytest.param("data:audio/wav;base64,@@@@", BAD_URL, id="garbage-base64"),
        pytest.param("data:audio/wav;base64,", EMPTY_AUDIO, id="empty"),
        pytest.param(
            "data:audio/wav;base64," + "A" * 17,
            "Exceeded limit on max bytes per data-uri item : 16",
            id="too-big",
        ),
    ],
)
def test_data_uri_errors(uri: str, message: str) -> None:
    """Bad data URIs are 400 InvalidParameter with the cloud's messages."""
    with pytest.raises(ApiError) as caught:
        decode_data_uri(uri, max_bytes=16)
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        400,
        "InvalidParameter",
        message,
    )


@pytest.mark.parametrize(
    ("duration_s", "seconds"),
    [
        pytest.param(0.2, 1, id="part-second"),
        pytest.param(3.0, 3, id="whole"),
        pytest.param(3.261, 4, id="rounds-up"),
        pytest.param((0.1 + 0.2) * 10, 3, id="float-noise-is-not-a-second"),
    ],
)
def test_billed_seconds_round_up(duration_s: float, seconds: int) -> None:
    """usage.seconds is the audio duration rounded up to whole seconds, as the worker bills it."""
    assert billed_seconds(duration_s) == seconds == api_limits.billed_seconds(duration_s)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        pytest.param("欢迎使用", 4, id="cjk-per-character"),
        pytest.param("Hello, world.", 4, id="words-and-punctuation"),
    ],
)
def test_count_tokens(text: str, tokens: int) -> None:
    """Tokens are approximated per CJK character, word and punctuation mark."""
    assert count_tokens(text) == tokens


def _with_context(context: str) -> bytes:
    body = _native_body()
    body["input"]["messages"][0]["content"] = [{"text": context}]
    return orjson.dumps(body)


def test_a_context_at_the_token_limit_is_accepted() -> None:
    """10,000 tokens of context is within the API's limit."""
    context = "word " * api_limits.MAX_CONTEXT_TOKENS
    assert parse_native_request(_with_context(context)).context == context


@pytest.mark.parametrize("endpoint", ["native", "compatible"])
def test_a_context_over_the_token_limit_is_refused(endpoint: str) -> None:
    """One token more is a 400 InvalidParameter that says how long it was and the limit."""
    context = "word " * (api_limits.MAX_CONTEXT_TOKENS + 1)
    if endpoint == "native":
        raw = _with_context(context)
        parse = parse_native_request
    else:
        content = [{"type": "input_audio", "input_audio": {"data": AUDIO}}]
        messages = [{"role": "system", "content": context}, _user(content)]
        raw = orjson.dumps({"model": "qwen3-asr-flash", "messages": messages})
        parse = parse_compatible_request
    with pytest.raises(ApiError) as caught:
        parse(raw)
    assert (caught.value.status, caught.value.code) == (400, "InvalidParameter")
    assert "10001 tokens" in caught.value.message
    assert "limit of 10000 tokens" in caught.value.message


def test_malformed_frame_is_a_numbered_result_event_without_json() -> None:
    """The injected broken frame keeps the framing and numbering; only its data is not JSON."""
    stream = NativeStream(request_id=RID, seconds=1, incremental=True)
    frames = stream.piece("a") + stream.malformed()
    assert frames.endswith(
        b"id:2\nevent:result\n:HTTP_STATUS/200\ndata:" + MALFORMED_JSON + b"\n\n"
    )
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(MALFORMED_JSON)


def test_finish_reason_length_ends_both_apis_replies() -> None:
    """An engine stopped at its output limit ends the reply with "length" instead of "stop"."""
    native = NativeStream(request_id=RID, seconds=1, incremental=True, finish_reason="length")
    (last,) = _events(native.finish())
    assert last["output"]["choices"][0]["finish_reason"] == "length"
    compatible = CompatibleStream(
        request_id=RID, seconds=1, model="m", created=7, finish_reason="length"
    )
    stop = orjson.loads(compatible.finish().split(b"\n\n")[0][len(b"data: ") :])
    assert stop["choices"][0]["finish_reason"] == "length"
