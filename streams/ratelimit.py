"""The consumer group's shares of the account's request quota, and the backend that keeps to it.

The API's request limit is per account and model (``qwen3-asr-flash``: 100 a minute, also
enforced per second as RPM/60 to refuse surges), so every worker of the group draws on one
quota. With no coordination service, the workers split it by *time*, along the one division
they already agree on: Kafka assigns each partition of the recordings topic to one member.

**Slots.** Unix time is cut into slots of ``60 / RPM`` seconds counted from the epoch: slot
``k`` starts at ``k * 60 / RPM`` and belongs to partition ``k mod P`` (P: partitions of the
recordings topic; with guard slots, below, it is the usable slots that are dealt out in
turn). A worker starts a request only inside the *send window* that opens a slot owned by a
partition assigned to it, and uses each slot once. A request that misses the window (the
event loop woke late, a 429 pause ended mid-slot) waits for the next owned slot.
A worker's share is therefore its share of the partitions, and is split again on every
rebalance (:meth:`RequestLimiter.assign`, wired to faust's signals in ``streams/app.py``);
with no partition assigned, no request starts.

**What the group keeps to**, for workers whose clocks agree to well within a slot (NTP):

- at most one request of the whole group starts per slot: owners are disjoint;
- no calendar second holds more than ``ceil(RPM / 60)`` starts (``api_limits.per_second_limit``)
  for *every* RPM: a send window never outlasts the calendar second its slot starts in, and a
  second holds at most ``ceil(RPM / 60)`` slot starts. Without that clip the bound would fail
  whenever RPM/60 is just below a whole number (59, 119, ...): a window spilling over a second
  boundary adds one start to the next second. At 100 RPM no window is clipped (slots start at
  .0 .6 .2 .8 .4 of a second; the seconds hold 2, 2, 1 starts);
- no 60-second span holds more than RPM starts, for whole-number RPM of at least 2: the last
  slot of each calendar minute is a guard slot that no partition owns. Otherwise a start late
  in its window followed, a minute later, by one early in its window would put RPM + 1 starts
  into one sliding minute, which is how the quota is counted (the price: one slot a minute).

**The send window** is the first ``window_fraction`` (15 %) of a slot, at least
``min_window_s`` (5 ms, about the event loop's timer precision) and at most the whole slot. It
keeps the starts of different workers at least 85 % of a slot apart, so a request the network
delays is not squeezed against the next worker's; at very high rates (tests use 60,000 a
minute) the window is the whole slot and only the per-second bound remains.

**429.** A 429 means the recogniser refused to admit the request, not that it failed: it was
neither processed nor billed. :class:`RateLimitedBackend` pauses *every* request of the worker
for the ``Retry-After`` the server gave (or a doubling pause when it gave none) and sends the
refused request again itself, without spending one of the recording's attempts. Only a 429
that arrives mid-stream (an error frame after deltas, whose partial events are already out)
or a request refused ``max_throttled`` times in a row reaches the pipeline's retry policy as
``asr_throttled``. The recording's deadline bounds the waiting either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from streams.errors import RecognitionThrottled
from streams.transcribe import Delta, RecognitionBackend, RecognitionOptions, Result

__all__ = ["Admission", "RateLimitedBackend", "RequestLimiter", "Share", "SlotPlan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlotPlan:
    """The group's division of time: which partition owns which slot, and its send window."""

    requests_per_minute: float
    """The account's quota, shared by the whole consumer group."""
    partitions: int
    """Partitions of the recordings topic."""
    window_fraction: float = 0.15
    min_window_s: float = 0.005

    def __post_init__(self) -> None:
        if not self.requests_per_minute > 0:
            raise ValueError(f"expected a positive rate, got {self.requests_per_minute!r}")
        if self.partitions < 1:
            raise ValueError(f"expected at least one partition, got {self.partitions!r}")
        if not 0 < self.window_fraction <= 1:
            raise ValueError(f"expected a window fraction in (0, 1], got {self.window_fraction!r}")

    @property
    def slot_s(self) -> float:
        """Length of one slot in seconds."""
        return 60.0 / self.requests_per_minute

    @property
    def window_s(self) -> float:
        """Length of a send window before any clipping at a second's end."""
        return min(self.slot_s, max(self.window_fraction * self.slot_s, self.min_window_s))

    def slot_at(self, t: float) -> int:
        """The slot that Unix time ``t`` falls in."""
        return math.floor(t * self.requests_per_minute / 60.0)

    def start(self, slot: int) -> float:
        """Unix time at which ``slot`` begins (exact when it is a whole second)."""
        # k * 60 / RPM rather than k * slot_s: a division of exact integers rounds correctly,
        # so a slot that starts on a whole second is not put a hair before it.
        return slot * 60.0 / self.requests_per_minute

    def window(self, slot: int) -> tuple[float, float]:
        """``[start, end)`` in which a request may start in ``slot``."""
        start = self.start(slot)
        return start, min(start + self.window_s, math.floor(start) + 1.0)

    @property
    def _slots_per_minute(self) -> int | None:
        """Slots in a calendar minute when they are a whole number of at least 2 (guarded)."""
        rpm = self.requests_per_minute
        return int(rpm) if rpm >= 2 and float(rpm).is_integer() else None

    def is_guard(self, slot: int) -> bool:
        """Whether ``slot`` is the last of its calendar minute, which no partition owns."""
        per_minute = self._slots_per_minute
        return per_minute is not None and (slot + 1) % per_minute == 0

    def owner(self, slot: int) -> int | None:
        """The partition that owns ``slot`` (None for a guard slot).

        Partitions take the usable slots in turn: with guard slots, slot k is the
        ``k - (guards before it)``-th usable one. Plain ``k mod P`` would hand every guard to
        the same partition when RPM is a multiple of P, and a partition whose every slot is
        a guard (RPM = P, say) would never send.
        """
        per_minute = self._slots_per_minute
        if per_minute is None:
            return slot % self.partitions
        if (slot + 1) % per_minute == 0:
            return None
        return (slot - (slot + 1) // per_minute) % self.partitions

    def next_slot(self, now: float, partitions: frozenset[int], after: int) -> int:
        """The first slot after ``after`` that ``partitions`` own and whose window is open
        at ``now`` or later."""
        owned = partitions & frozenset(range(self.partitions))
        if not owned:
            raise ValueError(f"partitions {sorted(partitions)} own no slot of {self.partitions}")
        slot = max(after + 1, self.slot_at(now) - 1)
        while self.owner(slot) not in owned or self.window(slot)[1] <= now:
            slot += 1
        return slot

    def share(self, partitions: Iterable[int]) -> Share:
        """The share of the quota that ``partitions`` hold."""
        owned = tuple(sorted(set(partitions)))
        rpm = self.requests_per_minute * len(owned) / self.partitions
        return Share(owned, self.partitions, rpm)


@dataclass(frozen=True)
class Share:
    """The partitions a worker holds and the requests per minute their slots allow."""

    partitions: tuple[int, ...]
    of: int
    requests_per_minute: float
    """Nominal: the guard slot takes one request a minute from the group as a whole."""


@dataclass(frozen=True)
class Admission:
    """One request let through: in which slot, whose slot, and when."""

    slot: int
    partition: int
    at: float
    """Unix time of the admission."""
    slot_start: float


class RequestLimiter:
    """Admits the worker's requests in the slots of its partitions, not at all during a 429 pause.

    Usage::

        limiter = RequestLimiter(SlotPlan(100, partitions=8))
        limiter.assign([0, 1, 2, 3])   # on every rebalance
        await limiter.acquire()        # before each request
        limiter.throttled(2.0)         # on a 429 with Retry-After: 2

    ``clock`` must be Unix time, the one clock workers on different hosts share; ``sleep``
    is injectable so that tests can run minutes of slots in no time.
    """

    def __init__(
        self,
        plan: SlotPlan,
        *,
        max_pause_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.plan = plan
        self._max_pause_s = max_pause_s
        self._clock = clock
        self._sleep = sleep
        self._owned: frozenset[int] = frozenset()
        self._has_share = asyncio.Event()
        # One request at a time claims a slot: the holder waits for the slot, the rest queue.
        self._turn = asyncio.Lock()
        self._last_slot = -1
        self._resume_at = 0.0
        self._unhinted = 0  # 429s in a row without Retry-After, for the doubling pause
        self.admitted = 0
        self.throttles = 0

    @property
    def share(self) -> Share:
        """The partitions this worker holds now and what they allow."""
        return self.plan.share(self._owned)

    def assign(self, partitions: Iterable[int]) -> Share:
        """Hold exactly ``partitions`` of the recordings topic from now on (a rebalance).

        Each change is logged at INFO ("rate share: partitions [..] of P, X requests/min"),
        with the figures as fields, so that a worker's record tells which slots it held when.
        """
        wanted = set(partitions)
        owned = frozenset(p for p in wanted if 0 <= p < self.plan.partitions)
        if wanted - owned:
            log.warning(
                "partitions %s are beyond the %d the rate plan knows: they own no slot",
                sorted(wanted - owned),
                self.plan.partitions,
            )
        changed, self._owned = owned != self._owned, owned
        if owned:
            self._has_share.set()
        else:
            self._has_share.clear()
        share = self.share
        if not changed:
            return share
        log.info(
            "rate share: partitions %s of %d, %.1f requests/min",
            list(share.partitions),
            share.of,
            share.requests_per_minute,
            extra={
                "rate_partitions": list(share.partitions),
                "rate_partitions_of": share.of,
                "rate_share_rpm": share.requests_per_minute,
            },
        )
        return share

    def revoke(self, partitions: Iterable[int]) -> Share:
        """Stop holding ``partitions``."""
        return self.assign(self._owned - set(partitions))

    @property
    def paused_for_s(self) -> float:
        """Seconds until requests may go again (0 when not paused)."""
        return max(0.0, self._resume_at - self._clock())

    async def acquire(self) -> Admission:
        """Wait for the pause (if any) to end and for a send window of an owned slot."""
        async with self._turn:
            while True:
                # Everything is looked at again after each wait: a 429 may have paused the
                # worker, or a rebalance moved its partitions, while it slept.
                pause = self.paused_for_s
                if pause > 0:
                    await self._sleep(pause)
                    continue
                if not self._owned:
                    await self._has_share.wait()
                    continue
                now = self._clock()
                slot = self.plan.next_slot(now, self._owned, self._last_slot)
                start = self.plan.start(slot)
                if now < start:
                    await self._sleep(start - now)
                    continue
                return self._admit(slot, now, start)

    def _admit(self, slot: int, now: float, start: float) -> Admission:
        self._last_slot = slot
        self.admitted += 1
        partition = self.plan.owner(slot)
        assert partition is not None  # next_slot returns owned slots only
        log.info(
            "request admitted in slot %d of partition %d at %.6f",
            slot,
            partition,
            now,
            extra={"rate_slot": slot, "rate_partition": partition, "admitted_at": now},
        )
        return Admission(slot, partition, now, start)

    def throttled(self, retry_after_s: float | None) -> float:
        """Pause every request for ``retry_after_s`` (or a doubling guess); return the pause."""
        self.throttles += 1
        if retry_after_s is None:
            pause = min(self._max_pause_s, 0.5 * 2.0**self._unhinted)
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
    ) -> AsyncGenerator[Delta | Result, None]:
        """Yield what the inner backend yields, sending the request again after refusals."""
        refused = 0
        while True:
            await self._limiter.acquire()
            started = False
            try:
                stream = self._inner.stream(audio_uri, options)
                async with contextlib.aclosing(stream) as inner:
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
