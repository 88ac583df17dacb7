"""A filetrans task as the ledger keeps it, and the final event built from its result.

The task entry (:class:`TaskEntry`, outcome ``task`` in the ``finalized`` table) carries all
that the final event needs besides the result: the recording's fields, the stretch maps, each
role's talk on the call timeline (for the analytics), the deadline, the run. So any worker
that owns the partition can finish the task from the entry alone, without the recording event
or its audio.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import schemas
from streams.analytics import ToneRun, call_analytics
from streams.event_types import FinalEvent, Timings
from streams.events import event_id, now_iso, turns_of
from streams.filetrans_audio import StretchMap
from streams.filetrans_result import Transcript, segments_of

__all__ = ["TaskEntry", "task_final"]


@dataclass(frozen=True)
class TaskEntry:
    """A submitted filetrans task (``task_id`` None: nothing to transcribe, no task needed)."""

    recording_id: str
    task_id: str | None
    source: str
    """``topic[partition]@offset`` of the recording event."""
    deadline: float
    """Unix time by which the recording must be answered."""
    started: float
    """Unix time the recording event was taken up."""
    run: int
    attempt_base: int
    model: str
    split: bool
    channels: list[int]
    """The call channel of each map: a section of the file's one track, or a track of its own."""
    roles: list[str | None]
    """Role of each call channel."""
    maps: list[StretchMap]
    """Each channel's stretch map."""
    audio_seconds: float
    speech_seconds: float
    sent_seconds: float
    talk: list[tuple[str | None, list[tuple[float, float]]]]
    hold: list[tuple[float, float]] = field(default_factory=list)
    tones: list[ToneRun] = field(default_factory=list)
    call: dict[str, Any] = field(default_factory=dict)
    original: dict[str, Any] = field(default_factory=dict)
    """The recording event (its URL's query left out), for a failed event to carry."""
    redaction: dict[str, Any] | None = None
    request_ids: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tracks: int = 0
    """Tracks of the submitted file; 0: one per channel (entries written before sections)."""

    @property
    def file_tracks(self) -> int:
        """Tracks the recogniser transcribes: one (the channels are sections of it) unless the
        file was passed through, or the entry predates sections (a track per channel)."""
        return self.tracks or len(self.channels)

    @property
    def file_seconds(self) -> float:
        """Length of the submitted file (its longest track)."""
        return max((m.file_seconds for m in self.maps), default=0.0)

    def to_value(self) -> dict[str, Any]:
        """The table value (JSON) of this entry."""
        return {
            "outcome": "task",
            "event_id": event_id("final", self.recording_id),
            "source": self.source,
            "at": now_iso(),
            "recording_id": self.recording_id,
            "task_id": self.task_id,
            "deadline": self.deadline,
            "started": self.started,
            "run": self.run,
            "attempt_base": self.attempt_base,
            "model": self.model,
            "split": self.split,
            "channels": self.channels,
            "roles": self.roles,
            "maps": [m.to_json() for m in self.maps],
            "audio_seconds": self.audio_seconds,
            "speech_seconds": self.speech_seconds,
            "sent_seconds": self.sent_seconds,
            "talk": [[role, [list(s) for s in spans]] for role, spans in self.talk],
            "hold": [list(h) for h in self.hold],
            "tones": [tone.to_json() for tone in self.tones],
            "call": self.call,
            "original": self.original,
            "redaction": self.redaction,
            "request_ids": self.request_ids,
            "timings": self.timings,
            "tracks": self.tracks,
        }

    @classmethod
    def from_value(cls, value: Any) -> TaskEntry | None:
        """Read a table value; None unless it is a well-formed *task* entry."""
        if not isinstance(value, dict) or value.get("outcome") != "task":
            return None
        try:
            return cls(
                recording_id=str(value["recording_id"]),
                task_id=str(value["task_id"]) if value.get("task_id") else None,
                source=str(value["source"]),
                deadline=float(value["deadline"]),
                started=float(value["started"]),
                run=int(value["run"]),
                attempt_base=int(value["attempt_base"]),
                model=str(value["model"]),
                split=bool(value["split"]),
                channels=[int(c) for c in value["channels"]],
                roles=list(value["roles"]),
                maps=[StretchMap.from_json(m) for m in value["maps"]],
                audio_seconds=float(value["audio_seconds"]),
                speech_seconds=float(value["speech_seconds"]),
                sent_seconds=float(value["sent_seconds"]),
                talk=[
                    (role, [(float(a), float(b)) for a, b in spans])
                    for role, spans in value["talk"]
                ],
                hold=[(float(a), float(b)) for a, b in value.get("hold") or []],
                tones=[ToneRun.from_json(tone) for tone in value.get("tones") or []],
                call=dict(value.get("call") or {}),
                original=dict(value.get("original") or {}),
                redaction=value.get("redaction"),
                request_ids=[str(r) for r in value.get("request_ids") or []],
                timings={k: float(v) for k, v in (value.get("timings") or {}).items()},
                tracks=int(value.get("tracks") or 0),
            )
        except (KeyError, TypeError, ValueError):
            return None


def task_final(
    entry: TaskEntry,
    transcript: Transcript,
    *,
    billed_seconds: int,
    attempts: int,
    price_per_second_usd: float,
    finished: float,
    request_ids: Iterable[str] = (),
) -> FinalEvent:
    """The final event of a recording from its task entry and the task's result."""
    segments = segments_of(transcript.sentences)
    turns = turns_of(segments) if entry.split else []
    if entry.split:
        text = "\n".join(f"{turn['role']}: {turn['text']}" for turn in turns)
    else:
        text = " ".join(s["text"] for s in segments)
    total = max(0.0, finished - entry.started)
    timings: Timings = {
        "fetch_s": round(entry.timings.get("fetch_s", 0.0), 4),
        "decode_s": round(entry.timings.get("decode_s", 0.0), 4),
        "first_delta_s": None,
        "transcribe_s": round(max(0.0, total - entry.timings.get("submitted_s", 0.0)), 4),
        "total_s": round(total, 4),
    }
    talk: Mapping[str | None, list[tuple[float, float]]] = dict(entry.talk)
    event: FinalEvent = {
        "schema_version": schemas.SCHEMA_VERSION,
        "type": "final",
        "event_id": event_id("final", entry.recording_id),
        "recording_id": entry.recording_id,
        "text": text,
        "language": _most_common(s["language"] for s in segments),
        "emotion": cast(Any, _most_common(s["emotion"] for s in segments)),
        "segments": segments,
        "turns": turns,
        "plan": "task",
        "audio_seconds": round(entry.audio_seconds, 3),
        "speech_seconds": round(entry.speech_seconds, 3),
        "sent_seconds": round(entry.sent_seconds, 3),
        "billed_seconds": billed_seconds,
        "estimated_cost_usd": round(billed_seconds * price_per_second_usd, 6),
        "backend": "filetrans",
        "model": entry.model,
        "request_ids": [*entry.request_ids, *request_ids],
        "attempts": max(attempts, 1),
        "timings": timings,
        "call": entry.call,
        "completed_at": now_iso(),
        "analytics": call_analytics(
            talk, segments, duration_s=entry.audio_seconds, hold=entry.hold, tones=entry.tones
        ).to_json(),
        "sentences": transcript.sentences,
        "words": transcript.words,
    }
    return event


def _most_common(values: Iterable[str | None]) -> str | None:
    counts = collections.Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None
