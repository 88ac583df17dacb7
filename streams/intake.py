"""Fetch, decode and plan one recording: the stages every backend starts with.

The audio is fetched (size-capped, streams/fetch.py), then decoded to one raw file per channel
in ``spool`` while the VAD and the music detector listen, and planned (streams/audiowork.py,
in an audio process or a thread). Decoded PCM waits on disk; only what a request needs is read
back, so a two-hour stereo call costs no more memory than a short one. Both caps are checked
before anything is sent to a recogniser: the size by fetch, the duration by decode.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Protocol

import httpx

from streams.audiostages import AudioStages
from streams.audiowork import Planned, decode_and_plan
from streams.chunking import ChunkPolicy, Plan
from streams.events import Recording
from streams.fetch import FetchLimits, fetch

__all__ = ["IntakeRules", "fetch_and_plan"]


class IntakeRules(Protocol):
    """The limits and settings the first stages take (``PipelineRules`` has them)."""

    @property
    def fetch_limits(self) -> FetchLimits: ...
    @property
    def max_audio_s(self) -> float: ...
    @property
    def chunk_policy(self) -> ChunkPolicy: ...
    @property
    def vad_aggressiveness(self) -> int: ...


async def fetch_and_plan(
    recording: Recording,
    spool: Path,
    *,
    rules: IntakeRules,
    split_plan: Plan,
    http: httpx.AsyncClient,
    stages: AudioStages,
) -> tuple[Planned, dict[str, float]]:
    """The recording fetched, decoded into ``spool`` and planned (``split_plan`` for calls
    whose channels are transcribed apart), and the seconds each took (``fetch_s``,
    ``decode_s``).

    Raises:
        PipelineError: the fetch or the decode failed (streams/errors.py says which).
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with await fetch(recording.audio_url, rules.fetch_limits, http) as fetched:
        timings["fetch_s"] = time.perf_counter() - t
        t = time.perf_counter()
        decode = functools.partial(
            decode_and_plan,
            recording=recording,
            split_plan=split_plan,
            max_duration_s=rules.max_audio_s,
            policy=rules.chunk_policy,
            vad_aggressiveness=rules.vad_aggressiveness,
        )
        planned = await stages.run("decode", recording.recording_id, decode, fetched.path, spool)
    timings["decode_s"] = time.perf_counter() - t
    return planned, timings
