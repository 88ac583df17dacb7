"""What a recording event and the settings decide about its requests before any is sent."""

from __future__ import annotations

import orjson
import pytest

from streams.api_limits import MAX_CONTEXT_TOKENS, count_tokens
from streams.config import Settings
from streams.errors import InvalidEvent
from streams.events import RecognitionDefaults, parse_recording

DEFAULTS = RecognitionDefaults(model="qwen3-asr-flash")


def _raw(version: int = 2, **fields: object) -> bytes:
    event = {"schema_version": version, "recording_id": "r-1", "audio_url": "file:///x.wav"}
    return orjson.dumps({**event, **fields})


def test_the_plan_and_the_language_rule_come_from_the_event_or_the_defaults() -> None:
    """channels.plan and recognition.mixed_languages are read; absent, the worker decides."""
    silent = parse_recording(_raw(), DEFAULTS)
    assert (silent.plan, silent.mixed_languages) == (None, False)
    told = parse_recording(
        _raw(channels={"layout": "split", "plan": "turns"}, recognition={"mixed_languages": True}),
        DEFAULTS,
    )
    assert (told.plan, told.mixed_languages) == ("turns", True)
    mixed_by_default = RecognitionDefaults(model="qwen3-asr-flash", mixed_languages=True)
    assert parse_recording(_raw(), mixed_by_default).mixed_languages is True


def test_version_1_events_are_still_accepted() -> None:
    """Version 2 only added optional fields: producers on version 1 keep working."""
    assert parse_recording(_raw(version=1), DEFAULTS).recording_id == "r-1"


def test_an_unknown_plan_is_an_invalid_event() -> None:
    """Only the plans the worker knows are accepted."""
    with pytest.raises(InvalidEvent, match="plan"):
        parse_recording(_raw(channels={"plan": "everything-at-once"}), DEFAULTS)


def test_context_and_hotwords_beyond_the_token_limit_fail_before_any_request() -> None:
    """The API refuses a context over 10,000 tokens; the worker says so itself, clearly.

    The schema caps the context at 10,000 characters, but hotwords join it: 5,000 tokens of
    context plus 120 hotword phrases of 50 tokens each pass the limit.
    """
    context = "a " * 5000
    phrase = " ".join(["w"] * 50)
    fits = parse_recording(_raw(recognition={"context": context}), DEFAULTS)
    assert count_tokens(fits.context) == 5000
    with pytest.raises(InvalidEvent, match=str(MAX_CONTEXT_TOKENS)) as caught:
        parse_recording(
            _raw(recognition={"context": context, "hotwords": [phrase] * 120}), DEFAULTS
        )
    assert caught.value.code == "invalid_event"


def test_the_us_region_uses_its_own_model_names_and_has_no_compatible_mode() -> None:
    """US model names carry "-us"; a self-hosted URL or another region keeps the name."""
    us = Settings(dashscope_region="us", api_key="sk-test")
    assert us.model_for_region("qwen3-asr-flash") == "qwen3-asr-flash-us"
    assert us.model_for_region("qwen3-asr-flash-us") == "qwen3-asr-flash-us"
    assert Settings(api_key="sk-test").model_for_region("qwen3-asr-flash") == "qwen3-asr-flash"
    self_hosted = Settings(dashscope_region="us", api_key="k", asr_base_url="http://asr:8000")
    assert self_hosted.model_for_region("qwen3-asr-flash") == "qwen3-asr-flash"
    with pytest.raises(ValueError, match="US region has no OpenAI-compatible mode"):
        Settings(dashscope_region="us", asr_backend="openai", api_key="sk-test")
