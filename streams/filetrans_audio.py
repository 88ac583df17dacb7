"""The filetrans backend's audio: one silence-compacted mono FLAC per call, and its maps.

The asynchronous recogniser bills every second of the file on every channel it transcribes, so
the silence the VAD found is left out before the upload, and both parties share one track:
each channel's speech stretches (the planned requests' stretches, padding included) are played
back to back as that channel's *section*, ``gap_s`` of silence apart so that the recogniser
still hears a sentence end there; the sections follow each other :data:`SECTION_GAP_S` apart
(the agent's, then the customer's), so that no sentence runs from one party into the other.
A call is billed for both parties' speech once, where a track per party billed each for the
longer one (docs/perf/filetrans.md). A :class:`StretchMap` per section says where each
stretch went, and maps a time in the file back to the call's timeline
(:meth:`StretchMap.call_time`); :func:`section_of` finds a file time's section.

Runs off the event loop (an audio process or a thread), like streams/audiowork.py.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.chunking import Request
from streams.decode import SpooledAudio
from streams.encode import encode_flac

__all__ = [
    "SECTION_GAP_S",
    "CompactAudio",
    "StretchMap",
    "compact_audio",
    "section_of",
    "union_stretches",
]

SECTION_GAP_S = 2.0
"""Silence between two channels' sections of the file: longer than any pause the recogniser
keeps inside one sentence, so every sentence belongs to one party."""


@dataclass(frozen=True)
class StretchMap:
    """Where the call's stretches sit in the compacted file: ``(call_start_s, call_end_s,
    file_start_s)`` per stretch, in order; between two stretches the file holds ``gap_s``."""

    stretches: tuple[tuple[float, float, float], ...]
    gap_s: float

    @property
    def file_seconds(self) -> float:
        """Length of the compacted file in seconds."""
        if not self.stretches:
            return 0.0
        a, b, f = self.stretches[-1]
        return f + (b - a)

    def call_time(self, file_s: float, *, end: bool = False) -> float:
        """The call-timeline time of ``file_s`` seconds into the compacted file.

        A time inside a gap (silence the file made up) goes to the next stretch's start, or
        with ``end`` to the previous stretch's end: a word never spans left-out silence.
        """
        if not self.stretches:
            return max(0.0, file_s)
        starts = [f for _, _, f in self.stretches]
        i = max(0, bisect.bisect_right(starts, file_s) - 1)
        a, b, f = self.stretches[i]
        if file_s < f:  # before the first stretch
            return a
        if file_s <= f + (b - a):
            return a + (file_s - f)
        # In the gap after stretch i.
        if end or i + 1 == len(self.stretches):
            return b
        return self.stretches[i + 1][0]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form, for the ledger's task entry."""
        return {"gap_s": self.gap_s, "stretches": [list(s) for s in self.stretches]}

    @classmethod
    def from_json(cls, value: Any) -> StretchMap:
        """Read :meth:`to_json`'s form back."""
        stretches = tuple(
            (float(a), float(b), float(f)) for a, b, f in value.get("stretches") or []
        )
        return cls(stretches, float(value.get("gap_s", 0.0)))


@dataclass(frozen=True)
class CompactAudio:
    """The compacted mono FLAC and the map of each planned channel's section."""

    flac: bytes
    maps: tuple[StretchMap, ...]

    @property
    def file_seconds(self) -> float:
        """Length of the file: where its last section ends."""
        return max((m.file_seconds for m in self.maps), default=0.0)


def section_of(maps: Sequence[StretchMap], file_s: float) -> int:
    """Index of the section of a one-track file that ``file_s`` falls in (or in the gap after)."""
    starts: list[float] = []
    for m in maps:  # a section without stretches starts where the one before it did
        starts.append(m.stretches[0][2] if m.stretches else (starts[-1] if starts else 0.0))
    return max(0, bisect.bisect_right(starts, file_s) - 1)


def union_stretches(requests: Iterable[Request]) -> list[tuple[int, int]]:
    """The stretches of all ``requests`` as sorted, non-overlapping samples."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(s for r in requests for s in r.stretches):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def compact_audio(
    audio: SpooledAudio, requests: Sequence[Request], channels: Sequence[int], gap_s: float
) -> CompactAudio:
    """Each of ``channels``' stretches (from its ``requests``) read from the spool and played
    back to back, ``gap_s`` of silence apart, as that channel's section of one mono track;
    sections :data:`SECTION_GAP_S` apart, in the order of ``channels``."""
    rate = audio.sample_rate
    gap = np.zeros(round(gap_s * rate), dtype=np.int16)
    section_gap = np.zeros(round(SECTION_GAP_S * rate), dtype=np.int16)
    pieces: list[np.ndarray] = []
    maps: list[StretchMap] = []
    at = 0
    for channel in channels:
        spans = union_stretches(r for r in requests if r.channel == channel)
        mapped: list[tuple[float, float, float]] = []
        for i, (a, b) in enumerate(spans):
            if pieces:
                pad = gap if i else section_gap
                pieces.append(pad)
                at += len(pad)
            mapped.append((a / rate, b / rate, at / rate))
            pcm = audio.read(channel, a, b)
            if len(pcm) < b - a:
                pcm = np.concatenate([pcm, np.zeros(b - a - len(pcm), dtype=np.int16)])
            pieces.append(pcm)
            at += b - a
        maps.append(StretchMap(tuple(mapped), gap_s))
    track = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
    track = np.pad(track, (0, max(0, rate // 10 - len(track))))
    return CompactAudio(encode_flac(track, rate), tuple(maps))
