"""Plan recognition requests: speech regions from the VAD, cut at silences, within the API's limits.

The plan works on a :class:`SpeechMap` (a speech flag and a level per VAD frame of one channel)
and returns sample ranges on the channel's own timeline, which is the call's timeline:

1. speech regions are runs of speech frames; runs shorter than ``min_speech_s`` (clicks) go;
2. regions whose gap is shorter than ``silence_s`` merge, so that a pause inside a sentence is
   sent and a long silence (hold, the other party talking) is not;
3. each region keeps ``pad_s`` of context on both sides, so a word's soft onset or tail is
   not shaved off by a VAD that decides per frame;
4. a region longer than one request is cut inside its longest pause that leaves at least half a
   request behind it (else inside the longest pause of the first half), at the pause's quietest
   frame; a region with no pause at all is cut at its quietest frame, a last resort that may
   fall between two words spoken without a breath.

No cut ever falls inside a frame the VAD called speech unless step 4's last resort applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Chunk", "ChunkPolicy", "SpeechMap", "max_chunk_seconds", "plan_chunks", "plan_spans"]

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
class Chunk:
    """A stretch of one channel that goes to the recogniser in one request."""

    channel: int
    role: str | None
    index: int
    """Position among the chunks of its channel."""
    start: int
    end: int
    """Samples ``[start, end)`` of the channel, on the call's timeline."""
    sample_rate: int

    @property
    def start_s(self) -> float:
        """Where the chunk starts on the call's timeline, in seconds."""
        return self.start / self.sample_rate

    @property
    def end_s(self) -> float:
        """Where the chunk ends on the call's timeline, in seconds."""
        return self.end / self.sample_rate

    @property
    def duration_s(self) -> float:
        """Length of the chunk in seconds."""
        return (self.end - self.start) / self.sample_rate


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


def plan_chunks(
    speech_maps: list[SpeechMap] | tuple[SpeechMap, ...],
    roles: tuple[str | None, ...],
    policy: ChunkPolicy,
    *,
    sample_rate: int,
) -> list[Chunk]:
    """The requests of a recording: each channel's spans, tagged with the channel's role."""
    return [
        Chunk(channel, roles[channel], index, start, end, sample_rate)
        for channel, speech_map in enumerate(speech_maps)
        for index, (start, end) in enumerate(
            plan_spans(speech_map, policy, sample_rate=sample_rate)
        )
    ]


def plan_spans(
    speech_map: SpeechMap, policy: ChunkPolicy, *, sample_rate: int
) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of one channel to send, in order, each within the limits."""
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
    spans: list[tuple[int, int]] = []
    for start, end in merged:
        for piece_start, piece_end in _cut(speech_map, start, end, max_frames):
            first = max(0, piece_start - pad)
            last = min(speech_map.frames, piece_end + pad)
            if spans and first < spans[-1][1]:
                first = spans[-1][1]  # pads of neighbours cut by a short silence may meet
            spans.append((first, last))
    samples = speech_map.samples
    step = speech_map.frame_samples
    return [(a * step, min(b * step, samples)) for a, b in spans if a * step < samples]


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
