"""What the server asks of a recognition engine, and how an engine says no.

The server owns the protocol (auth, request parsing, fetching and decoding the audio, SSE
framing); an engine only turns 16 kHz mono PCM into text pieces. Engines raise the errors
below and the server maps each to the DashScope error the cloud would send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "DropConnection",
    "Engine",
    "EngineBusy",
    "EngineError",
    "EngineFailure",
    "InvalidInput",
    "MalformedFrame",
    "Piece",
    "RecognitionRequest",
]


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
        """Yield the transcript piece by piece; raise an :class:`EngineError` to refuse."""
        ...


class EngineError(Exception):
    """Root of the errors an engine raises; each maps to one DashScope error."""

    status = 500
    code = "InternalError"

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidInput(EngineError):
    """The audio or the options cannot be recognised (HTTP 400 InvalidParameter)."""

    status = 400
    code = "InvalidParameter"


class EngineBusy(EngineError):
    """Every slot and the queue are taken (HTTP 429 Throttling)."""

    status = 429
    code = "Throttling"


class EngineFailure(EngineError):
    """The engine broke while recognising (HTTP 500 InternalError)."""


class DropConnection(Exception):
    """Raised by an engine to make the server cut the connection without a final frame.

    Not an :class:`EngineError`: it stands for a network failure (fault injection), which
    the cloud never reports as an error body, so the client must see a truncated stream.
    """


class MalformedFrame(Exception):
    """Raised by an engine to make the server send a frame that is not JSON, then end.

    Fault injection, like :class:`DropConnection`: it stands for a reply garbled on the way
    (a faulty proxy), which a client must report as a protocol error, not retry.
    """
