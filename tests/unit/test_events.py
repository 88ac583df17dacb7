"""Reading recording events and building failed events against the contracts in schemas/."""

from __future__ import annotations

import uuid

import orjson
import pytest

import schemas
from streams.chunking import Request
from streams.errors import InvalidEvent, RecognitionThrottled, UndecodableAudio
from streams.events import (
    EVENT_NAMESPACE,
    RecognitionDefaults,
    event_id,
    failed_event,
    final_event,
    parse_recording,
)
from streams.transcribe import Result

DEFAULTS = RecognitionDefaults(model="qwen3-asr-flash", language=None, context="default context")


def _raw(**fields: object) -> bytes:
    return orjson.dumps(
        {"schema_version": 1, "recording_id": "r-1", "audio_url": "file:///x.wav", **fields}
    )


def test_defaults_apply_when_the_event_is_silent() -> None:
    """An event with only the required fields gets the worker's defaults."""
    recording = parse_recording(_raw(), DEFAULTS)
    assert recording.model == "qwen3-asr-flash"
    assert recording.context == "default context"
    assert recording.layout == "mix"
    assert recording.roles == ("agent", "customer")
    assert recording.call == {}


def test_event_options_override_defaults_and_hotwords_join_the_context() -> None:
    """Recognition options in the event win, and hotwords are appended to the context."""
    recording = parse_recording(
        _raw(
            recognition={"language": "de", "context": "Telco", "hotwords": ["Glasfaser", "DSL"]},
            channels={"layout": "split", "roles": ["customer", "agent"]},
            call={"call_id": "c-9", "nested": {"x": [1, 2]}},
        ),
        DEFAULTS,
    )
    assert recording.language == "de"
    assert recording.context == "Telco\nGlasfaser DSL"
    assert recording.layout == "split"
    assert recording.roles == ("customer", "agent")
    assert recording.call == {"call_id": "c-9", "nested": {"x": [1, 2]}}


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        pytest.param(b"{not json", "invalid_event", "not valid JSON", id="malformed"),
        pytest.param(b"[1, 2]", "invalid_event", "JSON object", id="array"),
        pytest.param(_raw(schema_version=6), "unsupported_schema_version", "got 6", id="version"),
        pytest.param(
            b'{"recording_id": "r"}', "unsupported_schema_version", "None", id="no-version"
        ),
        pytest.param(_raw(recording_id=7), "invalid_event", "recording_id", id="id-type"),
        pytest.param(_raw(audio_url=""), "invalid_event", "audio_url", id="empty-url"),
        pytest.param(_raw(recognition={"language": "xx"}), "invalid_event", "language", id="lang"),
        pytest.param(
            _raw(recognition={"context": "x" * 10_001}), "invalid_event", "context", id="ctx"
        ),
        pytest.param(_raw(surprise=True), "invalid_event", "surprise", id="unknown-field"),
        pytest.param(_raw(channels={"layout": "3d"}), "invalid_event", "layout", id="layout"),
    ],
)
def test_invalid_events_raise_with_a_precise_code(raw: bytes, code: str, fragment: str) -> None:
    """Each kind of invalid event raises InvalidEvent with its code and names the culprit."""
    with pytest.raises(InvalidEvent) as caught:
        parse_recording(raw, DEFAULTS)
    assert caught.value.code == code
    assert fragment in caught.value.message


def test_failed_event_keeps_the_original_and_matches_its_schema() -> None:
    """A failed event carries the original event, the error, and validates against its schema."""
    raw = _raw(call={"call_id": "c-1"})
    recording = parse_recording(raw, DEFAULTS)
    event = failed_event(
        UndecodableAudio("cannot decode"),
        raw=raw,
        recording=recording,
        recording_id="r-1",
        attempts=0,
    )
    schemas.validator("failed").validate(event)
    assert event["error"] == {
        "code": "undecodable_audio",
        "stage": "decode",
        "message": "cannot decode",
        "retryable": False,
    }
    assert event["original_event"] is not None
    assert event["original_event"]["call"] == {"call_id": "c-1"}
    assert event["original_raw"] is None
    assert event["event_id"] == event_id("failed", "r-1")


def test_failed_event_of_unreadable_bytes_keeps_them_as_text() -> None:
    """Bytes that are not JSON survive in original_raw, and the event still validates."""
    raw = b"\xff\xfe garbage"
    event = failed_event(
        InvalidEvent("not JSON"), raw=raw, recording=None, recording_id=None, attempts=0
    )
    schemas.validator("failed").validate(event)
    assert event["original_event"] is None
    assert event["original_raw"] is not None
    assert "garbage" in event["original_raw"]


def test_transient_errors_are_marked_retryable() -> None:
    """A failure after retries ran out tells consumers that republishing could help."""
    raw = _raw()
    event = failed_event(
        RecognitionThrottled("429"), raw=raw, recording=None, recording_id="r-1", attempts=5
    )
    assert event["error"]["retryable"] is True
    assert event["attempts"] == 5


def test_event_ids_are_deterministic_per_recording() -> None:
    """The same recording id always gives the same final event id, and ids differ by kind."""
    assert event_id("final", "r-1") == event_id("final", "r-1")
    assert event_id("final", "r-1") != event_id("final", "r-2")
    assert event_id("final", "r-1") != event_id("failed", "r-1")


# The namespace is part of the contract: consumers that deduplicate by event_id across a
# deployment would see every redelivered final as new if it changed.
DOCUMENTED_NAMESPACE = uuid.UUID("6f0f3c1e-5a55-4c1f-9a43-2b7f3b4c8d10")


@pytest.mark.parametrize("recording_id", ["r-1", "call-2024-05-01T10:00:00Z", "ünïcødé-7"])
def test_final_event_ids_are_uuid5_of_the_recording_id_in_the_service_namespace(
    recording_id: str,
) -> None:
    """A final's id is the UUIDv5 of ``final:<recording id>`` in EVENT_NAMESPACE (README)."""
    assert EVENT_NAMESPACE == DOCUMENTED_NAMESPACE
    made = uuid.UUID(event_id("final", recording_id))
    assert made.version == 5
    assert made == uuid.uuid5(DOCUMENTED_NAMESPACE, f"final:{recording_id}")
    assert str(made) == event_id("final", recording_id)  # canonical lower-case form


def test_failed_event_ids_are_uuid5_too_even_without_a_recording_id() -> None:
    """A failed event's id is UUIDv5 of its recording id, or of the raw bytes when there is none."""
    raw = _raw()
    named = failed_event(
        UndecodableAudio("x"), raw=raw, recording=None, recording_id="r-1", attempts=0
    )
    assert uuid.UUID(named["event_id"]) == uuid.uuid5(DOCUMENTED_NAMESPACE, "failed:r-1")
    garbage = b"\xff\xfe not json"
    anonymous = [
        failed_event(InvalidEvent("x"), raw=garbage, recording=None, recording_id=None, attempts=0)
        for _ in range(2)
    ]
    assert anonymous[0]["event_id"] == anonymous[1]["event_id"]
    assert uuid.UUID(anonymous[0]["event_id"]).version == 5
    other = failed_event(
        InvalidEvent("x"), raw=garbage + b"!", recording=None, recording_id=None, attempts=0
    )
    assert other["event_id"] != anonymous[0]["event_id"]


def _request(channel: int, role: str, index: int, start_s: float, end_s: float) -> Request:
    rate = 16_000
    return Request(
        channel, role, index, ((int(start_s * rate), int(end_s * rate)),), rate, end_s - start_s
    )


def test_a_split_call_becomes_turns_of_one_role_each() -> None:
    """Segments on the call timeline; consecutive ones of one role join into a turn; the text
    is one ``role: text`` line per turn; cost follows the billed seconds."""
    recording = parse_recording(_raw(call={"id": "c-1"}), DEFAULTS)
    results = [
        (_request(0, "agent", 0, 0.0, 2.0), Result("Hello.", "en", "neutral", 2, "q-1")),
        (_request(1, "customer", 0, 2.5, 4.0), Result("Hi.", "en", "happy", 2, "q-2")),
        (_request(1, "customer", 1, 4.5, 6.0), Result("A question.", "en", None, 2, None)),
        (_request(0, "agent", 1, 7.0, 8.0), Result("  ", "en", None, 1, "q-4")),  # no text
    ]
    final = final_event(
        recording,
        results,
        plan="turns",
        split=True,
        audio_seconds=8.0,
        attempts=4,
        timings={"fetch_s": 0.1, "decode_s": 0.2, "transcribe_s": 1.0, "total_s": 1.5},
        backend="dashscope",
        price_per_second_usd=0.5,
    )
    assert [(t["role"], t["text"], t["start_s"], t["end_s"]) for t in final["turns"]] == [
        ("agent", "Hello.", 0.0, 2.0),
        ("customer", "Hi. A question.", 2.5, 6.0),
    ]
    assert final["text"] == "agent: Hello.\ncustomer: Hi. A question."
    assert len(final["segments"]) == 3
    assert (final["billed_seconds"], final["estimated_cost_usd"]) == (7, 3.5)
    assert final["request_ids"] == ["q-1", "q-2", "q-4"]
    assert final["emotion"] in ("neutral", "happy")
    assert final["call"] == {"id": "c-1"}
    assert final["event_id"] == event_id("final", "r-1")
    assert not list(schemas.validator("final").iter_errors(final))


def test_a_mixed_call_has_no_turns() -> None:
    """Without split channels the text is the segments joined, and turns stay empty."""
    recording = parse_recording(_raw(), DEFAULTS)
    results = [
        (_request(0, "agent", 1, 3.0, 4.0), Result("world.", "en")),
        (_request(0, "agent", 0, 0.0, 2.0), Result("Hello", "en")),
    ]
    final = final_event(
        recording,
        results,
        plan="packed",
        split=False,
        audio_seconds=4.0,
        attempts=0,
        timings={"fetch_s": 0.1, "decode_s": 0.2, "transcribe_s": 1.0, "total_s": 1.5},
        backend="openai",
        price_per_second_usd=0.5,
    )
    assert (final["text"], final["turns"], final["language"]) == ("Hello world.", [], "en")
    assert final["attempts"] == 1  # at least the one that produced it
    assert not list(schemas.validator("final").iter_errors(final))
