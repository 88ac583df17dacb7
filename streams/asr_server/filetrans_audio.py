"""The audio of a long-file task: fetch (or take the uploaded object), decode each channel.

Failures become :class:`TaskFailed` with the codes the vendor's file-transcription tasks
report (``FILE_404_NOT_FOUND``, ``FILE_403_FORBIDDEN``, ``FILE_DOWNLOAD_FAILED``,
``FILE_TOO_LARGE``, ``FILE_PARSE_FAILED``, ``AUDIO_DURATION_TOO_LONG``...): the task ends
FAILED with them instead of the submit being refused.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

from streams.asr_server.audio import fetch_audio_url
from streams.asr_server.errors import ApiError
from streams.decode import decode_sync
from streams.errors import AudioTooLarge, AudioTooLong, UndecodableAudio
from streams.fetch import FetchLimits

__all__ = ["TaskAudio", "TaskFailed", "load_channels"]

# code of the fetch stage's error -> the task's code
_FETCH_CODES = {
    "audio_not_found": "FILE_404_NOT_FOUND",
    "reference_forbidden": "FILE_403_FORBIDDEN",
    "fetch_unavailable": "FILE_SERVER_ERROR",
}


class TaskFailed(Exception):
    """A long-file task ends FAILED with this ``code`` and ``message``."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TaskAudio:
    """The requested channels of a file as 16 kHz int16, in the order asked for."""

    channels: tuple[np.ndarray, ...]
    format: str
    """The file's extension if its URL has one, else the codec's name."""
    sample_rate: int
    """The file's own sample rate."""


async def load_channels(
    url: str,
    data: bytes | None,
    channel_ids: Sequence[int],
    limits: FetchLimits,
    max_audio_s: float,
) -> TaskAudio:
    """Fetch ``url`` (unless ``data`` holds it already) and decode ``channel_ids`` apart."""
    if data is None:
        data = await _fetch(url, limits)
    try:
        decoded = await asyncio.to_thread(
            decode_sync, io.BytesIO(data), layout="split", max_duration_s=max_audio_s
        )
    except AudioTooLong as exc:
        raise TaskFailed("AUDIO_DURATION_TOO_LONG", f"The audio is too long: {exc}") from exc
    except UndecodableAudio as exc:
        message = f"The audio file cannot be decoded: {exc.code}"
        raise TaskFailed("FILE_PARSE_FAILED", message) from exc
    missing = [c for c in channel_ids if c >= len(decoded.channels)]
    if missing:
        message = f"channel_id {missing} not in a file of {len(decoded.channels)} channel(s)"
        raise TaskFailed("InvalidParameter", message)
    suffix = urlparse(url).path.rpartition(".")[2].lower() if "." in urlparse(url).path else ""
    return TaskAudio(
        channels=tuple(decoded.channels[c] for c in channel_ids),
        format=suffix if 0 < len(suffix) <= 5 else decoded.source_codec,
        sample_rate=decoded.source_sample_rate,
    )


async def _fetch(url: str, limits: FetchLimits) -> bytes:
    try:
        return await fetch_audio_url(url, limits)
    except ApiError as exc:
        cause = exc.__cause__
        if isinstance(cause, AudioTooLarge):
            raise TaskFailed("FILE_TOO_LARGE", "The audio file is too large.") from exc
        code = getattr(cause, "code", "")
        task_code = _FETCH_CODES.get(code if isinstance(code, str) else "", "FILE_DOWNLOAD_FAILED")
        raise TaskFailed(task_code, f"Failed to download the file: {cause or exc}") from exc
