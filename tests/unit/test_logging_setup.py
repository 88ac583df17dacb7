"""Log lines as JSON with bound and extra fields, and secrets redacted in every format."""

from __future__ import annotations

import logging
import sys

import orjson

from streams.logging_setup import JsonFormatter, TextFormatter, bind

KEY = "sk-0123456789abcdef"


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("streams.pipeline", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_carries_bound_and_extra_fields() -> None:
    """Fields bound around a block and a record's extra fields land in the JSON object."""
    with bind(topic="recordings", partition=3, offset=41):
        line = JsonFormatter().format(
            _record("recording %s final", "r-1", recording_id="r-1", timings={"total_s": 1.5})
        )
    data = orjson.loads(line)
    assert data["message"] == "recording r-1 final"
    assert data["level"] == "INFO"
    assert data["logger"] == "streams.pipeline"
    assert (data["topic"], data["partition"], data["offset"]) == ("recordings", 3, 41)
    assert data["recording_id"] == "r-1"
    assert data["timings"] == {"total_s": 1.5}


def test_bound_fields_end_with_the_block() -> None:
    """Outside the block, the bound fields are gone."""
    with bind(offset=1):
        pass
    assert "offset" not in orjson.loads(JsonFormatter().format(_record("x")))


def test_secrets_are_redacted_in_messages_and_tracebacks() -> None:
    """The API key never reaches the output, whether in the message or in an exception."""
    try:
        raise RuntimeError(f"bad key {KEY}")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = _record("calling with %s", KEY)
    record.exc_info = exc_info
    for formatter in (JsonFormatter(secrets=[KEY]), TextFormatter(secrets=[KEY])):
        out = formatter.format(record)
        assert KEY not in out
        assert "***" in out
