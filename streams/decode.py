"""Decode any audio or video file PyAV reads into 16 kHz s16 PCM, mixed to mono or per channel.

Frames are batched through an ``AudioFifo`` so that the resampler runs about once per second
of audio instead of once per codec frame: on long mp3 files per-frame resampling costs more
than the decode itself (docs/design.md, "decode"). Video containers give their first audio stream.

Two ways out: :func:`decode_sync` returns the PCM in memory (short files, tests, the local ASR
server), while :func:`decode_to_files` spools each channel to a raw file and hands every
block to a callback on its way (the VAD), so that a two-hour stereo call costs the worker a
few seconds of audio in memory instead of 460 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, TypedDict

import av
import av.error
import numpy as np

from streams.errors import AudioTooLong, UndecodableAudio

__all__ = [
    "SAMPLE_RATE",
    "DecodedAudio",
    "SpooledAudio",
    "decode",
    "decode_sync",
    "decode_to_files",
]

SAMPLE_RATE = 16_000
# InvalidDataError is both FFmpegError and ValueError; OSError covers PyAV's file-level
# failures (e.g. a file that ends inside its header).
_AV_ERRORS = (av.error.FFmpegError, ValueError, OSError)
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


@dataclass(frozen=True)
class SpooledAudio:
    """PCM of one recording spooled to one raw int16 file per output channel."""

    paths: tuple[Path, ...]
    samples: int
    """Samples per channel (every channel has the same length)."""
    sample_rate: int
    source_channels: int
    source_sample_rate: int
    source_codec: str

    @property
    def duration_s(self) -> float:
        """Length of the decoded audio in seconds."""
        return self.samples / self.sample_rate

    def read(self, channel: int, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` of ``channel``, read from disk (not mapped: mapped pages
        would count against the worker's resident memory)."""
        end = min(end, self.samples)
        count = max(0, end - start)
        return np.fromfile(self.paths[channel], dtype=np.int16, count=count, offset=2 * start)


def decode_sync(
    source: str | Path | BinaryIO,
    *,
    layout: Layout = "mix",
    max_duration_s: float | None = None,
) -> DecodedAudio:
    """Decode the first audio stream of ``source`` (a path or a binary file object) in memory.

    Raises:
        UndecodableAudio: not a media file, truncated beyond repair, no audio stream
            (code ``no_audio_stream``), or no samples (code ``empty_audio``).
        AudioTooLong: the audio lasts longer than ``max_duration_s`` (checked on the container's
            declared duration first, so a tiny file claiming hours is refused cheaply, and then
            on the samples actually decoded).
    """
    with _opened(source, max_duration_s) as (container, stream):
        info = _source_info(stream)
        pieces = list(_blocks(container, stream, layout, max_duration_s))
    pcm = np.concatenate(pieces, axis=1)
    return DecodedAudio(
        channels=tuple(np.ascontiguousarray(row) for row in pcm),
        sample_rate=SAMPLE_RATE,
        **info,
    )


def decode_to_files(
    source: str | Path | BinaryIO,
    directory: Path,
    *,
    layout: Layout = "mix",
    max_duration_s: float | None = None,
    on_block: Callable[[np.ndarray], None] | None = None,
) -> SpooledAudio:
    """Decode like :func:`decode_sync`, writing channel ``i`` to ``directory/channel-i.pcm``.

    ``on_block`` sees every block of about one second as an int16 array shaped
    ``(channels, samples)``, in order, before the next block is decoded. Raises what
    :func:`decode_sync` raises, and whatever ``on_block`` raises.
    """
    files: list[BinaryIO] = []
    samples = 0
    with (
        contextlib.ExitStack() as stack,
        _opened(source, max_duration_s) as (container, stream),
    ):
        info = _source_info(stream)
        for block in _blocks(container, stream, layout, max_duration_s):
            if not files:
                files = [
                    stack.enter_context((directory / f"channel-{i}.pcm").open("wb"))
                    for i in range(block.shape[0])
                ]
            for out, row in zip(files, block, strict=True):
                out.write(np.ascontiguousarray(row).data)
            samples += block.shape[1]
            if on_block is not None:
                on_block(block)
    return SpooledAudio(
        paths=tuple(directory / f"channel-{i}.pcm" for i in range(len(files))),
        samples=samples,
        sample_rate=SAMPLE_RATE,
        **info,
    )


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


@contextlib.contextmanager
def _opened(
    source: str | Path | BinaryIO, max_duration_s: float | None
) -> Iterator[tuple[av.container.InputContainer, av.audio.stream.AudioStream]]:
    """The container and its first audio stream, with PyAV's errors on opening translated."""
    try:
        container = av.open(source if not isinstance(source, Path) else str(source), "r")
    except _AV_ERRORS as exc:
        raise UndecodableAudio(f"cannot decode audio: {exc}") from exc
    with container:
        if not container.streams:
            raise UndecodableAudio("the file holds no media streams")
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams})
            raise UndecodableAudio(
                f"the file has no audio stream (only {', '.join(kinds)})",
                code="no_audio_stream",
            )
        stream = container.streams.audio[0]
        _check_declared_duration(container, stream, max_duration_s)
        yield container, stream


class _SourceInfo(TypedDict):
    source_channels: int
    source_sample_rate: int
    source_codec: str


def _source_info(stream: av.audio.stream.AudioStream) -> _SourceInfo:
    return {
        "source_channels": stream.codec_context.channels or 1,
        "source_sample_rate": stream.codec_context.sample_rate or SAMPLE_RATE,
        "source_codec": stream.codec_context.name,
    }


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


def _blocks(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    layout: Layout,
    max_duration_s: float | None,
) -> Iterator[np.ndarray]:
    """16 kHz int16 blocks shaped ``(channels, samples)``, about one second each."""
    source_channels = stream.codec_context.channels or 1
    split = layout == "split" and source_channels > 1
    resampler = av.AudioResampler(
        format="s16p" if split else "s16",
        # Keep every source channel; WAV may declare only a count, so name the layout by it.
        layout=_LAYOUTS.get(source_channels, f"{source_channels}c") if split else "mono",
        rate=SAMPLE_RATE,
    )
    max_samples = None if max_duration_s is None else int(max_duration_s * SAMPLE_RATE)
    decoded = 0
    fifo: av.AudioFifo | None = None
    batch = 0

    def resample(frame: av.AudioFrame | None) -> Iterator[np.ndarray]:
        nonlocal decoded
        for out in resampler.resample(frame):
            array = out.to_ndarray()
            decoded += array.shape[1]
            if max_samples is not None and decoded > max_samples:
                raise AudioTooLong(f"audio lasts more than the limit of {max_duration_s:.0f} s")
            if array.shape[1]:
                yield array

    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames, None)
        except _AV_ERRORS as exc:
            raise UndecodableAudio(f"cannot decode audio: {exc}") from exc
        if frame is None:
            break
        # Timestamps are irrelevant once decoded; FIFOs reject frames whose pts jump.
        frame.pts = None
        if fifo is None or not _fits(fifo, frame):
            if fifo is not None:
                yield from _drain(fifo, resample)
            fifo = av.AudioFifo()
            batch = frame.sample_rate  # about one second per resampler call
        fifo.write(frame)
        if fifo.samples >= batch:
            yield from resample(fifo.read(batch))
    if fifo is not None:
        yield from _drain(fifo, resample)
    yield from resample(None)  # flush the resampler's delay line
    if decoded == 0:
        raise UndecodableAudio("the audio stream holds no samples", code="empty_audio")


def _fits(fifo: av.AudioFifo, frame: av.AudioFrame) -> bool:
    """Whether ``frame`` has the format the FIFO already holds (a FIFO takes one format)."""
    if fifo.format is None:
        return True
    return (
        fifo.format.name == frame.format.name
        and fifo.layout.name == frame.layout.name
        and fifo.sample_rate == frame.sample_rate
    )


def _drain(
    fifo: av.AudioFifo, resample: Callable[[av.AudioFrame | None], Iterator[np.ndarray]]
) -> Iterator[np.ndarray]:
    rest = fifo.read()
    if rest is not None:
        yield from resample(rest)
