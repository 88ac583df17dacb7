"""Errors of the local ASR server, each carrying the HTTP status and DashScope code it becomes.

The tree says what the client sees::

    AsrServerError                status, code, message, retry_after_s
    ├── ApiError                  a refusal built from any status and code (request parsing,
    │                             auth, quota, audio that cannot be fetched or decoded)
    ├── EngineError               an engine's refusal; the server turns it into an ApiError
    │   ├── InvalidInput          400 InvalidParameter
    │   ├── EngineBusy            429 Throttling (every slot and the queue taken)
    │   ├── EngineFailure         500 InternalError
    │   └── ScriptedFault         any status and code (scripted engine's fault injection)
    ├── DropConnection            200, then the connection cut without a final frame
    └── MalformedFrame            200, then a frame that is not JSON

Before the stream starts an error is a real 4xx/5xx reply; after it, an SSE error frame whose
status is only in the ``:HTTP_STATUS/nnn`` comment (docs/dashscope-protocol.md §3). The last
two stand for network and proxy failures, which the cloud never reports as an error body.
"""

from __future__ import annotations

__all__ = [
    "BAD_URL",
    "EMPTY_AUDIO",
    "INTERNAL_MESSAGE",
    "RATE_QUOTA",
    "RATE_QUOTA_MESSAGE",
    "ApiError",
    "AsrServerError",
    "DropConnection",
    "EngineBusy",
    "EngineError",
    "EngineFailure",
    "InvalidInput",
    "MalformedFrame",
]

# Messages and codes exactly as the cloud sends them (its spelling included).
BAD_URL = "The provided URL does not appear to be valid. Ensure it is correctly formatted."
EMPTY_AUDIO = "The audio is empty"
INTERNAL_MESSAGE = (
    "An internal error has occured, please try again later or contact service support."
)
RATE_QUOTA = "Throttling.RateQuota"
RATE_QUOTA_MESSAGE = "Requests rate limit exceeded, please try again later."


class AsrServerError(Exception):
    """Root of every error the local ASR server raises; ``status`` and ``code`` reach the client.

    ``retry_after_s`` becomes the ``Retry-After`` header of a refusal, when set.
    """

    status: int = 500
    code: str = "InternalError"

    def __init__(self, message: str = "", *, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class ApiError(AsrServerError):
    """A refusal with the HTTP status and DashScope code the cloud would send."""

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: float | None = None):
        super().__init__(message, retry_after_s=retry_after_s)
        self.status = status
        self.code = code

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


class EngineError(AsrServerError):
    """Root of the errors an engine raises to refuse a request; each maps to one API error."""


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


class DropConnection(AsrServerError):
    """Raised by an engine to make the server cut the connection without a final frame.

    Not an :class:`EngineError`: it stands for a network failure (fault injection), which
    the cloud never reports as an error body, so the client must see a truncated stream.
    ``code`` is what the journal records.
    """

    status = 200
    code = "ConnectionDropped"


class MalformedFrame(AsrServerError):
    """Raised by an engine to make the server send a frame that is not JSON, then end.

    Fault injection, like :class:`DropConnection`: it stands for a reply garbled on the way
    (a faulty proxy), which a client must report as a protocol error, not retry.
    """

    status = 200
    code = "MalformedFrame"
