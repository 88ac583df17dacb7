"""Call analytics from the VAD's speech map and the recognised segments (docs/analytics.md).

Everything is measured on the call's timeline from what the plan already holds: the speech
stretches of each channel (the VAD map, pauses shorter than the silence threshold bridged) and
the segments the recogniser returned (words, emotion). Under the ``packed`` plan one request
carries many stretches, so talk, silence, overlap and interruption come from the stretches,
never from the requests' or turns' coarse bounds.

Usage::

    talk = talk_spans(requests)  # {role: [(start_s, end_s), ...]}
    figures = call_analytics(talk, segments, duration_s=62.4, hold=[(20.0, 35.5)], tones=tones)
    event["analytics"] = figures.to_json()
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from streams.chunking import Request
from streams.event_types import Analytics, EmotionSpan, RoleAnalytics, Segment, ToneSpan

__all__ = [
    "BACKCHANNEL_S",
    "MIN_OVERLAP_S",
    "VAD_HANGOVER_S",
    "VAD_ONSET_S",
    "CallAnalytics",
    "Emotion",
    "RoleFigures",
    "ToneRun",
    "call_analytics",
    "speech_spans",
    "talk_spans",
    "word_count",
]

Span = tuple[float, float]

BACKCHANNEL_S = 1.0
"""Talk shorter than this ("yeah", "mm-hm") is no turn: it interrupts nobody and answers
nobody. The same second as the ``turns`` plan's ``backchannel_s``."""
MIN_OVERLAP_S = 0.1
"""Both parties at once for less than this is the VAD's edge (it decides per 30 ms frame and
keeps a word's tail), not an overlap."""

VAD_ONSET_S = 0.04
"""WebRTC's VAD (aggressiveness 1) calls speech this much before a word's onset ..."""
VAD_HANGOVER_S = 0.21
"""... and keeps calling it speech this much after the word's end (its hang-over frames and
the word's decay). Measured on the call corpus (tests/benchmarks/bench_analytics.py: median
edge errors of 56 stretches, spread 0.03 s); taken off every talk span's edges, since a
call of 40 stretches would otherwise gain 10 s of talk."""

# One word per CJK character: those scripts put no spaces between words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\s{_CJK}]*\w[^\s{_CJK}]*")


@dataclass(frozen=True)
class RoleFigures:
    """One role's share of the call."""

    role: str | None
    talk_s: float
    words: int
    interruptions: int
    """Turns of this role that began while another role was talking."""

    @property
    def words_per_minute(self) -> float | None:
        """Speaking rate over the role's talk time; None without a second of talk."""
        return round(self.words * 60 / self.talk_s, 1) if self.talk_s >= 1.0 else None


@dataclass(frozen=True)
class Emotion:
    """A stretch of the call in which one role's speech carried one emotion."""

    role: str | None
    start_s: float
    end_s: float
    emotion: str


@dataclass(frozen=True)
class ToneRun:
    """Seconds of one role's channel holding DTMF (keyed digits) or a call-progress tone."""

    kind: str
    """``"dtmf"`` or ``"tone"`` (ringback, busy, dial: streams/tones.py)."""
    role: str | None
    start_s: float
    end_s: float

    def to_json(self) -> ToneSpan:
        """An entry of the ``analytics.tones`` timeline (and of a filetrans ledger entry)."""
        return {
            "kind": self.kind,
            "role": self.role,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, object]) -> ToneRun:
        """Read what :meth:`to_json` wrote."""
        role = value["role"]
        return cls(
            str(value["kind"]),
            None if role is None else str(role),
            float(str(value["start_s"])),
            float(str(value["end_s"])),
        )


@dataclass(frozen=True)
class CallAnalytics:
    """The figures of one call; None where the call cannot tell (see docs/analytics.md)."""

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
    roles: tuple[RoleFigures, ...]
    emotions: tuple[Emotion, ...]
    dtmf_s: float = 0.0
    tone_s: float = 0.0
    tones: tuple[ToneRun, ...] = ()

    def to_json(self) -> Analytics:
        """The ``analytics`` object of the final event."""
        roles: list[RoleAnalytics] = [
            {
                "role": r.role,
                "talk_s": r.talk_s,
                "talk_share": round(r.talk_s / self.talk_s, 3) if self.talk_s else 0.0,
                "words": r.words,
                "words_per_minute": r.words_per_minute,
                "interruptions": r.interruptions if self.interruptions is not None else None,
            }
            for r in self.roles
        ]
        emotions: list[EmotionSpan] = [
            {"role": e.role, "start_s": e.start_s, "end_s": e.end_s, "emotion": e.emotion}
            for e in self.emotions
        ]
        return {
            "duration_s": self.duration_s,
            "talk_s": self.talk_s,
            "non_talk_s": self.non_talk_s,
            "hold_s": self.hold_s,
            "longest_silence_s": self.longest_silence_s,
            "longest_silence_start_s": self.longest_silence_start_s,
            "overlap_s": self.overlap_s,
            "overlaps": self.overlaps,
            "interruptions": self.interruptions,
            "first_agent_response_s": self.first_agent_response_s,
            "roles": roles,
            "emotions": emotions,
            "dtmf_s": self.dtmf_s,
            "tone_s": self.tone_s,
            "tones": [tone.to_json() for tone in self.tones],
        }


def speech_spans(request: Request) -> list[Span]:
    """The speech of one request in seconds on the call's timeline: its stretches less padding.

    A request keeps only its outer speech bounds and its total speech, so the padding between
    its stretches is inferred from them: every inner edge carries the same pad (the plan's
    ``pad_s``). Stretches that touch (pads that met, a long region cut in two) stay joined.
    """
    rate = request.sample_rate
    stretches = request.stretches
    lo, hi = request.speech_bounds or (request.start, request.end)
    junctions = [a > b for (_, b), (a, _) in itertools.pairwise(stretches)]
    sent = sum(b - a for a, b in stretches)
    outer = (lo - stretches[0][0]) + (stretches[-1][1] - hi)
    padded = 2 * sum(junctions)
    pad = max(0.0, (sent - request.speech_s * rate - outer) / padded) if padded else 0.0
    spans: list[Span] = []
    for i, (a, b) in enumerate(stretches):
        start = lo if i == 0 else a + (pad if junctions[i - 1] else 0.0)
        end = hi if i == len(stretches) - 1 else b - (pad if junctions[i] else 0.0)
        if end > start:
            spans.append((start / rate, end / rate))
    return _union(spans)


def talk_spans(
    requests: Iterable[Request],
    roles: Sequence[str | None] = (),
    *,
    onset_s: float = VAD_ONSET_S,
    hangover_s: float = VAD_HANGOVER_S,
) -> dict[str | None, list[Span]]:
    """Each role's talk: its speech with the VAD's early onset and hang-over taken off the
    edges, channels of one role joined; ``roles`` are listed even when silent."""
    talk: dict[str | None, list[Span]] = {role: [] for role in roles}
    for request in requests:
        spans = [(a + onset_s, b - hangover_s) for a, b in speech_spans(request)]
        talk.setdefault(request.role, []).extend(spans)
    return {role: _union(spans) for role, spans in talk.items()}


def word_count(text: str) -> int:
    """Words of a transcript: runs between spaces holding a letter or digit; one per CJK
    character."""
    return len(_WORD.findall(text))


def call_analytics(
    talk: Mapping[str | None, Sequence[Span]],
    segments: Sequence[Segment],
    *,
    duration_s: float,
    hold: Sequence[Span] = (),
    tones: Sequence[ToneRun] = (),
    agent: str = "agent",
) -> CallAnalytics:
    """The figures of a call from each role's talk spans and the recognised segments.

    ``talk`` maps each role (None: a mixed call's one channel) to its speech, in seconds on
    the call's timeline; ``hold`` is where the call was on hold (music, silence on hold): no
    talk is counted there. ``tones``: the DTMF and call-progress tones the music detector
    found (call-progress tones lie inside ``hold`` too; DTMF is nobody's talk and no hold).
    ``agent`` is the role whose first response is timed.
    """
    hold_spans = _clip(_union(hold), duration_s)
    spans = {role: _minus(_clip(_union(s), duration_s), hold_spans) for role, s in talk.items()}
    anyone = _union([s for role_spans in spans.values() for s in role_spans])
    talk_s = _length(anyone)
    hold_s = _length(hold_spans)
    silence = _longest_gap(_union([*anyone, *hold_spans]), anyone)
    two_sided = sum(role is not None for role in spans) >= 2
    overlap = _overlap(spans) if two_sided else None
    words: dict[str | None, int] = {}
    for segment in segments:
        words[segment["role"]] = words.get(segment["role"], 0) + word_count(segment["text"])
    cut_in = _interruptions(spans)
    roles = tuple(
        RoleFigures(role, round(_length(s), 3), words.get(role, 0), cut_in.get(role, 0))
        for role, s in spans.items()
    )
    return CallAnalytics(
        duration_s=round(duration_s, 3),
        talk_s=round(talk_s, 3),
        non_talk_s=round(max(0.0, duration_s - talk_s - hold_s), 3),
        hold_s=round(hold_s, 3),
        longest_silence_s=round(silence[1] - silence[0], 3) if silence else 0.0,
        longest_silence_start_s=round(silence[0], 3) if silence else None,
        overlap_s=round(_length(overlap), 3) if overlap is not None else None,
        overlaps=len(overlap) if overlap is not None else None,
        interruptions=sum(cut_in.values()) if two_sided else None,
        first_agent_response_s=_first_response(spans, agent) if two_sided else None,
        roles=roles,
        emotions=_emotions(segments),
        dtmf_s=round(_tone_seconds(tones, "dtmf", duration_s), 3),
        tone_s=round(_tone_seconds(tones, "tone", duration_s), 3),
        tones=tuple(sorted(tones, key=lambda t: (t.start_s, t.role or ""))),
    )


def _tone_seconds(tones: Sequence[ToneRun], kind: str, duration_s: float) -> float:
    """Seconds holding tones of ``kind`` on any channel (counted once where channels agree)."""
    return _length(_clip(_union((t.start_s, t.end_s) for t in tones if t.kind == kind), duration_s))


def _union(spans: Iterable[Span]) -> list[Span]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _clip(spans: Sequence[Span], duration_s: float) -> list[Span]:
    return [(max(a, 0.0), min(b, duration_s)) for a, b in spans if b > 0 and a < duration_s]


def _minus(spans: Sequence[Span], holes: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    for a, b in spans:
        for h0, h1 in holes:
            if h1 <= a or h0 >= b:
                continue
            if h0 > a:
                out.append((a, h0))
            a = max(a, h1)
            if a >= b:
                break
        if a < b:
            out.append((a, b))
    return out


def _length(spans: Iterable[Span]) -> float:
    return sum(b - a for a, b in spans)


def _longest_gap(busy: Sequence[Span], talk: Sequence[Span]) -> Span | None:
    """The longest stretch with neither talk nor hold, between the first and the last talk."""
    if not talk:
        return None
    inside = [(b, a) for (_, b), (a, _) in itertools.pairwise(busy)]
    inside = [(a, b) for a, b in inside if a >= talk[0][0] and b <= talk[-1][1]]
    return max(inside, key=lambda g: g[1] - g[0], default=None)


def _overlap(spans: Mapping[str | None, Sequence[Span]]) -> list[Span]:
    """Where two roles or more talk at once, for at least :data:`MIN_OVERLAP_S`."""
    edges = sorted((t, d) for s in spans.values() for a, b in s for t, d in ((a, 1), (b, -1)))
    out: list[Span] = []
    count, since = 0, 0.0
    for t, d in edges:  # ends sort before starts at one instant: touching is no overlap
        if d == 1 and count == 1:
            since = t
        if d == -1 and count == 2 and t - since >= MIN_OVERLAP_S:
            out.append((since, t))
        count += d
    return _union(out)


def _interruptions(spans: Mapping[str | None, Sequence[Span]]) -> dict[str | None, int]:
    """Per role: its turns (talk of :data:`BACKCHANNEL_S` or more) that began while another
    role's talk was running and went on for at least :data:`MIN_OVERLAP_S` more."""
    out: dict[str | None, int] = {}
    for role, own in spans.items():
        others = [s for other, o in spans.items() if other != role for s in o]
        out[role] = sum(
            1
            for a, b in own
            if b - a >= BACKCHANNEL_S
            and any(o0 < a and o1 - a >= MIN_OVERLAP_S for o0, o1 in others)
        )
    return out


def _first_response(spans: Mapping[str | None, Sequence[Span]], agent: str) -> float | None:
    """From the end of the customer's talk before it to the start of the agent's first turn
    after the customer first spoke; negative when the agent began in overlap."""
    customer = _union([s for role, o in spans.items() if role != agent for s in o])
    turns = [a for a, b in spans.get(agent, ()) if b - a >= BACKCHANNEL_S]
    if not customer:
        return None
    start = next((a for a in turns if a > customer[0][0]), None)
    if start is None:
        return None
    before = max(b for a, b in customer if a < start)
    return round(start - before, 3)


def _emotions(segments: Sequence[Segment]) -> tuple[Emotion, ...]:
    """Each role's segments with an emotion, in order; runs of one emotion joined."""
    runs: dict[str | None, list[Emotion]] = {}
    for segment in sorted(segments, key=lambda s: s["start_s"]):
        emotion = segment["emotion"]
        if emotion is None:
            continue
        role, start, end = segment["role"], segment["start_s"], segment["end_s"]
        mine = runs.setdefault(role, [])
        if mine and mine[-1].emotion == emotion:
            mine[-1] = Emotion(role, mine[-1].start_s, max(mine[-1].end_s, end), emotion)
        else:
            mine.append(Emotion(role, start, end, emotion))
    every = [e for role_runs in runs.values() for e in role_runs]
    return tuple(sorted(every, key=lambda e: (e.start_s, e.role or "")))
