"""The blocking audio work of one recording: decode, listen, plan; encode each request.

What runs off the worker's event loop, in a thread or in an audio process
(streams/audiostages.py). Kept apart from the pipeline so that an audio process imports only
what decoding needs (no HTTP clients), and everything crossing the process boundary (the
recording, the plan, the spooled audio's paths) pickles small. Nothing here logs: an audio
process has no logging set up; the pipeline logs what these functions return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streams.analytics import ToneRun
from streams.chunking import ChunkPolicy, Plan, Request, plan_requests
from streams.crashloop import abort_if_chosen
from streams.decode import Layout, SpooledAudio, decode_to_files
from streams.dualmono import DualMonoDetector
from streams.encode import encode_data_uri
from streams.events import Recording
from streams.music import MusicDetector, hold_stretches, without_music
from streams.vad import FRAME_SAMPLES, SpeechDetector

__all__ = ["Planned", "decode_and_plan", "merge_stretches", "request_uri"]


@dataclass(frozen=True)
class Planned:
    """A decoded recording and its requests."""

    audio: SpooledAudio
    requests: list[Request]
    plan: Plan
    split: bool
    """Whether channels are transcribed apart (with roles), after the dual-mono check."""
    same_signal: bool = False
    """The recorder wrote one signal on both channels (transcribed once, as a mixed call)."""
    music: list[tuple[float, float]] = field(default_factory=list)
    """The call's hold: seconds ``[start, end)`` on its timeline with music or call-progress
    tones on any planned channel (streams/music.py ``hold_stretches``: the detector's
    stretches with their margins, where the music plays), merged across channels; empty when
    ``ChunkPolicy.music_filter`` is off."""
    tones: tuple[ToneRun, ...] = ()
    """DTMF and call-progress tones of each planned channel, with its role (also left out)."""


def decode_and_plan(
    path: Path,
    directory: Path,
    *,
    recording: Recording,
    split_plan: Plan,
    max_duration_s: float,
    policy: ChunkPolicy,
    vad_aggressiveness: int,
) -> Planned:
    """Decode to per-channel files while the VAD (and, unless ``policy.music_filter`` is off,
    the music detector) listens, then plan the requests from the speech that is not music."""
    abort_if_chosen(recording.recording_id)
    detectors: list[SpeechDetector] = []
    music_detectors: list[MusicDetector] = []
    dual_mono = DualMonoDetector()

    def listen(block: Any) -> None:
        if not detectors:
            detectors.extend(SpeechDetector(vad_aggressiveness) for _ in block)
            if policy.music_filter:
                music_detectors.extend(MusicDetector() for _ in block)
        for detector, row in zip(detectors, block, strict=True):
            detector.feed(row)
        if music_detectors:
            for music_detector, row in zip(music_detectors, block, strict=True):
                music_detector.feed(row)
        if recording.layout == "auto":
            dual_mono.feed(block)

    layout: Layout = "mix" if recording.layout == "mix" else "split"
    audio = decode_to_files(
        path, directory, layout=layout, max_duration_s=max_duration_s, on_block=listen
    )
    maps = [detector.finish() for detector in detectors]
    music = [d.finish(frame_samples=FRAME_SAMPLES) for d in music_detectors]
    roles = _roles(recording, len(maps))
    same_signal = recording.layout == "auto" and dual_mono.same()
    if same_signal:
        # The recorder wrote one signal twice: transcribe it once, as a mixed call.
        maps, music, roles = maps[:1], music[:1], (None,)
    if music:
        maps = [without_music(m, music_map) for m, music_map in zip(maps, music, strict=True)]
    split = any(role is not None for role in roles)
    plan: Plan = (recording.plan or split_plan) if split else (recording.plan or "packed")
    requests = plan_requests(maps, roles, policy, plan=plan, sample_rate=audio.sample_rate)
    tones = tuple(  # no music maps at all when the music filter is off
        ToneRun(tone.kind, role, tone.start_s, tone.end_s)
        for music_map, role in zip(music, roles, strict=False)
        for tone in music_map.tones
    )
    hold = merge_stretches([hold_stretches(m, mm) for m, mm in zip(maps, music, strict=False)])
    return Planned(audio, requests, plan, split, same_signal, hold, tones)


def request_uri(audio: SpooledAudio, request: Request) -> str:
    """The ``data:`` URI of one request: its stretches read from the spool, as FLAC."""
    pcm = [audio.read(request.channel, start, end) for start, end in request.stretches]
    return encode_data_uri(np.concatenate(pcm) if len(pcm) > 1 else pcm[0], audio.sample_rate)


def merge_stretches(channels: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Stretches of every channel as one sorted list of non-overlapping seconds."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(s for stretches in channels for s in stretches):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _roles(recording: Recording, channels: int) -> tuple[str | None, ...]:
    """Each channel's role: ``split`` always tags, ``auto`` only when there are two or more."""
    if recording.layout == "mix" or (recording.layout == "auto" and channels < 2):
        return (None,) * channels
    return tuple(
        recording.roles[i] if i < len(recording.roles) else f"channel{i}" for i in range(channels)
    )
