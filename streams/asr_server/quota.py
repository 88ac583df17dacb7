"""The cloud's per-key request quota, so that tests meet the 429s a real account meets.

DashScope limits each account to N requests per minute and also enforces it per second as
RPM/60 (docs/dashscope-protocol.md §8). The server keeps both rules per API key: at most N
admitted requests in any sliding 60 s window, and at most ``per_second_limit(N)`` in one
calendar second (the floor of Unix time). A request over either is refused with 429
``Throttling.RateQuota`` and a ``Retry-After`` that names when it would be admitted. Refused
requests do not count against the quota; admitted ones count even if they fail later.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from streams.api_limits import per_second_limit

__all__ = ["WINDOW_S", "RequestQuota"]

WINDOW_S = 60.0
"""Length of the sliding window the per-minute quota counts in."""


class RequestQuota:
    """Sliding-window and per-second request counters, one pair per API key.

    Not thread-safe, and need not be: the server calls it from its one event loop, and
    :meth:`admit` does not await.
    """

    def __init__(self, requests_per_minute: int, *, clock: Callable[[], float] = time.time):
        if requests_per_minute < 1:
            raise ValueError(f"requests_per_minute must be at least 1, got {requests_per_minute}")
        self.per_minute = requests_per_minute
        self.per_second = per_second_limit(requests_per_minute)
        self._clock = clock
        self._admitted: dict[str, deque[float]] = {}

    def admit(self, key: str) -> int | None:
        """Count a request by ``key`` and return None, or refuse it and return Retry-After.

        Retry-After is the whole number of seconds (at least 1) until both rules would
        admit the request, were nothing else admitted meanwhile.
        """
        now = self._clock()
        times = self._admitted.setdefault(key, deque())
        while times and times[0] + WINDOW_S <= now:
            times.popleft()
        ready = self._ready_at(times, now)
        if ready > now:
            return max(1, math.ceil(ready - now))
        times.append(now)
        return None

    def _ready_at(self, times: deque[float], now: float) -> float:
        """The earliest moment at which neither rule refuses; ``times`` are all in the window.

        Later seconds hold no requests yet, so the per-second rule can only delay to the
        next second, and the later of the two moments satisfies both.
        """
        ready = now
        if len(times) >= self.per_minute:
            # The window admits again once its oldest surplus request ages out.
            ready = times[len(times) - self.per_minute] + WINDOW_S
        second = math.floor(now)
        if sum(1 for t in times if math.floor(t) == second) >= self.per_second:
            ready = max(ready, second + 1.0)
        return ready
