"""Plan recognition requests: speech stretches from the VAD, grouped into requests within limits.

The plan works on a :class:`SpeechMap` per channel (a speech flag and a level per VAD frame)
and returns :class:`Request` objects whose stretches are sample ranges on the call's timeline:

1. speech regions are runs of speech frames; runs shorter than ``min_speech_s`` (clicks) go;
2. regions whose gap is shorter than ``silence_s`` merge, so that a pause inside a sentence is
   sent and a long silence (hold, the other party talking) is not;
3. each region keeps ``pad_s`` of context on both sides, so a word's soft onset or tail is
   not shaved off by a VAD that decides per frame; a region whose speech lies inside its
   neighbour's padding joins the neighbour instead of becoming a request of padding;
4. a region longer than one request is cut inside its longest pause that leaves at least half a
   request behind it (else inside the longest pause of the first half), at the pause's quietest
   frame; a region with no pause at all is cut at its quietest frame, a last resort that may
   fall between two words spoken without a breath;
5. the stretches are grouped into requests by a plan (:data:`Plan`): one per stretch, one per
   turn, or packed up to the limits. The silence between the stretches of one request is left
   out, and a request's outer padding is trimmed when that saves a second of billing.

No cut ever falls inside a frame the VAD called speech unless step 4's last resort applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

__all__ = [
    "ChunkPolicy",
    "Plan",
    "Request",
    "SpeechMap",
    "max_chunk_seconds",
    "plan_requests",
    "plan_spans",
]

Plan = Literal["stretches", "turns", "packed"]

# FLAC never stores a block bigger than the verbatim samples plus a frame header (about 16 bytes
# per 4096 samples); 1 % covers that and the stream header of a chunk of any length.
_FLAC_WORST_RATIO = 1.01
_URI_PREFIX = len("data:audio/flac;base64,")


@dataclass(frozen=True)
class SpeechMap:
    """Where one channel has speech: a flag and a level (dBFS) per VAD frame."""

    frame_samples: int
    speech: np.ndarray
    """bool per frame."""
    level_db: np.ndarray
    """float32 per frame: RMS level in dB relative to full scale (-100 for digital silence)."""
    samples: int
    """Length of the channel in samples (the last frame may be partial)."""

    @property
    def frames(self) -> int:
        """Number of frames."""
        return len(self.speech)


@dataclass(frozen=True)
class Request:
    """What goes to the recogniser in one request: stretches of one channel, played back to back.

    Between two stretches the silence of the call is left out: only their padding separates
    them. Times in the request's audio map back to the call's timeline with :meth:`call_time`.
    """

    channel: int
    role: str | None
    index: int
    """Position among the requests of its channel."""
    stretches: tuple[tuple[int, int], ...]
    """Samples ``[start, end)`` of the channel, on the call's timeline, in order."""
    sample_rate: int
    speech_s: float = 0.0
    """Seconds inside the stretches that the VAD called speech (pauses shorter than the
    silence threshold included, padding excluded)."""
    speech_bounds: tuple[int, int] | None = None
    """Samples where the request's speech starts and ends on the call's timeline (padding
    excluded); None: the stretches' own bounds."""

    @property
    def speech_start_s(self) -> float:
        """Where the request's speech starts on the call's timeline (a turn's start)."""
        return (self.speech_bounds or (self.start, self.end))[0] / self.sample_rate

    @property
    def speech_end_s(self) -> float:
        """Where the request's speech ends on the call's timeline (a turn's end)."""
        return (self.speech_bounds or (self.start, self.end))[1] / self.sample_rate

    @property
    def start(self) -> int:
        """First sample on the call's timeline."""
        return self.stretches[0][0]

    @property
    def end(self) -> int:
        """Sample after the last one, on the call's timeline."""
        return self.stretches[-1][1]

    @property
    def start_s(self) -> float:
        """Where the request's audio starts on the call's timeline, in seconds."""
        return self.start / self.sample_rate

    @property
    def end_s(self) -> float:
        """Where the request's audio ends on the call's timeline, in seconds."""
        return self.end / self.sample_rate

    @property
    def duration_s(self) -> float:
        """Seconds of audio sent (and billed, rounded up)."""
        return sum(b - a for a, b in self.stretches) / self.sample_rate

    def call_time(self, offset_s: float) -> float:
        """The call-timeline time of ``offset_s`` seconds into the request's audio."""
        offset = round(offset_s * self.sample_rate)
        for a, b in self.stretches:
            if offset <= b - a:
                return (a + offset) / self.sample_rate
            offset -= b - a
        return self.end_s


@dataclass(frozen=True)
class ChunkPolicy:
    """How speech becomes requests; every length is in seconds.

    Usage::

        policy = ChunkPolicy(silence_s=1.0, max_chunk_s=max_chunk_seconds(300, 10 * 2**20))
        spans = plan_spans(speech_map, policy, sample_rate=16_000)
    """

    silence_s: float = 1.0
    """A gap in speech at least this long is not sent, and ends a request."""
    pad_s: float = 0.2
    """Audio kept before and after each speech region."""
    min_speech_s: float = 0.09
    """Speech runs shorter than this (clicks, line noise) are ignored."""
    max_chunk_s: float = 240.0
    """Longest request; see :func:`max_chunk_seconds`."""
    min_pad_s: float = 0.05
    """Least padding left at a request's ends when trimming saves a billed second."""
    backchannel_s: float = 1.0
    """Under the ``turns`` plan, another channel's speech shorter than this (a "yeah", an
    "mm-hm") does not end a turn."""
    music_filter: bool = True
    """Whether music and tones (streams/music.py) are taken out of the speech before planning;
    decoding reads it, the planner itself never sees music."""

    def __post_init__(self) -> None:
        if self.max_chunk_s <= 2 * self.pad_s or self.silence_s < 0 or self.pad_s < 0:
            raise ValueError(f"expected max_chunk_s > 2 * pad_s >= 0 and silence_s >= 0: {self!r}")


def max_chunk_seconds(max_request_s: float, max_request_bytes: int, sample_rate: int) -> float:
    """The longest chunk that fits both per-request limits whatever the audio sounds like.

    ``max_request_bytes`` bounds the base64 ``data:`` URI. FLAC of noise is as big as raw PCM,
    so the bound assumes no compression at all: 10 MiB gives about 245 s of 16 kHz mono.
    """
    raw_bytes = (max_request_bytes - _URI_PREFIX - 64) * 3 / 4
    by_bytes = raw_bytes / (sample_rate * 2 * _FLAC_WORST_RATIO)
    return min(max_request_s, by_bytes)


def plan_requests(
    speech_maps: Sequence[SpeechMap],
    roles: tuple[str | None, ...],
    policy: ChunkPolicy,
    *,
    plan: Plan,
    sample_rate: int,
) -> list[Request]:
    """The requests of a recording under ``plan``, each within the per-request limits.

    - ``stretches``: one request per speech stretch (the most requests: a request for every
      backchannel, each rounded up to a whole second);
    - ``turns``: one request per turn: a channel's stretches travel together until speech of
      another channel comes between them (a backchannel shorter than ``policy.backchannel_s``
      does not end a turn), so each request is one party's turn, with its exact times;
    - ``packed``: a channel's stretches fill requests up to the limits, in order: the fewest
      requests, and billed seconds closest to the speech sent, but turns only as fine as the
      requests.

    A request's outer padding is trimmed (down to ``policy.min_pad_s``) when that saves a
    billed second: the API rounds each request up.
    """
    spans = [_stretches(m, policy, sample_rate=sample_rate) for m in speech_maps]
    requests: list[Request] = []
    for channel, stretches in enumerate(spans):
        if plan == "stretches":
            groups = [[stretch] for stretch in stretches]
        elif plan == "turns":
            others = [
                s for c, channel_spans in enumerate(spans) if c != channel for s in channel_spans
            ]
            groups = _turn_groups(stretches, others, policy, sample_rate)
        elif plan == "packed":
            groups = _pack(stretches, policy.max_chunk_s * sample_rate)
        else:
            raise ValueError(f"unknown plan {plan!r}")
        for index, group in enumerate(_within_limit(groups, policy.max_chunk_s * sample_rate)):
            trimmed = _trim_for_rounding(group, policy, sample_rate)
            requests.append(
                Request(
                    channel=channel,
                    role=roles[channel],
                    index=index,
                    stretches=tuple((s.start, s.end) for s in trimmed),
                    sample_rate=sample_rate,
                    speech_s=sum(s.speech_end - s.speech_start for s in trimmed) / sample_rate,
                    speech_bounds=(trimmed[0].speech_start, trimmed[-1].speech_end),
                )
            )
    return requests


def plan_spans(
    speech_map: SpeechMap, policy: ChunkPolicy, *, sample_rate: int
) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of one channel's speech stretches, each within the limits."""
    return [(s.start, s.end) for s in _stretches(speech_map, policy, sample_rate=sample_rate)]


@dataclass(frozen=True)
class _Stretch:
    """One stretch of speech in samples: padded bounds, and the speech inside them."""

    start: int
    end: int
    speech_start: int
    speech_end: int


def _stretches(speech_map: SpeechMap, policy: ChunkPolicy, *, sample_rate: int) -> list[_Stretch]:
    frame_s = speech_map.frame_samples / sample_rate
    regions = _regions(speech_map.speech, min_len=max(1, round(policy.min_speech_s / frame_s)))
    if not regions:
        return []
    pad = round(policy.pad_s / frame_s)
    silence = max(1, round(policy.silence_s / frame_s))
    merged: list[list[int]] = []
    for start, end in regions:
        if merged and start - merged[-1][1] < silence:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    max_frames = max(1, int(policy.max_chunk_s / frame_s) - 2 * pad)
    frames: list[list[int]] = []  # [padded start, padded end, speech start, speech end]
    for start, end in merged:
        for piece_start, piece_end in _cut(speech_map, start, end, max_frames):
            first = max(0, piece_start - pad)
            last = min(speech_map.frames, piece_end + pad)
            if frames and first < frames[-1][1]:
                if piece_end <= frames[-1][1]:
                    # Its speech lies inside the previous stretch's padding: no request that
                    # the VAD kept only as padding.
                    longest = frames[-1][0] + max_frames + 2 * pad
                    frames[-1][1] = max(frames[-1][1], min(last, longest))
                    frames[-1][3] = max(frames[-1][3], piece_end)
                    continue
                first = frames[-1][1]  # pads of neighbours cut by a short silence may meet
            frames.append([first, last, piece_start, piece_end])
    samples = speech_map.samples
    step = speech_map.frame_samples
    return [
        _Stretch(a * step, min(b * step, samples), min(c * step, samples), min(d * step, samples))
        for a, b, c, d in frames
        if a * step < samples
    ]


def _turn_groups(
    stretches: list[_Stretch], others: list[_Stretch], policy: ChunkPolicy, sample_rate: int
) -> list[list[_Stretch]]:
    """Group a channel's stretches into turns: split where another channel's speech comes
    between two of them (unless it is a backchannel shorter than ``policy.backchannel_s``)."""
    backchannel = policy.backchannel_s * sample_rate
    turn_taking = sorted(
        (o.speech_start, o.speech_end)
        for o in others
        if o.speech_end - o.speech_start >= backchannel
    )
    groups: list[list[_Stretch]] = []
    for stretch in stretches:
        if groups:
            gap = (groups[-1][-1].speech_end, stretch.speech_start)
            if not any(a < gap[1] and b > gap[0] for a, b in turn_taking):
                groups[-1].append(stretch)
                continue
        groups.append([stretch])
    return groups


def _pack(stretches: list[_Stretch], max_samples: float) -> list[list[_Stretch]]:
    """Fill requests with consecutive stretches up to ``max_samples`` of audio each."""
    groups: list[list[_Stretch]] = []
    size = 0
    for stretch in stretches:
        length = stretch.end - stretch.start
        if groups and size + length <= max_samples:
            groups[-1].append(stretch)
            size += length
        else:
            groups.append([stretch])
            size = length
    return groups


def _within_limit(groups: list[list[_Stretch]], max_samples: float) -> list[list[_Stretch]]:
    """Split any group (a long turn) whose audio exceeds one request, between stretches."""
    return [part for group in groups for part in _pack(group, max_samples)]


def _trim_for_rounding(
    group: list[_Stretch], policy: ChunkPolicy, sample_rate: int
) -> list[_Stretch]:
    """Trim the outer padding of a request when that brings it under a whole second.

    The API bills ``ceil(seconds)`` per request: 3.1 s costs 4 s, but with 0.1 s less padding
    it costs 3. Padding never goes below ``policy.min_pad_s``.
    """
    first, last = group[0], group[-1]
    length = sum(s.end - s.start for s in group)
    excess = length % sample_rate
    if excess == 0:
        return group
    floor_pad = round(policy.min_pad_s * sample_rate)
    lead = max(0, first.speech_start - first.start - floor_pad)
    tail = max(0, last.end - last.speech_end - floor_pad)
    if lead + tail < excess or length - excess <= 0:
        return group
    cut_tail = min(tail, excess)
    cut_lead = excess - cut_tail
    group = list(group)
    if len(group) == 1:
        only = group[0]
        return [replace(only, start=only.start + cut_lead, end=only.end - cut_tail)]
    group[0] = replace(first, start=first.start + cut_lead)
    group[-1] = replace(last, end=last.end - cut_tail)
    return group


def _regions(flags: np.ndarray, *, min_len: int) -> list[tuple[int, int]]:
    """Runs of True in ``flags`` as ``[start, end)`` frame ranges, dropping short ones."""
    if not len(flags):
        return []
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b - a >= min_len]


def _cut(speech_map: SpeechMap, start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    """Split frames ``[start, end)`` into pieces of at most ``max_frames``, cutting in pauses."""
    pieces = []
    while end - start > max_frames:
        window_lo = start + max_frames // 2
        window_hi = start + max_frames
        # A pause in the second half makes full requests; one in the first half is still
        # better than cutting through speech.
        cut = _pause_cut(speech_map, window_lo, window_hi) or _pause_cut(
            speech_map, start + 1, window_lo
        )
        if cut is None:
            levels = speech_map.level_db[window_lo:window_hi]
            cut = window_lo + int(np.argmin(levels))
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def _pause_cut(speech_map: SpeechMap, lo: int, hi: int) -> int | None:
    """The quietest frame of the longest pause inside frames ``[lo, hi)``, if there is one."""
    pauses = _regions(~speech_map.speech[lo:hi], min_len=1)
    if not pauses:
        return None
    # Longest first; among equals the later one, which makes fuller requests.
    a, b = max(pauses, key=lambda p: (p[1] - p[0], p[0]))
    levels = speech_map.level_db[lo + a : lo + b]
    return lo + a + int(np.argmin(levels))
