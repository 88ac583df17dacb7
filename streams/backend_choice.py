"""Which recognition backend answers a recording: the event's ``recognition.backend``, else
``STREAMS_ASR_BACKEND``.

The streaming backends (``dashscope``, ``openai``) run inside the pipeline, which holds one
backend object: :class:`ChosenBackend` is that object, and passes each request to the backend
the recording being processed chose (a context variable that every task of the recording's
processing inherits, set by streams/answer.py). ``filetrans`` never reaches the pipeline: the
answerer hands such recordings to streams/filetrans_task.py.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncGenerator, Iterator, Mapping

import orjson

from streams.transcribe import Delta, RecognitionBackend, RecognitionOptions, Result

__all__ = ["BACKENDS", "ChosenBackend", "backend_of", "choose"]

BACKENDS = ("dashscope", "openai", "filetrans")

_CHOSEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("backend", default=None)


def backend_of(raw: bytes) -> str | None:
    """The backend a raw recording event asks for (``recognition.backend``), if it names one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    recognition = data.get("recognition") if isinstance(data, dict) else None
    value = recognition.get("backend") if isinstance(recognition, dict) else None
    return value if value in BACKENDS else None


@contextlib.contextmanager
def choose(name: str | None) -> Iterator[None]:
    """Requests made inside the block go to backend ``name`` (None: the default)."""
    token = _CHOSEN.set(name)
    try:
        yield
    finally:
        _CHOSEN.reset(token)


class ChosenBackend:
    """The streaming backends by name; each request goes to the one its recording chose."""

    def __init__(self, backends: Mapping[str, RecognitionBackend], default: str) -> None:
        self._backends = dict(backends)
        self._default = default if default in self._backends else next(iter(self._backends))

    @property
    def name(self) -> str:
        """The backend of the recording being processed."""
        chosen = _CHOSEN.get()
        return chosen if chosen in self._backends else self._default

    def stream(
        self, audio_uri: str, options: RecognitionOptions
    ) -> AsyncGenerator[Delta | Result, None]:
        """The chosen backend's stream."""
        return self._backends[self.name].stream(audio_uri, options)
