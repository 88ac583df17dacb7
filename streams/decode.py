"""Decode any audio or video file PyAV reads into 16 kHz s16 PCM, mixed to mono or per channel.

Frames are batched through an ``AudioFifo`` so that the resampler runs about once per second
of audio instead of once per codec frame: on long mp3 files per-frame resampling costs more
than the decode itself (design.md, "decode").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import av
import av.error
import numpy as np

from streams.errors import AudioTooLong, UndecodableAudio

__all__ = ["SAMPLE_RATE", "DecodedAudio", "decode", "decode_sync"]

SAMPLE_RATE = 16_000
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 6: "5.1", 8: "7.1"}
Layout = Literal["mix", "split"]


@dataclass(frozen=True)
class DecodedAudio:
    """PCM of one recording: one int16 array per output channel, all the same length."""

    channels: tuple[np.ndarray, ...]
    """int16 samples at ``sample_rate``; one array when mixed, one per source channel when split."""
    sample_rate: int
    source_channels: int
    source_sample_rate: int
    source_codec: str

    @property
    def duration_s(self) -> float:
        """Length of the decoded audio in seconds."""
        return len(self.channels[0]) / self.sample_rate if self.channels else 0.0


def decode_sync(
    source: str | Path | BinaryIO,
    *,
    layout: Layout = "mix",
    max_duration_s: float | None = None,
) -> DecodedAudio:
    """Decode the first audio stream of ``source`` (a path or a binary file object).

    Raises:
        UndecodableAudio: not a media file, truncated beyond repair, no audio stream, or empty.
        AudioTooLong: the audio lasts longer than ``max_duration_s`` (checked on the container's
            declared duration first, so a tiny file claiming hours is refused cheaply, and then
            on the samples actually decoded).
    """
    try:
        with av.open(source if not isinstance(source, Path) else str(source), "r") as container:
            if not container.streams:
                raise UndecodableAudio("the file holds no media streams")
            if not container.streams.audio:
                raise UndecodableAudio(
                    "the file has no audio stream", code="no_audio_stream", stage="decode"
                )
            stream = container.streams.audio[0]
            _check_declared_duration(container, stream, max_duration_s)
            return _decode_stream(container, stream, layout, max_duration_s)
    except (UndecodableAudio, AudioTooLong):
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        # InvalidDataError is both FFmpegError and ValueError; OSError covers PyAV's
        # file-level failures (e.g. a file that ends inside its header).
        raise UndecodableAudio(f"cannot decode audio: {exc}") from exc


async def decode(
    source: str | Path | BinaryIO,
    *,
    layout: Layout = "mix",
    max_duration_s: float | None = None,
) -> DecodedAudio:
    """Run :func:`decode_sync` in a thread: decoding is blocking C and must not stall the loop."""
    return await asyncio.to_thread(
        decode_sync, source, layout=layout, max_duration_s=max_duration_s
    )


def _check_declared_duration(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    max_duration_s: float | None,
) -> None:
    if max_duration_s is None:
        return
    declared: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        declared = container.duration / av.time_base
    if declared is not None and declared > max_duration_s:
        raise AudioTooLong(
            f"audio declares {declared:.1f} s, more than the limit of {max_duration_s:.0f} s"
        )


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    layout: Layout,
    max_duration_s: float | None,
) -> DecodedAudio:
    source_channels = stream.codec_context.channels or 1
    split = layout == "split" and source_channels > 1
    resampler = av.AudioResampler(
        format="s16p" if split else "s16",
        # Keep every source channel; WAV may declare only a count, so name the layout by it.
        layout=_LAYOUTS.get(source_channels, f"{source_channels}c") if split else "mono",
        rate=SAMPLE_RATE,
    )
    max_samples = None if max_duration_s is None else int(max_duration_s * SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    decoded = 0
    fifo: av.AudioFifo | None = None
    batch = 0

    def resample(frame: av.AudioFrame | None) -> None:
        nonlocal decoded
        for out in resampler.resample(frame):
            array = out.to_ndarray()
            pieces.append(array)
            decoded += array.shape[1]
        if max_samples is not None and decoded > max_samples:
            raise AudioTooLong(
                f"audio lasts more than the limit of {max_duration_s:.0f} s", stage="decode"
            )

    for frame in container.decode(stream):
        # Timestamps are irrelevant once decoded; FIFOs reject frames whose pts jump.
        frame.pts = None
        if fifo is None or not _fits(fifo, frame):
            if fifo is not None:
                _drain(fifo, resample)
            fifo = av.AudioFifo()
            batch = frame.sample_rate  # about one second per resampler call
        fifo.write(frame)
        if fifo.samples >= batch:
            resample(fifo.read(batch))
    if fifo is not None:
        _drain(fifo, resample)
    resample(None)  # flush the resampler's delay line

    if not pieces or decoded == 0:
        raise UndecodableAudio("the audio stream holds no samples", code="empty_audio")
    pcm = np.concatenate(pieces, axis=1)
    channels = tuple(np.ascontiguousarray(row) for row in pcm)
    return DecodedAudio(
        channels=channels,
        sample_rate=SAMPLE_RATE,
        source_channels=source_channels,
        source_sample_rate=stream.codec_context.sample_rate or SAMPLE_RATE,
        source_codec=stream.codec_context.name,
    )


def _fits(fifo: av.AudioFifo, frame: av.AudioFrame) -> bool:
    """Whether ``frame`` has the format the FIFO already holds (a FIFO takes one format)."""
    if fifo.format is None:
        return True
    return (
        fifo.format.name == frame.format.name
        and fifo.layout.name == frame.layout.name
        and fifo.sample_rate == frame.sample_rate
    )


def _drain(fifo: av.AudioFifo, resample: object) -> None:
    rest = fifo.read()
    if rest is not None:
        resample(rest)  # type: ignore[operator]  # the closure passed by _decode_stream
