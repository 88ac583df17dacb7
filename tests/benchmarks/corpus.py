"""Benchmark audio: 30-300 s recordings of real speech, built once from tests/data/speech.

Each file loops the shared English, German and Chinese clips (mixed to 16 kHz mono, 0.4 s of
silence between clips) from its own starting clip, so that no two files hold the same samples,
and stores the result the way call recorders do: 16 kHz PCM WAV, 16 kHz FLAC, and 8 kHz μ-law
WAV (telephony, which the worker must also resample). The set lives in ``.cache/bench-audio``
and is rebuilt only when its recipe changes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import orjson
from aiokafka.partitioner import murmur2

from streams.decode import SAMPLE_RATE, decode_sync
from tests.audio import AUDIO_DIR, manifest

__all__ = ["AudioFile", "build_corpus", "recording_events"]

_RECIPE = 1
_GAP_S = 0.4
# (suffix, codec, sample rate)
_FORMATS = (("wav", "pcm_s16le", 16_000), ("flac", "flac", 16_000), ("wav", "pcm_mulaw", 8_000))


@dataclass(frozen=True)
class AudioFile:
    """One benchmark recording on disk."""

    path: Path
    duration_s: float
    codec: str


def _speech() -> list[np.ndarray]:
    clips = []
    for name in sorted(manifest()):
        pcm = decode_sync(AUDIO_DIR / name, layout="mix").channels[0]
        clips.append(np.concatenate([pcm, np.zeros(int(_GAP_S * SAMPLE_RATE), np.int16)]))
    return clips


def _write(path: Path, pcm: np.ndarray, codec: str, rate: int) -> None:
    with av.open(str(path), "w", format=path.suffix[1:]) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            converted.pts = None
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def build_corpus(
    cache: Path, count: int, *, min_s: float = 30.0, max_s: float = 295.0, seed: int = 7
) -> list[AudioFile]:
    """Return ``count`` recordings with lengths spread evenly over ``[min_s, max_s]``.

    ``max_s`` stays under 300 s so that each recording is one recognition request.
    """
    folder = cache.resolve() / f"bench-audio-v{_RECIPE}-{count}-{min_s:g}-{max_s:g}-{seed}"
    index = folder / "index.json"
    if index.exists():
        entries = orjson.loads(index.read_bytes())
        return [AudioFile(folder / e["file"], e["duration_s"], e["codec"]) for e in entries]
    folder.mkdir(parents=True, exist_ok=True)
    clips = _speech()
    rng = random.Random(seed)  # noqa: S311  # a repeatable corpus, not secrecy
    lengths = np.linspace(min_s, max_s, count).tolist()
    rng.shuffle(lengths)
    files, entries = [], []
    for i, length in enumerate(lengths):
        needed = int(length * SAMPLE_RATE)
        start = i % len(clips)
        loop, total = [], 0
        while total < needed:
            clip = clips[(start + len(loop)) % len(clips)]
            loop.append(clip)
            total += len(clip)
        pcm = np.concatenate(loop)[:needed]
        suffix, codec, rate = _FORMATS[i % len(_FORMATS)]
        path = folder / f"call-{i:03d}-{codec}.{suffix}"
        _write(path, pcm, codec, rate)
        files.append(AudioFile(path, round(length, 3), codec))
        entries.append({"file": path.name, "duration_s": round(length, 3), "codec": codec})
    index.write_bytes(orjson.dumps(entries))
    return files


def recording_events(
    files: list[AudioFile], count: int, run: str, *, partitions: int, start: int = 0
) -> list[dict[str, object]]:
    """``count`` recording events cycling through ``files``, with ids unique to ``run``.

    Events are keyed by recording id as the contract says; each id carries a salt chosen so
    that Kafka's default partitioner puts event *i* on partition *i* mod ``partitions``, which
    spreads a backlog evenly instead of by the luck of the hash.
    """
    events = []
    for i in range(start, start + count):
        salt = 0
        while _partition(f"{run}-{i:05d}-{salt}", partitions) != i % partitions:
            salt += 1
        recording_id = f"{run}-{i:05d}-{salt}"
        events.append(
            {
                "schema_version": 1,
                "recording_id": recording_id,
                "audio_url": files[i % len(files)].path.as_uri(),
                "call": {"call_id": recording_id, "queue": "bench"},
                "channels": {"layout": "mix"},
                "recognition": {"language": "en"},
            }
        )
    return events


def _partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
