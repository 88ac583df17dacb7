"""The audio of a request: download an http(s) URL, decode bytes to 16 kHz mono PCM.

Both reuse the worker's stages (:mod:`streams.fetch`, :mod:`streams.decode`) and translate
their errors once, here, into the refusals the cloud sends: the pipeline's codes never reach
a client of the server.
"""

from __future__ import annotations

import asyncio
import io
import logging

import numpy as np

from streams.asr_server.errors import EMPTY_AUDIO, ApiError
from streams.decode import decode_sync
from streams.errors import AudioTooLarge, AudioTooLong, PipelineError, UndecodableAudio
from streams.fetch import FetchLimits, fetch, fetch_client
from streams.netguard import redact_url

__all__ = ["decode_pcm", "fetch_audio_url"]

logger = logging.getLogger(__name__)


async def fetch_audio_url(url: str, limits: FetchLimits) -> bytes:
    """Download the audio an http(s) URL names through the worker's SSRF guard and caps.

    Every hop of a redirect chain is checked, and the connection goes only to the address
    that was checked (:mod:`streams.netguard`); private hosts need ``allow_private_hosts``.
    """
    try:
        async with fetch_client(limits) as client:
            fetched = await fetch(url, limits, client)
        with fetched:
            return await asyncio.to_thread(fetched.path.read_bytes)
    except AudioTooLarge as exc:
        raise ApiError(400, "InvalidParameter", "Multimodal file size is too large") from exc
    except PipelineError as exc:
        # The cloud says no more than this; the reason (say, a refused host) is logged.
        logger.info("audio URL %s not fetched: %s", redact_url(url), exc)
        message = "Failed to download multimodal content."
        raise ApiError(400, "InvalidParameter", message) from exc


def decode_pcm(data: bytes, max_audio_s: float) -> np.ndarray:
    """Decode audio bytes to 16 kHz mono int16, translating decoder errors to API errors."""
    try:
        return decode_sync(io.BytesIO(data), layout="mix", max_duration_s=max_audio_s).channels[0]
    except AudioTooLong as exc:
        message = (
            f"The audio is too long: at most {max_audio_s:g} s of audio is accepted per "
            f"request ({exc.message})."
        )
        raise ApiError(400, "InvalidParameter", message) from exc
    except UndecodableAudio as exc:
        if exc.code == "empty_audio":
            raise ApiError(400, "InvalidParameter", EMPTY_AUDIO) from exc
        message = "The audio format is illegal and cannot be opened."
        raise ApiError(400, "InvalidParameter", message) from exc
