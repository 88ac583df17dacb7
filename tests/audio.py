"""Audio for tests: the real recordings in ../shared/audio, and PyAV transcodes of them."""

from __future__ import annotations

from pathlib import Path

import av
import orjson

AUDIO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


def manifest() -> dict[str, dict[str, object]]:
    """The shared recordings' manifest, by file name."""
    lines = (AUDIO_DIR / "manifest.jsonl").read_text().splitlines()
    return {entry["file"]: entry for entry in map(orjson.loads, filter(None, lines))}


def asset(name: str) -> Path:
    """Path of a shared recording."""
    path = AUDIO_DIR / name
    assert path.exists(), f"missing shared recording {path}"
    return path


def transcode(
    source: Path,
    target: Path,
    *,
    codec: str,
    container: str | None = None,
    rate: int | None = None,
    layout: str | None = None,
) -> Path:
    """Re-encode ``source``'s first audio stream with ``codec`` (PyAV converts the samples)."""
    with av.open(str(source)) as inp, av.open(str(target), "w", format=container) as out:
        in_stream = inp.streams.audio[0]
        out_stream = out.add_stream(
            codec,
            rate=rate or in_stream.codec_context.sample_rate,
            # WAV often declares only a channel count ("1 channels"), which encoders refuse.
            layout=layout or ("mono" if in_stream.codec_context.channels == 1 else "stereo"),
        )
        formats = [f.name for f in out_stream.codec_context.codec.audio_formats or ()]
        if formats:
            # Encoders take only some sample formats; PyAV converts frames to the one we pick.
            out_stream.format = "s16" if "s16" in formats else formats[0]
        for frame in inp.decode(in_stream):
            frame.pts = None
            for packet in out_stream.encode(frame):
                out.mux(packet)
        for packet in out_stream.encode(None):
            out.mux(packet)
    return target
