"""Audio for tests: the real recordings in tests/data/speech, and transcodes of them in any format.

:data:`FORMATS` holds one recipe per format the Qwen3-ASR page lists, plus the telephone WAV
forms. Every recipe is encoded in-process with PyAV except GSM 6.10 WAV, for which PyAV's
wheel has a decoder but no encoder: :func:`make_format` asks ``sox`` for that one. Video
containers get a small video stream in front of the audio, as a screen recording would have.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import orjson

from streams.decode import decode_sync

AUDIO_DIR = Path(__file__).resolve().parent / "data" / "speech"

__all__ = [
    "AUDIO_DIR",
    "FORMATS",
    "Format",
    "Utterance",
    "asset",
    "conversation_script",
    "english_clips",
    "hold_music",
    "make_format",
    "manifest",
    "speech_bounds",
    "stereo_call",
    "transcode",
    "video_only",
    "write_wav",
    "write_wav_blocks",
]


@dataclass(frozen=True)
class Format:
    """How to make one file format from a recording."""

    ext: str
    codec: str
    container: str | None = None
    rate: int | None = None
    layout: str | None = None
    video: str | None = None
    """Video codec of a video stream to add (video containers)."""
    bit_rate: int | None = None
    options: dict[str, str] = field(default_factory=dict)


FORMATS: dict[str, Format] = {
    "aac": Format("aac", "aac", "adts"),
    "amr": Format("amr", "amr_nb", "amr", rate=8000, layout="mono"),
    "avi": Format("avi", "libmp3lame", "avi", video="mpeg4"),
    "aiff": Format("aiff", "pcm_s16be", "aiff"),
    "flac": Format("flac", "flac", "flac"),
    "flv": Format("flv", "aac", "flv", rate=44100, video="flv"),
    "m4a": Format("m4a", "aac", "ipod"),
    "mkv": Format("mkv", "flac", "matroska", video="mpeg4"),
    "mp3": Format("mp3", "libmp3lame", "mp3"),
    "mp4": Format("mp4", "aac", "mp4", video="mpeg4"),
    "mpeg": Format("mpeg", "mp2", "mpeg", rate=48000, video="mpeg1video"),
    # FFmpeg's own Vorbis encoder (the wheel has no libvorbis) is experimental and stereo only.
    "ogg": Format(
        "ogg", "vorbis", "ogg", rate=44100, layout="stereo", options={"strict": "experimental"}
    ),
    "opus": Format("opus", "libopus", "ogg", rate=48000),
    "wav": Format("wav", "pcm_s16le", "wav"),
    "webm": Format("webm", "libopus", "webm", rate=48000, video="libvpx"),
    # WMA encoders refuse to start without a bit rate.
    "wma": Format("wma", "wmav2", "asf", bit_rate=64000),
    "wmv": Format("wmv", "wmav2", "asf", bit_rate=64000, video="wmv2"),
    "ulaw-8k-stereo": Format("wav", "pcm_mulaw", "wav", rate=8000, layout="stereo"),
    "alaw-8k": Format("wav", "pcm_alaw", "wav", rate=8000, layout="mono"),
    "gsm-8k": Format("wav", "gsm_ms", "wav", rate=8000, layout="mono"),
}


@dataclass(frozen=True)
class Utterance:
    """One clip placed on a channel of a built call."""

    channel: int
    start_s: float
    end_s: float
    clip: str
    reference: str
    speech_start_s: float = 0.0
    """Where the clip's words start on the call (its leading silence skipped)."""
    speech_end_s: float = 0.0
    """Where the clip's words end on the call (its trailing silence skipped)."""


def speech_bounds(pcm: np.ndarray, *, below_peak_db: float = 35.0) -> tuple[float, float]:
    """Seconds from the start of ``pcm`` (16 kHz) to its first and past its last audible 10 ms.

    Audible: within ``below_peak_db`` of the loudest 10 ms, a truth for test clips recorded
    in quiet rooms that owes nothing to the VAD under test.
    """
    frames = pcm[: len(pcm) // 160 * 160].astype(np.float64).reshape(-1, 160)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-9)
    loud = np.flatnonzero(level >= level.max() - below_peak_db)
    return loud[0] * 0.01, (loud[-1] + 1) * 0.01


def english_clips() -> dict[str, tuple[np.ndarray, str]]:
    """The shared English speech as 16 kHz mono PCM and reference text, by a short name.

    The two-speaker stereo file gives two clips, one per channel (two LibriSpeech speakers).
    """
    entries = manifest()
    stereo = entries["en_fasterwhisper_stereo_diarization_LR.wav"]
    left, right = decode_sync(asset(str(stereo["file"])), layout="split").channels
    return {
        "harvard": (
            decode_sync(asset("en_speechbrain_harvard_birch_canoe.wav")).channels[0],
            str(entries["en_speechbrain_harvard_birch_canoe.wav"]["reference"]),
        ),
        "librivox": (
            decode_sync(asset("en_pocketsphinx_librivox_sense_sensibility_0870.wav")).channels[0],
            str(entries["en_pocketsphinx_librivox_sense_sensibility_0870.wav"]["reference"]),
        ),
        "jfk": (
            decode_sync(asset("en_whisper_jfk_stereo44k24bit.flac")).channels[0],
            str(entries["en_whisper_jfk_stereo44k24bit.flac"]["reference"]),
        ),
        # Each channel of the diarization file holds its speech in the first seconds only.
        "wizard": (left[: int(4.7 * 16_000)], str(stereo["reference_left"])),
        "horizon": (right[: int(2.6 * 16_000)], str(stereo["reference_right"])),
    }


def stereo_call(
    script: list[tuple[int, float, str]], *, tail_s: float = 1.0, noise_db: float = -60.0
) -> tuple[np.ndarray, list[Utterance]]:
    """A two-channel call at 16 kHz from ``(channel, start_s, clip name)`` lines.

    Each channel carries low noise (a line is never digitally silent) and its clips at the given
    times; clips may overlap across channels. Returns the int16 ``(2, samples)`` array and the
    utterances placed.
    """
    clips = english_clips()
    bounds = {name: speech_bounds(pcm) for name, (pcm, _) in clips.items()}
    placed = [
        Utterance(
            ch,
            start,
            start + len(clips[name][0]) / 16_000,
            name,
            clips[name][1],
            start + bounds[name][0],
            start + bounds[name][1],
        )
        for ch, start, name in script
    ]
    length = int((max(u.end_s for u in placed) + tail_s) * 16_000)
    rng = np.random.default_rng(3)
    call = rng.standard_normal((2, length)) * 32768 * 10 ** (noise_db / 20)
    for u in placed:
        pcm = clips[u.clip][0].astype(np.float64)
        start = int(u.start_s * 16_000)
        call[u.channel, start : start + len(pcm)] += pcm
    return np.clip(call, -32768, 32767).astype(np.int16), placed


def conversation_script(
    seconds: float, *, seed: int = 0, monologue_s: float = 0.0, hold_s: float = 0.0
) -> list[tuple[int, float, str]]:
    """A call's script for :func:`stereo_call`: turns of 8-40 s that alternate between channels.

    Inside a turn, clips follow each other after 0.2-0.7 s pauses; between turns there is a
    gap of up to 2 s or an overlap of up to 1 s. ``hold_s`` of silence (both parties waiting)
    and then a ``monologue_s`` agent turn come after the conversation.
    """
    lengths = {name: len(pcm) / 16_000 for name, (pcm, _) in english_clips().items()}
    names = sorted(lengths)
    rng = np.random.default_rng(seed)
    script: list[tuple[int, float, str]] = []
    t, channel = 0.5, 0

    def turn(until: float) -> float:
        now = t
        while now < until:
            name = names[int(rng.integers(len(names)))]
            script.append((channel, round(now, 3), name))
            now += lengths[name] + rng.uniform(0.2, 0.7)
        return now

    while t < seconds:
        t = turn(t + rng.uniform(8, 40)) + rng.uniform(-1.0, 2.0)
        channel = 1 - channel
    if monologue_s:
        t += hold_s
        channel = 0
        t = turn(t + monologue_s) + 1.0
    return script


def hold_music(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Plucked notes (attack, decay, four harmonics) every 0.4 s at -20 dBFS peak, as float
    samples at 16 kHz: hold music, which WebRTC's VAD is known to call speech."""
    out = np.zeros(samples)
    note = int(0.4 * 16_000)
    for start in range(0, samples, note):
        t = np.arange(min(note, samples - start)) / 16_000
        f0 = 220 * 2 ** (int(rng.integers(0, 12)) / 12)
        envelope = np.minimum(1, t * 20) * np.exp(-t * 2)
        for harmonic, amplitude in ((1, 1), (2, 0.5), (3, 0.3), (5, 0.15)):
            out[start : start + len(t)] += amplitude * np.sin(2 * np.pi * f0 * harmonic * t)
        out[start : start + len(t)] *= envelope
    return out / np.abs(out).max() * 0.1 * 32768


def write_wav_blocks(
    target: Path,
    blocks: Iterator[np.ndarray],
    *,
    rate: int = 16_000,
    out_rate: int = 8_000,
    codec: str = "pcm_mulaw",
) -> Path:
    """Write 16 kHz int16 ``(2, samples)`` blocks as a stereo WAV (telephone: 8 kHz mu-law)."""
    with av.open(str(target), "w", format="wav") as out:
        stream = out.add_stream(codec, rate=out_rate, layout="stereo")
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=out_rate)
        for block in blocks:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(block.T).reshape(1, -1), format="s16", layout="stereo"
            )
            frame.sample_rate = rate
            for converted in resampler.resample(frame):
                for packet in stream.encode(converted):
                    out.mux(packet)
        for converted in resampler.resample(None):
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return target


def manifest() -> dict[str, dict[str, object]]:
    """The shared recordings' manifest, by file name."""
    lines = (AUDIO_DIR / "manifest.jsonl").read_text().splitlines()
    return {entry["file"]: entry for entry in map(orjson.loads, filter(None, lines))}


def asset(name: str) -> Path:
    """Path of a shared recording."""
    path = AUDIO_DIR / name
    assert path.exists(), f"missing shared recording {path}"
    return path


def make_format(source: Path, directory: Path, name: str) -> Path:
    """``source`` in the format :data:`FORMATS` names ``name``, written into ``directory``."""
    fmt = FORMATS[name]
    target = directory / f"{source.stem}.{name}.{fmt.ext}"
    if fmt.codec == "gsm_ms":
        return _sox_gsm(source, target)
    return transcode(
        source,
        target,
        codec=fmt.codec,
        container=fmt.container,
        rate=fmt.rate,
        layout=fmt.layout,
        video=fmt.video,
        bit_rate=fmt.bit_rate,
        options=fmt.options,
    )


def transcode(
    source: Path,
    target: Path,
    *,
    codec: str,
    container: str | None = None,
    rate: int | None = None,
    layout: str | None = None,
    video: str | None = None,
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Re-encode ``source``'s first audio stream with ``codec`` (PyAV converts the samples)."""
    with av.open(str(source)) as inp, av.open(str(target), "w", format=container) as out:
        in_stream = inp.streams.audio[0]
        duration = float(in_stream.duration * in_stream.time_base) if in_stream.duration else 10.0
        video_stream = _add_video(out, video) if video else None
        out_stream = out.add_stream(
            codec,
            rate=rate or in_stream.codec_context.sample_rate,
            # WAV often declares only a channel count ("1 channels"), which encoders refuse.
            layout=layout or ("mono" if in_stream.codec_context.channels == 1 else "stereo"),
            options=options or {},
        )
        if bit_rate:
            out_stream.bit_rate = bit_rate
        formats = [f.name for f in out_stream.codec_context.codec.audio_formats or ()]
        if formats:
            # Encoders take only some sample formats; PyAV converts frames to the one we pick.
            out_stream.format = "s16" if "s16" in formats else formats[0]
        if video_stream is not None:
            _write_video(out, video_stream, duration)
        # Encoders with a fixed frame size (wmav2, mp2, opus) get frames of that size.
        fifo = av.AudioFifo()
        resampler = av.AudioResampler(
            format=out_stream.format.name, layout=out_stream.layout.name, rate=out_stream.rate
        )
        frame_size = out_stream.codec_context.frame_size or 1024
        for frame in inp.decode(in_stream):
            frame.pts = None
            for converted in resampler.resample(frame):
                fifo.write(converted)
            while fifo.samples >= frame_size:
                for packet in out_stream.encode(fifo.read(frame_size)):
                    out.mux(packet)
        for converted in resampler.resample(None):
            fifo.write(converted)
        rest = fifo.read()
        if rest is not None:
            for packet in out_stream.encode(rest):
                out.mux(packet)
        for packet in out_stream.encode(None):
            out.mux(packet)
    return target


def video_only(target: Path, *, seconds: float = 2.0) -> Path:
    """An mp4 with a video stream and no audio stream."""
    with av.open(str(target), "w") as out:
        _write_video(out, _add_video(out, "mpeg4"), seconds)
    return target


def write_wav(
    target: Path, pcm: np.ndarray, *, rate: int = 16_000, codec: str = "pcm_s16le"
) -> Path:
    """Write int16 samples shaped ``(samples,)`` or ``(channels, samples)`` as a WAV file."""
    planar = pcm.reshape(1, -1) if pcm.ndim == 1 else pcm
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    with av.open(str(target), "w", format="wav") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        step = rate * 10
        for start in range(0, planar.shape[1], step):
            piece = np.ascontiguousarray(planar[:, start : start + step].T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(piece, format="s16", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return target


def _add_video(out: av.container.OutputContainer, codec: str) -> av.video.stream.VideoStream:
    stream = out.add_stream(codec, rate=Fraction(10 if codec != "mpeg1video" else 25))
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    return stream


def _write_video(
    out: av.container.OutputContainer, stream: av.video.stream.VideoStream, seconds: float
) -> None:
    fps = float(stream.codec_context.framerate or stream.average_rate or 10)
    for index in range(int(seconds * fps) + 1):
        image = np.full((64, 64, 3), (index * 8) % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _sox_gsm(source: Path, target: Path) -> Path:
    sox = shutil.which("sox")
    assert sox, "GSM 6.10 WAV needs sox (apt-get install sox libsox-fmt-all; .ci/run installs it)"
    pcm = target.with_suffix(".pcm8k.wav")
    transcode(source, pcm, codec="pcm_s16le", container="wav", rate=8000, layout="mono")
    subprocess.run(
        [sox, str(pcm), "-r", "8000", "-c", "1", "-e", "gsm-full-rate", str(target)],
        check=True,
        capture_output=True,
    )
    pcm.unlink()
    return target
