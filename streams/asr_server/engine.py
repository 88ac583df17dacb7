"""What the server asks of a recognition engine, and how an engine says no.

The server owns the protocol (auth, request parsing, fetching and decoding the audio, SSE
framing); an engine only turns 16 kHz mono PCM into text pieces. Engines refuse with the
:class:`~streams.asr_server.errors.EngineError` family, which the server maps to the
DashScope error the cloud would send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Engine", "Piece", "RecognitionRequest"]


@dataclass(frozen=True)
class RecognitionRequest:
    """One recognition: decoded audio plus the options the API carries."""

    pcm: np.ndarray
    """int16 mono samples at ``sample_rate``."""
    sample_rate: int
    request_id: str
    language: str | None = None
    """ISO code from ``asr_options.language``; None means detect."""
    context: str = ""
    """Text of the system message: glossary or background that biases recognition."""
    enable_itn: bool = False

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return len(self.pcm) / self.sample_rate


@dataclass(frozen=True)
class Piece:
    """One increment of recognised text, as it becomes available."""

    text: str
    language: str | None = None
    """ISO code of the detected (or forced) language, when known."""
    emotion: str | None = None
    """One of the API's emotion labels, only when something really estimated it."""
    finish_reason: str | None = None
    """``length`` on the last piece when the engine stopped at its output limit (the reply
    then ends with that ``finish_reason`` instead of ``stop``)."""


class Engine(Protocol):
    """Turns a request into text pieces; concatenated, they are the whole transcript."""

    name: str

    def recognize(self, request: RecognitionRequest) -> AsyncIterator[Piece]:
        """Yield the transcript piece by piece; raise an ``EngineError`` to refuse."""
        ...
