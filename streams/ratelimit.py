"""A worker-wide limit on recognition requests per minute, which 429 replies slow down further.

The API's rate limit is per account (100 requests per minute by default), so it binds every
request of the worker together: all partitions, all chunks, retries included.
:class:`RequestLimiter` spaces requests evenly with a leaky bucket (aiolimiter) of capacity
``burst``: with the default of 1, requests leave at most every ``60 / requests_per_minute``
seconds, so no 60-second window holds more than the limit (a bucket as deep as the limit would
let a full minute's worth out at once, and twice the limit into one window).

A 429 means the recogniser refused to admit the request, not that it failed: it has not been
processed nor billed. :class:`RateLimitedBackend` therefore pauses *every* request of the worker
for the ``Retry-After`` the server gave (or a doubling pause when it gave none) and sends the
refused request again itself, without spending one of the recording's attempts. Only a 429
that arrives mid-stream (an error frame after deltas, whose partial events are already out)
or a request refused ``max_throttled`` times in a row reaches the pipeline's retry policy
as ``asr_throttled``. The recording's deadline bounds the waiting either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiolimiter import AsyncLimiter

from streams.errors import RecognitionThrottled
from streams.transcribe import Delta, RecognitionBackend, RecognitionOptions, Result

__all__ = ["RateLimitedBackend", "RequestLimiter"]

log = logging.getLogger(__name__)


class RequestLimiter:
    """Admits requests at most ``requests_per_minute``, and not at all while paused by a 429.

    Usage::

        limiter = RequestLimiter(100)
        await limiter.acquire()        # before each request
        limiter.throttled(2.0)         # on a 429 with Retry-After: 2
    """

    def __init__(
        self,
        requests_per_minute: float,
        *,
        burst: int = 1,
        max_pause_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests_per_minute <= 0:
            raise ValueError(f"expected a positive rate, got {requests_per_minute!r}")
        if burst < 1:
            raise ValueError(f"expected a burst of at least 1, got {burst!r}")
        self.requests_per_minute = requests_per_minute
        self._bucket = AsyncLimiter(burst, burst * 60.0 / requests_per_minute)
        self._max_pause_s = max_pause_s
        self._clock = clock
        self._resume_at = 0.0
        self._unhinted = 0  # 429s in a row without Retry-After, for the doubling pause
        self.admitted = 0
        self.throttles = 0

    @property
    def paused_for_s(self) -> float:
        """Seconds until requests may go again (0 when not paused)."""
        return max(0.0, self._resume_at - self._clock())

    async def acquire(self) -> None:
        """Wait until the pause (if any) is over and the rate admits one more request."""
        while True:
            pause = self.paused_for_s
            if pause > 0:
                await asyncio.sleep(pause)  # a pause can only grow: look again after it
                continue
            await self._bucket.acquire()
            # A 429 may have arrived while this request waited for the bucket: then the slot
            # is given up, so that the requests queued behind a pause do not leave in a burst.
            if self.paused_for_s <= 0:
                self.admitted += 1
                return

    def throttled(self, retry_after_s: float | None) -> float:
        """Pause every request for ``retry_after_s`` (or a doubling guess); return the pause."""
        self.throttles += 1
        if retry_after_s is None:
            pause = min(self._max_pause_s, 0.5 * 2**self._unhinted)
            self._unhinted += 1
        else:
            pause = min(self._max_pause_s, max(0.0, retry_after_s))
            self._unhinted = 0
        self._resume_at = max(self._resume_at, self._clock() + pause)
        return pause

    def succeeded(self) -> None:
        """Note an admitted request; the next 429 without a hint starts the doubling again."""
        self._unhinted = 0


class RateLimitedBackend:
    """A recognition backend whose every request passes a shared :class:`RequestLimiter`."""

    def __init__(
        self, inner: RecognitionBackend, limiter: RequestLimiter, *, max_throttled: int = 30
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._max_throttled = max_throttled
        self.name = inner.name

    async def stream(
        self, audio_uri: str, options: RecognitionOptions
    ) -> AsyncIterator[Delta | Result]:
        """Yield what the inner backend yields, sending the request again after refusals."""
        refused = 0
        while True:
            await self._limiter.acquire()
            started = False
            try:
                async with contextlib.aclosing(self._inner.stream(audio_uri, options)) as inner:
                    async for item in inner:
                        started = True
                        yield item
            except RecognitionThrottled as exc:
                pause = self._limiter.throttled(exc.retry_after_s)
                refused += 1
                if started or refused >= self._max_throttled:
                    raise
                log.info(
                    "recogniser throttled the request (%d in a row); all requests pause %.1f s",
                    refused,
                    pause,
                )
                continue
            self._limiter.succeeded()
            return
