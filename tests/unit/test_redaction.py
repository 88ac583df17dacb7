"""URLs inside free text lose their userinfo and query: log lines and raw event bytes."""

from __future__ import annotations

import logging

import pytest

from streams.errors import AudioNotFound
from streams.events import failed_event
from streams.logging_setup import TextFormatter
from streams.netguard import redact_urls

SIGNED = "https://user:pa55@bucket.example/a.wav?X-Amz-Signature=SECRET&X-Amz-Credential=AKIA"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(SIGNED, "https://bucket.example/a.wav?<redacted>", id="signed"),
        pytest.param("GET http://h/x.wav 200", "GET http://h/x.wav 200", id="no-query"),
        pytest.param("kafka://127.0.0.1:9092", "kafka://127.0.0.1:9092", id="bootstrap"),
        pytest.param('"u": "http://a@h/p#frag"', '"u": "http://h/p?<redacted>"', id="in-json"),
    ],
)
def test_redact_urls(text: str, expected: str) -> None:
    """Only the userinfo and query go; host and path stay for the reader."""
    assert redact_urls(text) == expected


def test_log_lines_never_show_a_signature() -> None:
    """httpx's DEBUG line with a request's full URL is redacted by the formatter."""
    record = logging.makeLogRecord(
        {
            "name": "httpx",
            "levelno": logging.DEBUG,
            "msg": "HTTP Request: GET %s",
            "args": (SIGNED,),
        }
    )
    line = TextFormatter().format(record)
    assert "SECRET" not in line
    assert "pa55" not in line


def test_failed_events_do_not_echo_signed_urls() -> None:
    """The original event in a failed event keeps its URL without query or userinfo."""
    raw = b'{"schema_version": 1, "recording_id": "r", "audio_url": "' + SIGNED.encode() + b'"}'
    event = failed_event(
        AudioNotFound("gone"), raw=raw, recording=None, recording_id="r", attempts=0
    )
    assert event["original_event"]["audio_url"] == "https://bucket.example/a.wav?<redacted>"
    broken = failed_event(
        AudioNotFound("x"), raw=raw[:-3], recording=None, recording_id=None, attempts=0
    )
    assert "SECRET" not in broken["original_raw"]
