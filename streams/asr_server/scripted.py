"""A scripted engine that stands in for the cloud: deterministic text, latency, injected faults.

The transcript is a function of the audio alone (words drawn with a seed taken from a hash of
the PCM), so a test can ask the journal what the server said and compare. Fault rules are
JSON, replaceable at run time through ``POST /scripted/faults``::

    [{"match": {"context_contains": "FAIL-ME", "rate": 0.5, "times": 2},
      "fault": "429", "retry_after_s": 2}]

``match`` keys are all optional (no ``match``: every request); ``times`` counts the requests
the rule still applies to. Faults:

- ``401``, ``400``, ``429``, ``500``: refused before the stream starts, with that status (an
  SSE body to a native SSE request, JSON otherwise);
- ``error_frame``: HTTP 200, then after ``after_deltas`` pieces an ``event:error`` frame whose
  status (``status``, default 500; 400-599) is only in its ``:HTTP_STATUS/nnn`` comment, as
  the cloud sends mid-stream failures; ``{"fault": "error_frame", "status": 503}``;
- ``error_frame_429``: ``error_frame`` with status 429 and ``Throttling.RateQuota``;
- ``malformed_frame``: after ``after_deltas`` pieces, a frame whose ``data:`` is not JSON,
  then the end of the stream (a non-streaming request gets a 200 body that is not JSON);
- ``length``: the reply ends normally after ``after_deltas`` pieces but with ``finish_reason``
  "length", as when the output hits the model's limit;
- ``cut``: the connection dropped after ``after_deltas`` pieces;
- ``slow_first_byte``: ``delay_s`` more before anything is sent.

``code`` and ``message`` override the error sent (defaults follow the status: 400
``InvalidParameter``, 401 ``InvalidApiKey``, 429 ``Throttling``, 500 ``InternalError``, 503
``ModelUnavailable``, other statuses ``InternalError``).
``GET /scripted/journal`` lists recent requests, refused ones included (an entry appears when
recognition starts and is completed when the reply ends, or when the request is refused;
``received_at``, ``started_at``, ``first_delta_at`` and ``finished_at`` are Unix times, so a
benchmark can subtract the server's own time and a quota test can count requests per
second; ``http_status`` and ``error_code`` say how each ended) and ``POST /scripted/reset``
clears journal and rules.
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

from streams.asr_server.engine import (
    DropConnection,
    EngineError,
    MalformedFrame,
    Piece,
    RecognitionRequest,
)

if TYPE_CHECKING:
    from streams.asr_server.app import RequestOutcome

__all__ = [
    "FAULTS",
    "FaultRule",
    "ScriptedConfig",
    "ScriptedEngine",
    "ScriptedFault",
    "control_routes",
]

# HTTP status -> (code, message) the cloud sends with it
_BY_STATUS = {
    400: ("InvalidParameter", "Required body invalid, please check the request body format."),
    401: ("InvalidApiKey", "Invalid API-key provided."),
    429: ("Throttling", "Requests throttling triggered."),
    500: (
        "InternalError",
        "An internal error has occured, please try again later or contact service support.",
    ),
    503: ("ModelUnavailable", "Model is unavailable, please try again later."),
}
# fault -> (HTTP status, code, message) of the error it raises
_ERRORS = {
    "401": (401, *_BY_STATUS[401]),
    "400": (400, *_BY_STATUS[400]),
    "429": (429, *_BY_STATUS[429]),
    "500": (500, *_BY_STATUS[500]),
    "error_frame_429": (
        429,
        "Throttling.RateQuota",
        "Requests rate limit exceeded, please try again later.",
    ),
}
_REFUSALS = frozenset({"401", "400", "429", "500"})
"""Faults refused before the stream starts."""
_MID_STREAM = frozenset({"cut", "error_frame", "error_frame_429", "malformed_frame", "length"})
"""Faults that strike after ``after_deltas`` pieces."""
FAULTS = frozenset({*_ERRORS, *_MID_STREAM, "slow_first_byte"})
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


class ScriptedFault(EngineError):
    """An injected error; unlike the engine errors it carries its own status and code."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None):
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status
        self.code = code


@dataclass
class FaultRule:
    """One fault and the requests it applies to."""

    fault: str
    context_contains: str | None = None
    rate: float | None = None
    """Probability that a matching request gets the fault (seeded RNG); None: always."""
    times: int | None = None
    """Requests the rule still applies to; None: forever."""
    retry_after_s: float | None = None
    after_deltas: int = 1
    delay_s: float = 1.0
    code: str | None = None
    message: str | None = None
    status: int | None = None
    """HTTP status of an ``error_frame`` (default 500)."""

    @classmethod
    def from_dict(cls, raw: object) -> FaultRule:
        """Read a rule from its JSON form; raise ValueError on anything unexpected."""
        if not isinstance(raw, dict):
            raise ValueError(f"a fault rule must be an object, got {raw!r}")
        rule = dict(raw)
        match = rule.pop("match", None) or {}
        if not isinstance(match, dict) or set(match) - {"context_contains", "rate", "times"}:
            raise ValueError(f"unexpected match {match!r}")
        fault = str(rule.pop("fault", ""))
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {sorted(FAULTS)}, got {fault!r}")
        try:
            made = cls(fault, **match, **rule)
        except TypeError as exc:
            raise ValueError(f"unexpected key in fault rule {raw!r}") from exc
        numbers = {"rate": made.rate, "retry_after_s": made.retry_after_s, "delay_s": made.delay_s}
        counts = {"times": made.times, "after_deltas": made.after_deltas, "status": made.status}
        for name, value in {**numbers, **counts}.items():
            kinds = (int,) if name in counts else (int, float)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if made.rate is not None and not 0 <= made.rate <= 1:
            raise ValueError(f"rate must lie in [0, 1], got {made.rate!r}")
        if made.times is not None and made.times < 0:
            raise ValueError(f"times must not be negative, got {made.times!r}")
        if made.status is not None and made.fault != "error_frame":
            raise ValueError(f"status applies to error_frame only, not {made.fault!r}")
        if made.status is not None and not 400 <= made.status <= 599:
            raise ValueError(f"status must be an error status (400-599), got {made.status!r}")
        return made

    def to_dict(self) -> dict[str, Any]:
        """Write the rule in the JSON form :meth:`from_dict` reads."""
        data = asdict(self)
        match = {k: data.pop(k) for k in ("context_contains", "rate", "times")}
        return {"match": {k: v for k, v in match.items() if v is not None}, **data}

    def error(self) -> ScriptedFault:
        """Build the error this rule injects."""
        if self.fault == "error_frame":
            status = self.status or 500
            code, message = _BY_STATUS.get(status, _BY_STATUS[500])
        else:
            status, code, message = _ERRORS[self.fault]
        retry = self.retry_after_s
        if status == 429 and retry is None:
            retry = 1.0
        return ScriptedFault(
            status, self.code or code, self.message or message, retry_after_s=retry
        )


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
        if fault in _REFUSALS:
            raise rule.error()
        cfg = self.config
        language = request.language or cfg.language
        pieces = self.deltas(self.transcript_for(request.pcm))
        stop_at = rule.after_deltas if fault in _MID_STREAM else len(pieces)
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

    def _pick(self, context: str) -> FaultRule | None:
        """Return the first rule that applies to a request with this context, spending it."""
        for rule in self._rules:
            if rule.times is not None and rule.times <= 0:
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

    def _log(self, fields: dict[str, Any]) -> None:
        request_id = fields["request_id"]
        entry = self._journal.get(request_id)
        if entry is None:
            entry = self._journal[request_id] = {
                "request_id": request_id,
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
