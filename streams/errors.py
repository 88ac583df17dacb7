"""Errors of the pipeline, each with a stable code that failed events and metrics carry.

The tree says what the pipeline does with an error, not where it came from::

    PipelineError                     code, stage, retryable
    ├── PermanentError                fail the recording at once (failed event)
    │   ├── InvalidEvent              invalid_event, unsupported_schema_version
    │   ├── ReferenceRejected         unsupported_reference, reference_forbidden
    │   ├── AudioNotFound             audio_not_found
    │   ├── AudioTooLarge             audio_too_large
    │   ├── AudioTooLong              audio_too_long
    │   ├── UndecodableAudio          undecodable_audio, no_audio_stream, empty_audio
    │   ├── RecognitionRejected       asr_rejected (HTTP 400 / InvalidParameter)
    │   ├── RecognitionUnauthorized   asr_unauthorized (401 / 403)
    │   ├── RecognitionProtocolError  asr_protocol_error (a reply we cannot parse)
    │   ├── RecognitionTaskFailed     asr_task_failed (a filetrans task ended FAILED; the
    │                                 vendor's code leads the message)
    │   └── WorkerCrashed             worker_crashed (the worker died each time it processed
    │                                 the recording; streams/crashloop.py)
    └── TransientError                retry with backoff inside the recording's deadline
        ├── FetchUnavailable          fetch_unavailable (timeouts, 5xx, dropped download)
        ├── RecognitionThrottled      asr_throttled (429, honours Retry-After; also the codes
        │                             Throttling.* and compatible mode's limit_requests)
        ├── RecognitionUnavailable    asr_unavailable (5xx, connection refused or reset; also
        │                             the codes InternalError, SystemError,
        │                             ModelServingError, ModelUnavailable)
        ├── RecognitionTimeout        asr_timeout (no first byte or a silent stream; also the
        │                             code RequestTimeOut)
        ├── RecognitionStreamCut      asr_stream_cut (stream ended before finish_reason stop)
        └── DeadlineExceeded          deadline_exceeded (the recording's time budget ran out)

Third-party exceptions are translated once, at the stage boundary, with ``raise ... from``.
The recogniser's answers map in streams/sse_replies.py: a 429 is throttling, then a known
error code decides, then the HTTP status (a mid-stream error frame's status is the
``:HTTP_STATUS/nnn`` comment before it; compatible mode's frames have none, so their code
alone decides).
When retries run out, the last transient error becomes the failed event (``retryable`` true).

What happens to an error is decided here, by :func:`disposition` (and :func:`retry_wait`, the
retry hook the pipeline hands to stamina):

==============================  ========  =================================================
error                           action    what follows
==============================  ========  =================================================
TransientError                  retry     backoff with jitter, or the ``Retry-After`` it
                                          carries, until the attempts or the deadline run out;
                                          then ``fail`` with that error's code
RecognitionThrottled before     (wait)    not an attempt: the rate limiter pauses every
the stream starts                         request for ``Retry-After`` and sends it again
                                          (streams/ratelimit.py); ``retry`` after 30 in a row
PermanentError                  fail      one failed event at once, offset committed
any other PipelineError /       fail      ``internal_error`` (a bug must not stop the agent
unexpected exception                      nor lose the recording); traceback in the log
the broker refuses the final    fail      ``internal_error``, stage ``publish`` (too big for
                                          the topic, say), published by the agent instead
no terminal event can be        stop      the worker exits (status 75) without committing
published (the broker is gone)            the offset: the recording is redelivered
the worker died (killed, out    (count)   the start was counted in the ``finalized`` table
of memory, a decoder crash)               before the risky stages; redelivered, it starts
while processing it                       again, its last allowed start alone in the worker
started ``STREAMS_MAX_STARTS``  fail      ``worker_crashed`` at once, without processing it
times without a terminal event            again (streams/crashloop.py)
==============================  ========  =================================================

An exception must never leave the agent's loop: faust acknowledges the current event when its
stream generator closes, which would commit a recording that has no terminal event
(streams/agents.py).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "Action",
    "AudioNotFound",
    "AudioTooLarge",
    "AudioTooLong",
    "DeadlineExceeded",
    "FetchUnavailable",
    "InvalidEvent",
    "PermanentError",
    "PipelineError",
    "RecognitionProtocolError",
    "RecognitionRejected",
    "RecognitionStreamCut",
    "RecognitionTaskFailed",
    "RecognitionThrottled",
    "RecognitionTimeout",
    "RecognitionUnauthorized",
    "RecognitionUnavailable",
    "ReferenceRejected",
    "TransientError",
    "UndecodableAudio",
    "WorkerCrashed",
    "disposition",
    "retry_wait",
]

Action = Literal["retry", "fail", "stop"]


class PipelineError(Exception):
    """Root of every error a recording can end with."""

    code: str = "internal_error"
    stage: str = "pipeline"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if stage is not None:
            self.stage = stage

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, stage={self.stage!r}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors come back from the audio processes (streams/audiostages.py) pickled; the
        # default keeps only the message, and a code or stage given to __init__ would be lost.
        return (_restore, (type(self), self.message, dict(self.__dict__)))


def _restore(cls: type[PipelineError], message: str, state: dict[str, Any]) -> PipelineError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class PermanentError(PipelineError):
    """Retrying cannot help: the recording fails at once."""


class TransientError(PipelineError):
    """The same request may succeed later."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        stage: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message, code=code, stage=stage)
        self.retry_after_s = retry_after_s


class InvalidEvent(PermanentError):
    """The recording event is not valid JSON or breaks its schema."""

    code = "invalid_event"
    stage = "validate"


class ReferenceRejected(PermanentError):
    """The audio reference has a scheme we do not fetch, or points where we may not go."""

    code = "reference_forbidden"
    stage = "fetch"


class AudioNotFound(PermanentError):
    """The audio reference names nothing: a missing file or an HTTP 404/410."""

    code = "audio_not_found"
    stage = "fetch"


class AudioTooLarge(PermanentError):
    """The audio is bigger than the configured size cap."""

    code = "audio_too_large"
    stage = "fetch"


class AudioTooLong(PermanentError):
    """The audio lasts longer than the configured duration cap."""

    code = "audio_too_long"
    stage = "decode"


class UndecodableAudio(PermanentError):
    """PyAV cannot read audio from the bytes (not audio, truncated, no audio stream, empty)."""

    code = "undecodable_audio"
    stage = "decode"


class RecognitionRejected(PermanentError):
    """The recogniser refused the request as invalid (HTTP 400)."""

    code = "asr_rejected"
    stage = "transcribe"


class RecognitionUnauthorized(PermanentError):
    """The recogniser refused our credentials (HTTP 401/403)."""

    code = "asr_unauthorized"
    stage = "transcribe"


class RecognitionProtocolError(PermanentError):
    """The recogniser answered something that breaks the protocol."""

    code = "asr_protocol_error"
    stage = "transcribe"


class RecognitionTaskFailed(PermanentError):
    """An asynchronous (filetrans) task ended FAILED; the message starts with the vendor code."""

    code = "asr_task_failed"
    stage = "transcribe"


class WorkerCrashed(PermanentError):
    """The worker died every time it processed this recording: it is not processed again.

    A poison file (a decoder crash, memory exhausted) would otherwise kill every worker it is
    redelivered to, for ever, and stall its partition; each round might be billed again.
    """

    code = "worker_crashed"
    stage = "pipeline"


class FetchUnavailable(TransientError):
    """The audio could not be downloaded now (timeout, 5xx, connection dropped)."""

    code = "fetch_unavailable"
    stage = "fetch"


class RecognitionThrottled(TransientError):
    """The recogniser asked us to slow down (HTTP 429)."""

    code = "asr_throttled"
    stage = "transcribe"


class RecognitionUnavailable(TransientError):
    """The recogniser failed on its side or could not be reached (5xx, refused, reset)."""

    code = "asr_unavailable"
    stage = "transcribe"


class RecognitionTimeout(TransientError):
    """The recogniser sent nothing within the configured timeout."""

    code = "asr_timeout"
    stage = "transcribe"


class RecognitionStreamCut(TransientError):
    """The SSE stream ended before its final frame."""

    code = "asr_stream_cut"
    stage = "transcribe"


class DeadlineExceeded(TransientError):
    """The recording's time budget (retries included) ran out."""

    code = "deadline_exceeded"
    stage = "pipeline"


def disposition(exc: BaseException, *, publishing: bool = False) -> Action:
    """Decide what becomes of a recording that raised ``exc``.

    ``publishing`` says the error came from sending the terminal event itself: then no other
    event can say what happened, so the worker stops processing the recording without
    committing its offset, and it is redelivered.
    """
    if publishing:
        return "stop"
    if isinstance(exc, TransientError):
        return "retry"
    return "fail"


def retry_wait(exc: BaseException) -> bool | float:
    """Stamina's retry hook: retry transient errors only, after their ``Retry-After`` if any."""
    if disposition(exc) != "retry":
        return False
    retry_after = getattr(exc, "retry_after_s", None)
    return True if retry_after is None else max(retry_after, 0.01)
