"""A scripted engine that stands in for the cloud: deterministic text, latency, injected faults.

The transcript is a function of the audio alone (words drawn with a seed taken from a hash of
the PCM), so a test can ask the journal what the server said and compare. Faults follow the
rules of :mod:`streams.asr_server.faults`, replaceable at run time through
``POST /scripted/faults``.
``GET /scripted/journal`` lists recent requests, refused ones included (an entry appears when
recognition starts and is completed when the reply ends, or when the request is refused;
``received_at``, ``started_at``, ``first_delta_at`` and ``finished_at`` are Unix times, so a
benchmark can subtract the server's own time and a quota test can count requests per
second; ``http_status`` and ``error_code`` say how each ended) and ``POST /scripted/reset``
clears journal and rules.

Long-file tasks (:mod:`streams.asr_server.filetrans`) get words through
:meth:`ScriptedEngine.recognize_words`: the same drawn words, laid over the stretches where the
audio really speaks (:func:`~streams.asr_server.sentences.speech_stretches`), one sentence per
stretch, so sentence times follow the speech. Their uploads, submits and polls enter the
journal too, as entries whose ``kind`` is ``upload``, ``submit``, ``poll`` or ``task`` (a
task's own entry, completed when it ends); the other requests' entries have ``kind``
``recognition``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams.asr_server.engine import Piece, RecognitionRequest, TimedWords, Word
from streams.asr_server.errors import DropConnection, MalformedFrame
from streams.asr_server.faults import MID_STREAM, REFUSALS, TASK_FAULTS, FaultRule
from streams.asr_server.sentences import speech_stretches, split_punctuation

if TYPE_CHECKING:
    from streams.asr_server.app import RequestOutcome

__all__ = ["ScriptedConfig", "ScriptedEngine", "control_routes"]

_WORDS = tuple(
    """account address agent answer balance bank call card change charge check claim contact
    credit customer date delivery detail email error fee form help hold invoice issue line
    message minute month name network number offer order package payment phone plan policy
    price problem question receipt record refund request reply service signal speed support
    system thanks ticket today transfer update upgrade week please sure right okay again
    yes no maybe one two three four five ten hundred morning evening happy quick new old
    good fine late early next last small large free open closed""".split()  # noqa: SIM905
)
_CJK = "\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef"
# Delta tokens: a CJK character each (no spaces there), otherwise a word with its leading space.
_TOKEN = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]+)")


@dataclass(frozen=True)
class ScriptedConfig:
    """How the scripted engine talks: its text, its pace, its faults."""

    transcript: str | None = None
    """Fixed text for every request; None draws words from the audio's hash."""
    words_per_second: float = 2.5
    words_per_delta: int = 3
    first_delta_s: float = 0.05
    delta_interval_s: float = 0.02
    first_delta_per_audio_s: float = 0.0
    """Extra delay before the first piece per second of audio (a real-time factor)."""
    language: str = "en"
    """Language annotated when the request names none."""
    faults: tuple[dict[str, Any], ...] = ()
    """Initial fault rules in their JSON form."""
    seed: int = 0
    """Seed of the RNG that decides rules with a ``rate``."""
    journal_size: int = 1000


_NO_FAULT = FaultRule("")


class ScriptedEngine:
    """An :class:`~streams.asr_server.engine.Engine` that plays a script instead of listening."""

    name = "scripted"

    def __init__(self, config: ScriptedConfig | None = None):
        self.config = config or ScriptedConfig()
        # Seeded for repeatable fault runs; nothing here is secret.
        self._rng = random.Random(self.config.seed)  # noqa: S311
        self._rules = [FaultRule.from_dict(rule) for rule in self.config.faults]
        # By request id, oldest first; entries appear when recognition starts (so tests can
        # see a request in flight) and are completed by the server's ``on_finished`` hook.
        self._journal: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def transcript_for(self, pcm: np.ndarray) -> str:
        """Return the text this engine says for the given PCM."""
        if self.config.transcript is not None:
            return self.config.transcript
        seed = int.from_bytes(hashlib.sha256(pcm.tobytes()).digest()[:8], "big")
        rng = random.Random(seed)  # noqa: S311  # repeatable text, not secrecy
        count = max(1, round(self.config.words_per_second * len(pcm) / 16_000))
        words = [rng.choice(_WORDS) for _ in range(count)]
        return " ".join(words).capitalize() + "."

    def timed_words(self, pcm: np.ndarray, sample_rate: int = 16_000) -> tuple[Word, ...]:
        """Lay this engine's words for ``pcm`` over its speech stretches, one sentence each.

        A stretch gets words in proportion to its length (at least one); they share it in
        equal slots, each word spoken over the first 80 % of its slot, and the last ends with
        a full stop. A fixed ``transcript`` is dealt out over the stretches the same way.
        """
        stretches = speech_stretches(pcm, sample_rate)
        if not stretches:
            return ()
        total = sum(end - begin for begin, end in stretches)
        if self.config.transcript is not None:
            tokens = self.config.transcript.split()
        else:
            tokens = self.transcript_for(pcm).rstrip(".").lower().split()
            wanted = max(len(stretches), round(self.config.words_per_second * total))
            tokens = [tokens[i % len(tokens)] for i in range(wanted)]
        counts, dealt, done = [], 0, 0.0
        for begin, end in stretches:
            done += end - begin
            upto = max(dealt + 1, round(len(tokens) * done / total))
            counts.append(upto - dealt)
            dealt = upto
        words: list[Word] = []
        position = 0
        for (begin, end), count in zip(stretches, counts, strict=True):
            chunk = tokens[position : position + count] or ["okay"]
            position += count
            slot = (end - begin) / len(chunk)
            for index, token in enumerate(chunk):
                text = (
                    token.capitalize() if index == 0 and self.config.transcript is None else token
                )
                if index == len(chunk) - 1 and not split_punctuation(text)[1]:
                    text += "."
                start = begin + index * slot
                words.append(
                    Word(text, start, start + 0.8 * slot if index < len(chunk) - 1 else end)
                )
        return tuple(words)

    async def recognize_words(self, request: RecognitionRequest) -> TimedWords:
        """Words with times for a long-file task (:meth:`timed_words`), after the first delay."""
        await asyncio.sleep(self.config.first_delta_s)
        words = await asyncio.to_thread(self.timed_words, request.pcm, request.sample_rate)
        return TimedWords(words, request.language or self.config.language, "neutral")

    def task_fault(self, file_url: str) -> FaultRule | None:
        """The ``task_*`` rule that applies to a long-file task for ``file_url``, spent."""
        return self._pick("", file_url=file_url)

    def deltas(self, text: str) -> list[str]:
        """Split ``text`` into the pieces sent one by one; they concatenate back to ``text``."""
        tokens = _TOKEN.findall(text)
        size = max(1, self.config.words_per_delta)
        pieces = ["".join(tokens[i : i + size]) for i in range(0, len(tokens), size)]
        rest = text[len("".join(pieces)) :]  # trailing whitespace the tokens leave out
        if rest and pieces:
            pieces[-1] += rest
        return pieces

    async def recognize(self, request: RecognitionRequest) -> AsyncIterator[Piece]:
        """Yield the scripted transcript at the configured pace, or play the matching fault."""
        rule = self._pick(request.context) or _NO_FAULT
        fault = rule.fault
        self._log(
            {
                "request_id": request.request_id,
                "context": request.context,
                "language": request.language,
                "audio_s": request.duration_s,
                "fault": fault or None,
                "started_at": time.time(),
            }
        )
        if fault in REFUSALS:
            raise rule.error()
        cfg = self.config
        language = request.language or cfg.language
        pieces = self.deltas(self.transcript_for(request.pcm))
        stop_at = rule.after_deltas if fault in MID_STREAM else len(pieces)
        if stop_at == 0:
            yield Piece("", language, "neutral")  # commits HTTP 200 so the fault lands mid-stream
        delay = cfg.first_delta_s + cfg.first_delta_per_audio_s * request.duration_s
        await asyncio.sleep(delay + (rule.delay_s if fault == "slow_first_byte" else 0.0))
        sent = pieces[:stop_at]
        for index, text in enumerate(sent):
            if index:
                await asyncio.sleep(cfg.delta_interval_s)
            else:
                self._log({"request_id": request.request_id, "first_delta_at": time.time()})
            reason = "length" if fault == "length" and index == len(sent) - 1 else None
            yield Piece(text, language, "neutral", reason)
        if fault == "length" and not sent:
            yield Piece("", language, "neutral", "length")
        if fault == "cut":
            raise DropConnection
        if fault == "malformed_frame":
            raise MalformedFrame
        if fault in {"error_frame", "error_frame_429"}:
            raise rule.error()

    def _pick(self, context: str, *, file_url: str | None = None) -> FaultRule | None:
        """Return the first rule that applies to a request with this context, spending it.

        With ``file_url`` (a long-file task) only ``task_*`` rules apply, otherwise only the
        others.
        """
        for rule in self._rules:
            if rule.times is not None and rule.times <= 0:
                continue
            if (file_url is not None) != (rule.fault in TASK_FAULTS):
                continue
            if file_url is not None and rule.context_contains is not None:
                continue
            if rule.file_url_contains is not None and rule.file_url_contains not in (
                file_url or ""
            ):
                continue
            if rule.context_contains is not None and rule.context_contains not in context:
                continue
            if rule.rate is not None and self._rng.random() >= rule.rate:
                continue
            if rule.times is not None:
                rule.times -= 1
            return rule
        return None

    def set_faults(self, rules: Iterable[object]) -> list[FaultRule]:
        """Replace the fault rules (all or nothing: a bad rule leaves the old ones in place)."""
        self._rules = [FaultRule.from_dict(rule) for rule in rules]
        return self._rules

    def faults(self) -> list[dict[str, Any]]:
        """Return the current rules in JSON form, with what is left of their ``times``."""
        return [rule.to_dict() for rule in self._rules]

    def reset(self) -> None:
        """Forget the journal and the rules, and reseed the RNG."""
        self._journal.clear()
        self._rules = []
        self._rng = random.Random(self.config.seed)  # noqa: S311

    def journal(self) -> list[dict[str, Any]]:
        """Return the journal, oldest request first; ``http_status`` is None while in flight."""
        return [dict(entry) for entry in self._journal.values()]

    def record(self, outcome: RequestOutcome) -> None:
        """Complete a request's journal entry (the server's ``on_finished`` hook)."""
        self._log({**asdict(outcome), "finished_at": time.time()})

    def log_event(self, fields: dict[str, Any]) -> None:
        """Add or complete a long-file entry (``kind``, ``task_id``, ``time``, ``status``...)."""
        request_id = fields["request_id"]
        entry = self._journal.get(request_id)
        if entry is None:
            entry = self._journal[request_id] = {"request_id": request_id}
            while len(self._journal) > self.config.journal_size:
                self._journal.popitem(last=False)
        entry.update(fields)

    def _log(self, fields: dict[str, Any]) -> None:
        request_id = fields["request_id"]
        entry = self._journal.get(request_id)
        if entry is None:
            entry = self._journal[request_id] = {
                "request_id": request_id,
                "kind": "recognition",
                "received_at": None,
                "endpoint": None,
                "stream": None,
                "http_status": None,
                "error_code": None,
                "error_message": None,
                "context": None,
                "language": None,
                "audio_s": None,
                "text": "",
                "finish_reason": None,
                "finished": False,
                "fault": None,
                "started_at": None,
                "first_delta_at": None,
                "finished_at": None,
            }
            while len(self._journal) > self.config.journal_size:
                self._journal.popitem(last=False)
        entry.update(fields)


def control_routes(engine: ScriptedEngine) -> list[Route]:
    """Routes under ``/scripted/`` to read the journal and change the faults at run time."""

    async def journal(request: Request) -> Response:
        return JSONResponse({"entries": engine.journal()})

    async def get_faults(request: Request) -> Response:
        return JSONResponse({"rules": engine.faults()})

    async def set_faults(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            rules = body.get("rules") if isinstance(body, dict) else body
            if not isinstance(rules, list):
                raise ValueError('expected a list of rules or {"rules": [...]}')
            engine.set_faults(rules)
        except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"rules": engine.faults()})

    async def reset(request: Request) -> Response:
        engine.reset()
        return JSONResponse({"status": "ok"})

    return [
        Route("/scripted/journal", journal, methods=["GET"]),
        Route("/scripted/faults", get_faults, methods=["GET"]),
        Route("/scripted/faults", set_faults, methods=["POST"]),
        Route("/scripted/reset", reset, methods=["POST"]),
    ]
