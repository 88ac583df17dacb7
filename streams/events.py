"""The topic contracts in code: read a recording event, build partial, final and failed events.

The JSON Schemas in ``schemas/`` are the contract; inbound events are validated against theirs
with jsonschema, and the builders here produce what the outbound schemas describe (the tests
hold every produced event to its schema). Serialization is orjson, with its options fixed here.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import jsonschema
import orjson

import schemas
from streams.analytics import ToneRun, call_analytics, talk_spans
from streams.api_limits import MAX_CONTEXT_TOKENS, count_tokens
from streams.chunking import Plan, Request
from streams.errors import InvalidEvent, PipelineError
from streams.event_types import FailedEvent, FinalEvent, PartialEvent, Segment, Timings, Turn
from streams.netguard import redact_urls
from streams.transcribe import Result

__all__ = [
    "EVENT_NAMESPACE",
    "RecognitionDefaults",
    "Recording",
    "dumps",
    "event_id",
    "failed_event",
    "final_event",
    "now_iso",
    "parse_recording",
    "partial_event",
    "recording_event",
    "recording_id_of",
    "turns_of",
]

# UUIDv5 namespace of this service's event ids: the same recording id gives the same final
# event id on every worker and every redelivery, so consumers can deduplicate.
EVENT_NAMESPACE = uuid.UUID("6f0f3c1e-5a55-4c1f-9a43-2b7f3b4c8d10")
Layout = Literal["mix", "split", "auto"]


def dumps(event: Mapping[str, Any]) -> bytes:
    """Serialize an event: UTF-8 JSON, keys in insertion order, datetimes as RFC 3339 'Z'."""
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)


def now_iso() -> str:
    """Current UTC time in RFC 3339 with a 'Z'."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def event_id(kind: str, key: str) -> str:
    """Deterministic id of the ``kind`` event (final, failed) of recording ``key``."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{kind}:{key}"))


@dataclass(frozen=True)
class RecognitionDefaults:
    """Worker-wide defaults that a recording event may override."""

    model: str
    language: str | None = None
    enable_itn: bool = False
    context: str = ""
    layout: Layout = "mix"
    roles: tuple[str, ...] = ("agent", "customer")
    mixed_languages: bool = False


@dataclass(frozen=True)
class Recording:
    """A validated recording event with defaults applied."""

    recording_id: str
    audio_url: str
    model: str
    language: str | None
    enable_itn: bool
    context: str
    layout: Layout
    roles: tuple[str, ...]
    plan: Plan | None = None  # the event's channels.plan; None: the worker's setting decides
    mixed_languages: bool = False
    call: dict[str, Any] = field(default_factory=dict)
    original: dict[str, Any] = field(default_factory=dict)
    redaction: dict[str, Any] | None = None  # the event's own; None: the settings decide
    backend: str | None = None  # recognition.backend; None: STREAMS_ASR_BACKEND decides


def recording_id_of(raw: bytes) -> str | None:
    """The recording id of a raw (maybe invalid) event, or None: failed events are keyed by it."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        value = data.get("recording_id")
        if isinstance(value, str) and 0 < len(value) <= 200:
            return value
    return None


def parse_recording(raw: bytes, defaults: RecognitionDefaults) -> Recording:
    """Validate a recording event against its schema and apply the defaults.

    Raises:
        InvalidEvent: not JSON, not an object, an unknown ``schema_version``
            (code ``unsupported_schema_version``) or any other schema violation.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"recording event is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEvent(f"recording event must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version not in schemas.RECORDING_VERSIONS:
        accepted = " or ".join(map(str, schemas.RECORDING_VERSIONS))
        raise InvalidEvent(
            f"schema_version must be {accepted}, got {version!r}",
            code="unsupported_schema_version",
        )
    error = jsonschema.exceptions.best_match(schemas.validator("recording").iter_errors(data))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        raise InvalidEvent(f"recording event breaks its schema at {where}: {error.message}")

    recognition = data.get("recognition", {})
    channels = data.get("channels", {})
    context = recognition.get("context", defaults.context)
    if recognition.get("hotwords"):
        # The API has one context field; hotwords join it as a glossary line.
        context = "\n".join(filter(None, [context, " ".join(recognition["hotwords"])]))
    if (tokens := count_tokens(context)) > MAX_CONTEXT_TOKENS:
        # The API refuses the request with a 400; say so before anything is sent or billed.
        raise InvalidEvent(
            f"context and hotwords hold about {tokens} tokens; the API takes at most "
            f"{MAX_CONTEXT_TOKENS}"
        )
    return Recording(
        recording_id=data["recording_id"],
        audio_url=data["audio_url"],
        model=recognition.get("model", defaults.model),
        language=recognition.get("language", defaults.language),
        enable_itn=recognition.get("enable_itn", defaults.enable_itn),
        context=context,
        layout=channels.get("layout", defaults.layout),
        roles=tuple(channels.get("roles", defaults.roles)),
        plan=channels.get("plan"),
        mixed_languages=recognition.get("mixed_languages", defaults.mixed_languages),
        call=data.get("call", {}),
        original=data,
        redaction=data.get("redaction"),
        backend=recognition.get("backend"),
    )


def partial_event(
    recording_id: str,
    *,
    run: int,
    attempt: int,
    sequence: int,
    channel: int,
    role: str | None,
    chunk_index: int,
    chunk_start_s: float,
    delta: str,
    text: str,
) -> PartialEvent:
    """One delta of one request: ``text`` is the request's transcript so far."""
    return {
        "schema_version": schemas.SCHEMA_VERSION,
        "type": "partial",
        "recording_id": recording_id,
        "run": run,
        "attempt": attempt,
        "sequence": sequence,
        "channel": channel,
        "role": role,
        "chunk_index": chunk_index,
        "chunk_start_s": round(chunk_start_s, 3),
        "delta": delta,
        "text": text,
        "emitted_at": now_iso(),
    }


def final_event(
    recording: Recording,
    results: Sequence[tuple[Request, Result]],
    *,
    plan: Plan,
    split: bool,
    audio_seconds: float,
    attempts: int,
    timings: Mapping[str, float | None],
    backend: str,
    price_per_second_usd: float,
    hold: Sequence[tuple[float, float]] = (),
    tones: Sequence[ToneRun] = (),
) -> FinalEvent:
    """The final event of a recording from its requests' results, in request order.

    ``split``: channels transcribed apart, so turns and ``role: text`` lines. ``hold`` and
    ``tones``: the call's hold (no talk counted there) and tones, on its timeline.
    """
    segments: list[Segment] = []
    for request, result in results:
        text = result.text.strip()
        if not text:
            continue
        segment: Segment = {
            "channel": request.channel,
            "role": request.role,
            "start_s": round(request.speech_start_s, 3),
            "end_s": round(request.speech_end_s, 3),
            "text": text,
            "language": result.language,
            "emotion": result.emotion,
            "stretches": [
                [round(a / request.sample_rate, 3), round(b / request.sample_rate, 3)]
                for a, b in request.stretches
            ],
        }
        if result.truncated:
            segment["truncated"] = True
        segments.append(segment)
    segments.sort(key=lambda s: (s["start_s"], s["channel"]))
    turns = turns_of(segments) if split else []
    if split:
        text = "\n".join(f"{turn['role']}: {turn['text']}" for turn in turns)
    else:
        text = " ".join(s["text"] for s in segments)
    billed = sum(result.billed_seconds for _, result in results)
    requests = [request for request, _ in results]
    return {
        "schema_version": schemas.SCHEMA_VERSION,
        "type": "final",
        "event_id": event_id("final", recording.recording_id),
        "recording_id": recording.recording_id,
        "text": text,
        "language": _most_common(s["language"] for s in segments),
        "emotion": _most_common(s["emotion"] for s in segments),
        "segments": segments,
        "turns": turns,
        "plan": plan,
        "audio_seconds": round(audio_seconds, 3),
        "speech_seconds": round(sum(r.speech_s for r in requests), 3),
        "sent_seconds": round(sum(r.duration_s for r in requests), 3),
        "billed_seconds": billed,
        "estimated_cost_usd": round(billed * price_per_second_usd, 6),
        "backend": backend,
        "model": recording.model,
        "request_ids": [r.request_id for _, r in results if r.request_id],
        "attempts": max(attempts, 1),
        "timings": _rounded(timings),
        "call": recording.call,
        "completed_at": now_iso(),
        "analytics": call_analytics(
            talk_spans(requests, recording.roles if split else (None,)),
            segments,
            duration_s=audio_seconds,
            hold=hold,
            tones=tones,
        ).to_json(),
    }


def turns_of(segments: Iterable[Segment]) -> list[Turn]:
    """The conversation: segments in order of start, consecutive ones of one role joined."""
    turns: list[Turn] = []
    for segment in segments:
        if turns and turns[-1]["role"] == segment["role"]:
            turns[-1]["end_s"] = max(turns[-1]["end_s"], segment["end_s"])
            turns[-1]["text"] += " " + segment["text"]
            continue
        turns.append(
            {
                "role": segment["role"],
                "channel": segment["channel"],
                "start_s": segment["start_s"],
                "end_s": segment["end_s"],
                "text": segment["text"],
            }
        )
    return turns


def _most_common(values: Iterable[str | None]) -> str | None:
    counts = collections.Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def _rounded(timings: Mapping[str, float | None]) -> Timings:
    def r(name: str) -> float:
        return round(timings.get(name) or 0.0, 4)

    first = timings.get("first_delta_s")
    return {
        "fetch_s": r("fetch_s"),
        "decode_s": r("decode_s"),
        "transcribe_s": r("transcribe_s"),
        "first_delta_s": round(first, 4) if first is not None else None,
        "total_s": r("total_s"),
    }


def failed_event(
    error: PipelineError,
    *,
    raw: bytes,
    recording: Recording | None,
    recording_id: str | None,
    attempts: int,
) -> FailedEvent:
    """The failed event for ``error``, carrying the original event (or its raw bytes)."""
    original: dict[str, Any] | None = recording.original if recording else None
    if original is None:
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            decoded = None
        original = decoded if isinstance(decoded, dict) else None
    key = recording_id or uuid.uuid5(EVENT_NAMESPACE, raw.hex()).hex
    # The failed topic has more readers than the recordings topic: a presigned URL's query
    # (its signature) and userinfo are not echoed there; expired or not, they are secrets.
    if original is not None and isinstance(original.get("audio_url"), str):
        original = {**original, "audio_url": redact_urls(original["audio_url"])}
    return {
        "schema_version": schemas.SCHEMA_VERSION,
        "type": "failed",
        "event_id": event_id("failed", key),
        "recording_id": recording_id,
        "error": {
            "code": error.code,
            "stage": error.stage,
            "message": error.message,
            "retryable": error.retryable,
        },
        "attempts": attempts,
        "original_event": original,
        "original_raw": (
            None if original is not None else redact_urls(raw.decode("utf-8", errors="replace"))
        ),
        "failed_at": now_iso(),
    }


# Recording events as publishers build them (streams/client.py and the dev stack).
def recording_event(
    recording_id: str,
    audio_url: str,
    *,
    layout: Layout | None = None,
    roles: list[str] | None = None,
    plan: Literal["turns", "packed"] | None = None,
    language: str | None = None,
    context: str | None = None,
    hotwords: list[str] | None = None,
    enable_itn: bool | None = None,
    mixed_languages: bool | None = None,
    model: str | None = None,
    call: dict[str, Any] | None = None,
    backend: Literal["dashscope", "openai", "filetrans"] | None = None,
) -> dict[str, Any]:
    """A recording event (``schemas/recording.schema.json``); arguments left at None (or empty)
    are left out, so the worker's defaults apply. It carries the lowest ``schema_version`` that
    has every field given, for workers that predate it."""
    channels = {"layout": layout, "roles": list(roles) if roles else None, "plan": plan}
    recognition = {
        "language": language,
        "context": context,
        "hotwords": list(hotwords) if hotwords else None,
        "enable_itn": enable_itn,
        "mixed_languages": mixed_languages,
        "model": model,
        "backend": backend,
    }
    version = 1 if plan is None and mixed_languages is None else 2
    event: dict[str, Any] = {
        "schema_version": 4 if backend is not None else version,
        "recording_id": recording_id,
        "audio_url": audio_url,
    }
    for name, fields in (("channels", channels), ("recognition", recognition)):
        if given := {key: value for key, value in fields.items() if value is not None}:
            event[name] = given
    if call:
        event["call"] = dict(call)
    return event
