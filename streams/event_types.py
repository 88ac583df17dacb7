"""The shapes of the topic payloads as TypedDicts, one per JSON Schema object in ``schemas/``.

The schemas stay the contract; these let the type checker hold the code that builds, publishes
and keeps events to the same keys (tests/unit/test_event_types.py compares both: every required
schema property is a required key here, every optional one an optional key, and nothing else).
"""

# No ``from __future__ import annotations``: TypedDict reads NotRequired only from evaluated
# annotations, and the schema test compares the required and optional keys.
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "Analytics",
    "Channels",
    "EmotionSpan",
    "ErrorInfo",
    "FailedEvent",
    "FinalEvent",
    "PartialEvent",
    "Recognition",
    "RecordingEvent",
    "Redaction",
    "RedactionItem",
    "Redactions",
    "RoleAnalytics",
    "Segment",
    "Sentence",
    "TerminalEvent",
    "Timings",
    "ToneSpan",
    "Turn",
    "Word",
]


class Channels(TypedDict):
    """``channels`` of a recording event: how its channels are transcribed."""

    layout: NotRequired[Literal["mix", "split", "auto"]]
    roles: NotRequired[list[str]]
    plan: NotRequired[Literal["turns", "packed"]]


class Recognition(TypedDict):
    """``recognition`` of a recording event: per-recording recognition options."""

    language: NotRequired[str | None]
    enable_itn: NotRequired[bool]
    mixed_languages: NotRequired[bool]
    context: NotRequired[str]
    hotwords: NotRequired[list[str]]
    model: NotRequired[str]
    backend: NotRequired[Literal["dashscope", "openai", "filetrans"]]


class Redaction(TypedDict):
    """``redaction`` of a recording event: overrides the worker's redaction settings."""

    kinds: NotRequired[list[str]]
    style: NotRequired[Literal["label", "hash", "mask"]]


class RecordingEvent(TypedDict):
    """An inbound recording event (``recording.schema.json``)."""

    schema_version: int
    recording_id: str
    audio_url: str
    call: NotRequired[dict[str, Any]]
    channels: NotRequired[Channels]
    recognition: NotRequired[Recognition]
    redaction: NotRequired[Redaction]


class PartialEvent(TypedDict):
    """One delta of one request's transcript (``partial.schema.json``)."""

    schema_version: int
    type: Literal["partial"]
    recording_id: str
    run: int
    attempt: int
    sequence: int
    channel: int
    role: str | None
    chunk_index: int
    chunk_start_s: float
    delta: str
    text: str
    emitted_at: str
    redacted: NotRequired[bool]
    held_back_chars: NotRequired[int]


class Segment(TypedDict):
    """A recognised piece of the call: one per request that returned text."""

    channel: int
    role: str | None
    start_s: float
    end_s: float
    text: str
    language: str | None
    emotion: str | None
    stretches: NotRequired[list[list[float]]]
    truncated: NotRequired[bool]


class Turn(TypedDict):
    """Consecutive segments of one role, joined (split calls only)."""

    role: str | None
    channel: int
    start_s: float
    end_s: float
    text: str


class Sentence(TypedDict):
    """One sentence of the filetrans backend, on the call timeline in seconds."""

    start: float
    end: float
    text: str
    channel: int
    role: str | None
    language: str | None
    emotion: str | None


class Word(TypedDict):
    """One word of the filetrans backend, on the call timeline in seconds."""

    start: float
    end: float
    text: str
    sentence: NotRequired[int]


class RedactionItem(TypedDict):
    """One replacement in a final event: the field (a JSON pointer), kind and position there."""

    field: str
    kind: str
    start: int
    end: int


class Redactions(TypedDict):
    """``redactions`` of a final event: what was redacted, never the values."""

    kinds: list[str]
    style: str
    counts: dict[str, int]
    items: list[RedactionItem]


class Timings(TypedDict):
    """Stage durations of a recording, in seconds."""

    fetch_s: float
    decode_s: float
    first_delta_s: NotRequired[float | None]
    transcribe_s: float
    total_s: float


class RoleAnalytics(TypedDict):
    """One role's figures in ``analytics`` (docs/analytics.md)."""

    role: str | None
    talk_s: float
    talk_share: float
    words: int
    words_per_minute: float | None
    interruptions: int | None


class EmotionSpan(TypedDict):
    """One entry of the emotion timeline."""

    role: str | None
    start_s: float
    end_s: float
    emotion: str


class ToneSpan(TypedDict):
    """An entry of ``analytics.tones``: DTMF or a call-progress tone on one role's channel."""

    kind: str
    role: str | None
    start_s: float
    end_s: float


class Analytics(TypedDict):
    """``analytics`` of a final event: talk, silence, overlap, hold (docs/analytics.md)."""

    duration_s: float
    talk_s: float
    non_talk_s: float
    hold_s: float
    longest_silence_s: float
    longest_silence_start_s: float | None
    overlap_s: float | None
    overlaps: int | None
    interruptions: int | None
    first_agent_response_s: float | None
    roles: list[RoleAnalytics]
    emotions: list[EmotionSpan]
    dtmf_s: float
    tone_s: float
    tones: list[ToneSpan]


class FinalEvent(TypedDict):
    """A recording's transcript (``final.schema.json``)."""

    schema_version: int
    type: Literal["final"]
    event_id: str
    recording_id: str
    text: str
    language: str | None
    emotion: str | None
    segments: list[Segment]
    turns: list[Turn]
    plan: Literal["stretches", "turns", "packed", "task"]
    audio_seconds: float
    speech_seconds: float
    sent_seconds: float
    billed_seconds: int
    estimated_cost_usd: float
    backend: str
    model: str
    request_ids: list[str]
    attempts: NotRequired[int]
    timings: Timings
    call: dict[str, Any]
    completed_at: str
    analytics: NotRequired[Analytics]
    redactions: NotRequired[Redactions]
    sentences: NotRequired[list[Sentence]]
    words: NotRequired[list[Word]]


class ErrorInfo(TypedDict):
    """``error`` of a failed event."""

    code: str
    stage: str
    message: str
    retryable: bool


class FailedEvent(TypedDict):
    """A recording that got no transcript, and why (``failed.schema.json``)."""

    schema_version: int
    type: Literal["failed"]
    event_id: str
    recording_id: str | None
    error: ErrorInfo
    attempts: int
    original_event: dict[str, Any] | None
    original_raw: str | None
    failed_at: str


TerminalEvent = FinalEvent | FailedEvent
"""What answers a recording: exactly one of these is published per recording."""
