"""The worker-wide request limiter and the backend wrapper that re-sends refused requests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streams.errors import RecognitionThrottled, RecognitionUnavailable
from streams.ratelimit import RateLimitedBackend, RequestLimiter
from streams.transcribe import Delta, RecognitionOptions, Result

OPTIONS = RecognitionOptions(model="qwen3-asr-flash")
URI = "data:audio/flac;base64,AAAA"


class _Backend:
    """Answers from a script: each request takes the next step; a step is a list of items."""

    name = "fake"

    def __init__(self, *script: list[Any]) -> None:
        self.script = list(script)
        self.sent: list[float] = []

    async def stream(self, audio_uri: str, options: RecognitionOptions) -> AsyncIterator[Any]:
        self.sent.append(time.monotonic())
        for item in self.script.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item


async def _drain(backend: RateLimitedBackend) -> list[Any]:
    async with contextlib.aclosing(backend.stream(URI, OPTIONS)) as stream:
        return [item async for item in stream]


def _ok(text: str = "hello") -> list[Any]:
    return [Delta(text), Result(text=text)]


class TestRequestLimiter:
    async def test_spaces_requests_evenly_at_the_rate(self) -> None:
        """At 600 per minute, six requests take at least half a second: no burst at start."""
        limiter = RequestLimiter(600)
        started = time.monotonic()
        for _ in range(6):
            await limiter.acquire()
        assert time.monotonic() - started >= 0.45
        assert limiter.admitted == 6

    async def test_the_rate_binds_concurrent_callers_together(self) -> None:
        """Ten tasks sharing a 1200-per-minute limiter get through no faster than 20 per second."""
        limiter = RequestLimiter(1200)
        times: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            times.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(10)))
        gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
        assert min(gaps) >= 0.04

    async def test_a_429_pauses_every_caller_for_its_retry_after(self) -> None:
        """After throttled(0.3), nobody is admitted for 0.3 s."""
        limiter = RequestLimiter(60_000)
        await limiter.acquire()
        assert limiter.throttled(0.3) == 0.3
        started = time.monotonic()
        await asyncio.gather(limiter.acquire(), limiter.acquire())
        assert time.monotonic() - started >= 0.29

    def test_a_429_without_retry_after_pauses_longer_each_time(self) -> None:
        """Pauses without a hint double from 0.5 s, up to the cap, and reset on success."""
        limiter = RequestLimiter(100, max_pause_s=3)
        assert [limiter.throttled(None) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
        limiter.succeeded()
        assert limiter.throttled(None) == 0.5

    def test_a_longer_pause_is_never_shortened(self) -> None:
        """A short Retry-After after a long one leaves the long pause in place."""
        limiter = RequestLimiter(100)
        limiter.throttled(10)
        limiter.throttled(1)
        assert limiter.paused_for_s > 9

    @pytest.mark.parametrize(
        ("rate", "burst"), [pytest.param(0, 1, id="no-rate"), pytest.param(100, 0, id="no-burst")]
    )
    def test_refuses_nonsense_settings(self, rate: float, burst: int) -> None:
        """A rate or burst below one request is a configuration error."""
        with pytest.raises(ValueError, match="expected"):
            RequestLimiter(rate, burst=burst)


class TestRateLimitedBackend:
    async def test_a_refused_request_is_sent_again_without_surfacing(self) -> None:
        """Two 429s before the stream starts are absorbed: the caller sees one clean result."""
        inner = _Backend(
            [RecognitionThrottled("429", retry_after_s=0.1)],
            [RecognitionThrottled("429", retry_after_s=0.1)],
            _ok(),
        )
        limiter = RequestLimiter(60_000)
        items = await _drain(RateLimitedBackend(inner, limiter))
        assert [type(i) for i in items] == [Delta, Result]
        assert limiter.throttles == 2
        assert limiter.admitted == 3
        # Each re-send waited out the Retry-After.
        assert inner.sent[1] - inner.sent[0] >= 0.09
        assert inner.sent[2] - inner.sent[1] >= 0.09

    async def test_a_429_mid_stream_reaches_the_caller(self) -> None:
        """Once deltas went out, a throttling error frame is the pipeline's to retry."""
        inner = _Backend([Delta("he"), RecognitionThrottled("429 frame", retry_after_s=0.05)])
        limiter = RequestLimiter(60_000)
        with pytest.raises(RecognitionThrottled):
            await _drain(RateLimitedBackend(inner, limiter))
        assert limiter.paused_for_s > 0

    async def test_too_many_refusals_in_a_row_surface_as_throttled(self) -> None:
        """After max_throttled refusals the error goes to the pipeline's retry policy."""
        inner = _Backend(*([[RecognitionThrottled("429", retry_after_s=0)]] * 3))
        with pytest.raises(RecognitionThrottled):
            await _drain(RateLimitedBackend(inner, RequestLimiter(60_000), max_throttled=3))
        assert not inner.script

    async def test_other_errors_pass_through_untouched(self) -> None:
        """A 5xx is not the limiter's business."""
        inner = _Backend([RecognitionUnavailable("503")])
        limiter = RequestLimiter(60_000)
        with pytest.raises(RecognitionUnavailable):
            await _drain(RateLimitedBackend(inner, limiter))
        assert limiter.throttles == 0

    def test_keeps_the_inner_backend_name(self) -> None:
        """Final events name the real backend, not the wrapper."""
        assert RateLimitedBackend(_Backend(), RequestLimiter(100)).name == "fake"
