"""Fault injection for the scripted engine: the rules, what they match, the errors they raise.

Rules are JSON, given at start (``--faults``) or replaced at run time through
``POST /scripted/faults``::

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

Long-file tasks (:mod:`streams.asr_server.filetrans`) meet only these two, and requests of
the other APIs never meet them (``match`` may name ``file_url_contains``):

- ``task_fail``: the task ends FAILED with ``code`` and ``message`` (default
  ``FILE_DOWNLOAD_FAILED``) after its delay;
- ``task_hold``: the task stays RUNNING until ``POST /scripted/release`` lets it go on (or the
  server is killed, which loses it: a poll then answers ``UNKNOWN``).

``code`` and ``message`` override the error sent (defaults follow the status: 400
``InvalidParameter``, 401 ``InvalidApiKey``, 429 ``Throttling``, 500 ``InternalError``, 503
``ModelUnavailable``, other statuses ``InternalError``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from streams.asr_server.errors import (
    INTERNAL_MESSAGE,
    RATE_QUOTA,
    RATE_QUOTA_MESSAGE,
    EngineError,
)

__all__ = ["FAULTS", "MID_STREAM", "REFUSALS", "TASK_FAULTS", "FaultRule", "ScriptedFault"]

# HTTP status -> (code, message) the cloud sends with it
_BY_STATUS = {
    400: ("InvalidParameter", "Required body invalid, please check the request body format."),
    401: ("InvalidApiKey", "Invalid API-key provided."),
    429: ("Throttling", "Requests throttling triggered."),
    500: ("InternalError", INTERNAL_MESSAGE),
    503: ("ModelUnavailable", "Model is unavailable, please try again later."),
}
# fault -> (HTTP status, code, message) of the error it raises
_ERRORS = {
    "401": (401, *_BY_STATUS[401]),
    "400": (400, *_BY_STATUS[400]),
    "429": (429, *_BY_STATUS[429]),
    "500": (500, *_BY_STATUS[500]),
    "error_frame_429": (429, RATE_QUOTA, RATE_QUOTA_MESSAGE),
}
REFUSALS = frozenset({"401", "400", "429", "500"})
"""Faults refused before the stream starts."""
MID_STREAM = frozenset({"cut", "error_frame", "error_frame_429", "malformed_frame", "length"})
"""Faults that strike after ``after_deltas`` pieces."""
TASK_FAULTS = frozenset({"task_fail", "task_hold"})
"""Faults of long-file tasks only."""
FAULTS = frozenset({*_ERRORS, *MID_STREAM, *TASK_FAULTS, "slow_first_byte"})
_MATCH = ("context_contains", "file_url_contains", "rate", "times")


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
    file_url_contains: str | None = None
    """Long-file tasks only: a substring of the task's ``file_url``."""
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
        if not isinstance(match, dict) or set(match) - set(_MATCH):
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
        match = {k: data.pop(k) for k in _MATCH}
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
