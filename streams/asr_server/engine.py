"""What the server asks of a recognition engine, and how an engine says no.

The server owns the protocol (auth, request parsing, fetching and decoding the audio, SSE
framing); an engine only turns 16 kHz mono PCM into text pieces. Engines refuse with the
:class:`~streams.asr_server.errors.EngineError` family, which the server maps to the
DashScope error the cloud would send.

The long-file API (:mod:`streams.asr_server.filetrans`) needs word timestamps; an engine that
can give them also implements :class:`WordEngine`, whose ``recognize_words`` returns every
word with its begin and end on the audio's timeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Engine", "Piece", "RecognitionRequest", "TimedWords", "Word", "WordEngine"]


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


@dataclass(frozen=True)
class Word:
    """One recognised word and where it lies in the audio (seconds from its start)."""

    text: str
    """The word as written, punctuation attached (``"Hello,"``); a CJK character alone."""
    begin_s: float
    end_s: float


@dataclass(frozen=True)
class TimedWords:
    """A whole recognition with word timestamps."""

    words: tuple[Word, ...]
    language: str | None = None
    emotion: str | None = None


@runtime_checkable
class WordEngine(Protocol):
    """An engine that can also recognise with word timestamps (the long-file API needs it)."""

    name: str

    async def recognize_words(self, request: RecognitionRequest) -> TimedWords:
        """Recognise the whole request; raise an ``EngineError`` to refuse."""
        ...
