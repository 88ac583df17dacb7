"""The group's time slots, the worker's limiter on them, and the backend that re-sends refusals.

The limiter runs on a fake clock: Unix time that moves only when the limiter sleeps, by as
much as it asked for plus an injectable lateness (a busy event loop waking late). Minutes of
slots then take milliseconds, and every assertion is on recorded admissions, not on how fast
this machine is.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import logging
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from streams.api_limits import per_second_limit
from streams.app import FaustSender
from streams.config import Settings
from streams.errors import RecognitionThrottled, RecognitionUnavailable
from streams.ratelimit import Admission, RateLimitedBackend, RequestLimiter, Share, SlotPlan
from streams.runtime import Runtime
from streams.transcribe import Delta, RecognitionOptions, Result

OPTIONS = RecognitionOptions(model="qwen3-asr-flash")
URI = "data:audio/flac;base64,AAAA"
MINUTE = 1_800_000_000.0  # a whole minute (and second) of Unix time


class FakeTime:
    """Unix time that advances only when someone sleeps, by the sleep plus ``late()``."""

    def __init__(self, now: float = MINUTE, late: Callable[[], float] = lambda: 0.0) -> None:
        self.now = now
        self._late = late

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds) + self._late()
        await asyncio.sleep(0)


def _limiter(
    rpm: float, partitions: int, held: list[int] | None, clock: FakeTime
) -> RequestLimiter:
    limiter = RequestLimiter(SlotPlan(rpm, partitions), clock=clock, sleep=clock.sleep)
    if held is not None:
        limiter.assign(held)
    return limiter


async def _admissions(limiter: RequestLimiter, clock: FakeTime, until: float) -> list[Admission]:
    """Admissions of four tasks that want requests all the time, until ``until``."""
    admitted: list[Admission] = []

    async def want() -> None:
        while clock.now < until:
            admission = await limiter.acquire()
            if admission.at < until:
                admitted.append(admission)

    await asyncio.gather(*(want() for _ in range(4)))
    return sorted(admitted, key=lambda a: a.at)


def _busiest_second(times: list[float]) -> int:
    return max(collections.Counter(math.floor(t) for t in times).values())


def _busiest_minute(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + 60.0) for t in times)


class TestSlotPlan:
    def test_slots_are_aligned_to_the_epoch_and_owned_in_turn(self) -> None:
        """At 100 a minute, slot k starts at k * 0.6 s of Unix time and is partition k mod P's."""
        plan = SlotPlan(100, partitions=8)
        assert plan.slot_s == pytest.approx(0.6)
        assert plan.start(5) == 3.0
        first = plan.slot_at(MINUTE)
        assert plan.start(first) == MINUTE
        assert plan.slot_at(MINUTE + 0.59) == first
        assert plan.slot_at(MINUTE + 0.6) == first + 1
        assert [plan.owner(k) for k in range(8, 20)] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]

    def test_the_last_slot_of_each_minute_belongs_to_no_partition(self) -> None:
        """A guard slot a minute: 99 of the 100 slots of a calendar minute are usable."""
        plan = SlotPlan(100, partitions=8)
        first = plan.slot_at(MINUTE)
        owners = [plan.owner(k) for k in range(first, first + 100)]
        assert owners[-1] is None
        assert sum(o is not None for o in owners) == 99
        # Fractional rates keep every slot (and no per-minute promise).
        assert SlotPlan(100.5, partitions=8).owner(first + 99) is not None

    @pytest.mark.parametrize(("rpm", "partitions"), [(8, 8), (100, 4), (100, 200), (2, 4)])
    def test_every_partition_gets_its_turn_when_rpm_is_a_multiple_of_p(
        self, rpm: int, partitions: int
    ) -> None:
        """Guards are skipped in the turn, so no partition is left with guard slots only."""
        plan = SlotPlan(rpm, partitions)
        first = plan.slot_at(MINUTE)
        owners = collections.Counter(plan.owner(k) for k in range(first, first + rpm * partitions))
        assert owners.pop(None) == partitions  # one guard a minute
        assert set(owners) == set(range(partitions))
        assert set(owners.values()) == {rpm - 1}  # the same share each

    def test_the_send_window_opens_each_slot(self) -> None:
        """15 % of the slot, never less than 5 ms nor more than the slot, never past its second."""
        assert SlotPlan(100, 8).window(5) == (3.0, pytest.approx(3.09))
        tiny = SlotPlan(60_000, 4)
        assert tiny.window_s == pytest.approx(tiny.slot_s)  # 1 ms slots: the whole slot
        assert SlotPlan(6000, 4).window_s == pytest.approx(0.005)  # 1.5 ms would be too short
        # At 59 a minute, slot 58 starts at 58.983 s: its window ends with that second.
        assert SlotPlan(59, 4).window(58) == (pytest.approx(58.983, abs=1e-3), 59.0)

    @pytest.mark.parametrize(
        "rpm", [1, 30, 59, 60, 61, 90, 100, 119, 120, 150, 599, 600, 1000, 6000, 60_000, 100.5]
    )
    def test_no_calendar_second_can_hold_more_than_rpm_over_60(self, rpm: float) -> None:
        """Any start in any window: a second holds at most ceil(RPM/60) slots' windows."""
        plan = SlotPlan(rpm, partitions=8)
        first = plan.slot_at(MINUTE)
        seconds: collections.Counter[int] = collections.Counter()
        for slot in range(first, first + min(20_000, max(300, int(rpm) * 3))):
            start, end = plan.window(slot)
            assert end <= math.floor(start) + 1, "a window crosses into the next second"
            seconds[math.floor(start)] += 1
        assert max(seconds.values()) <= per_second_limit(rpm)

    @pytest.mark.parametrize("rpm", [2, 59, 100, 119, 600])
    def test_no_sliding_minute_can_hold_more_than_rpm(self, rpm: int) -> None:
        """Even with every start as late or early in its window as it can be."""
        plan = SlotPlan(rpm, partitions=8)
        first = plan.slot_at(MINUTE)
        owned = [plan.window(k) for k in range(first, first + 3 * rpm) if plan.owner(k) is not None]
        starts, ends = [s for s, _ in owned], [e for _, e in owned]
        # The worst minute begins just before the end of some window; windows do not overlap,
        # so those it meets are a run: from the first ending after it to the last starting in it.
        for end in ends[: len(ends) // 2]:
            begin = end - 1e-6
            met = bisect.bisect_left(starts, begin + 60) - bisect.bisect_right(ends, begin)
            assert met <= rpm

    def test_a_share_is_the_quota_times_the_partitions_held(self) -> None:
        """Three of eight partitions hold 3/8 of 100 a minute."""
        assert SlotPlan(100, 8).share([5, 0, 2]) == Share((0, 2, 5), 8, 37.5)

    @pytest.mark.parametrize("args", [(0, 8), (100, 0), (100, 8, 0.0), (100, 8, 1.5)], ids=str)
    def test_refuses_nonsense_settings(self, args: tuple[Any, ...]) -> None:
        """No rate, no partition or a window outside the slot is a configuration error."""
        with pytest.raises(ValueError, match="expected"):
            SlotPlan(*args)


class TestRequestLimiter:
    async def test_admits_only_at_the_start_of_its_own_slots(self) -> None:
        """Holding partitions 1 and 3 of 4 at 600 a minute: slots 1, 3, 5, 7 ... at their start."""
        clock = FakeTime(MINUTE + 0.01)
        limiter = _limiter(600, 4, [1, 3], clock)
        admitted = await _admissions(limiter, clock, MINUTE + 2)
        first = limiter.plan.slot_at(MINUTE)
        assert [a.slot - first for a in admitted] == list(range(1, 20, 2))
        assert {a.partition for a in admitted} == {1, 3}
        assert all(a.at == limiter.plan.start(a.slot) for a in admitted)

    async def test_a_request_that_misses_the_window_waits_for_the_next_owned_slot(self) -> None:
        """Waking 0.02 s late for a 0.015 s window skips that slot, not the rule."""
        late = iter([0.02, 0.0, 0.0])
        clock = FakeTime(MINUTE + 0.01, late=lambda: next(late, 0.0))
        limiter = _limiter(600, 4, [2], clock)
        admission = await limiter.acquire()
        first = limiter.plan.slot_at(MINUTE)
        # Slot 2 was missed (woke at 0.22 s, its window closed at 0.215 s); slot 6 was next.
        assert admission.slot - first == 6
        assert admission.at == limiter.plan.start(first + 6)

    async def test_a_window_entered_late_but_open_still_admits(self) -> None:
        """Inside the window is in time: 5 ms late for a 15 ms window starts the request."""
        clock = FakeTime(MINUTE + 0.01, late=lambda: 0.005)
        limiter = _limiter(600, 4, [2], clock)
        admission = await limiter.acquire()
        assert admission.slot == limiter.plan.slot_at(MINUTE) + 2
        assert admission.at == pytest.approx(admission.slot_start + 0.005)

    @pytest.mark.parametrize("seed", [1, 2, 3])
    async def test_workers_with_disjoint_partitions_keep_the_account_limit(self, seed: int) -> None:
        """Three workers at 100 a minute over 8 partitions, waking up to 0.12 s late at random:
        one start per slot in the group, at most 2 in a calendar second, 100 in any minute."""
        rng = random.Random(seed)  # noqa: S311  # repeatable lateness, not secrecy
        held = [[0, 3, 6], [1, 4], [2, 5, 7]]
        start, until = MINUTE + 0.3, MINUTE + 150
        admitted: list[tuple[int, Admission]] = []
        for worker, partitions in enumerate(held):  # independent processes, one clock
            clock = FakeTime(start, late=lambda: rng.uniform(0, 0.12))
            limiter = _limiter(100, 8, partitions, clock)
            admitted += [(worker, a) for a in await _admissions(limiter, clock, until)]
        plan = SlotPlan(100, 8)
        slots = [a.slot for _, a in admitted]
        assert len(slots) == len(set(slots)), "two requests in one slot"
        for worker, a in admitted:
            assert a.partition in held[worker]
            window_start, window_end = plan.window(a.slot)
            assert window_start <= a.at < window_end
        times = [a.at for _, a in admitted]
        assert _busiest_second(times) <= per_second_limit(100) == 2
        assert _busiest_minute(times) <= 100
        # Late wake-ups lose some slots, but the group still sends most of its quota.
        assert len(times) > 0.6 * 150 / 60 * 99

    async def test_on_time_workers_use_every_slot_but_the_guards(self) -> None:
        """Two workers that wake on time send 99 requests a minute between them, evenly."""
        admitted: list[Admission] = []
        for partitions in ([0, 1, 2, 3], [4, 5, 6, 7]):
            clock = FakeTime(MINUTE)
            admitted += await _admissions(_limiter(100, 8, partitions, clock), clock, MINUTE + 120)
        assert len(admitted) == 2 * 99
        starts = sorted(a.at for a in admitted)
        gaps = {round(b - a, 6) for a, b in itertools.pairwise(starts)}
        assert gaps == {0.6, 1.2}  # 1.2 across a guard slot

    async def test_a_rebalance_moves_the_worker_into_its_new_slots(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After assign([2]), only partition 2's slots; the share is logged and returned."""
        clock = FakeTime(MINUTE + 0.01)
        limiter = _limiter(600, 4, [0, 1, 2, 3], clock)
        before = await _admissions(limiter, clock, MINUTE + 1)
        assert {a.partition for a in before} == {0, 1, 2, 3}
        with caplog.at_level(logging.INFO, logger="streams.ratelimit"):
            share = limiter.assign([2])
        assert share == Share((2,), 4, 150.0) == limiter.share
        assert "rate share: partitions [2] of 4, 150.0 requests/min" in caplog.messages
        after = await _admissions(limiter, clock, MINUTE + 3)
        assert {a.partition for a in after} == {2}
        # Partition 2's slots, every 0.4 s, from the first after the requests already sent.
        assert [round(a.at - MINUTE, 6) for a in after] == [1.4, 1.8, 2.2, 2.6]
        assert limiter.revoke([2]) == Share((), 4, 0.0)

    async def test_with_no_partition_no_request_starts(self) -> None:
        """A worker without partitions waits, however long, until it is assigned some."""
        clock = FakeTime(MINUTE + 0.01)
        limiter = _limiter(600, 4, [], clock)
        waiting = asyncio.ensure_future(limiter.acquire())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()
        limiter.assign([3])
        admission = await asyncio.wait_for(waiting, 1)
        assert admission.partition == 3
        assert limiter.admitted == 1

    async def test_partitions_beyond_the_plan_own_nothing(self) -> None:
        """A partition the plan does not know (topic grown behind its back) holds no slot."""
        limiter = _limiter(600, 4, [1, 9], FakeTime())
        assert limiter.share == Share((1,), 4, 150.0)

    async def test_a_429_pauses_every_caller_for_its_retry_after(self) -> None:
        """After throttled(2), nobody is admitted for 2 s, then the next owned slot's start."""
        clock = FakeTime(MINUTE + 0.01)
        limiter = _limiter(600, 4, [0, 1, 2, 3], clock)
        await limiter.acquire()
        assert limiter.throttled(2.0) == 2.0
        paused_until = clock.now + 2.0
        both = await asyncio.gather(limiter.acquire(), limiter.acquire())
        assert all(a.at >= paused_until for a in both)
        # The first lands in the window the pause ended in, the second at its slot's start.
        assert both[0].at == paused_until < limiter.plan.window(both[0].slot)[1]
        assert both[1].at == limiter.plan.start(both[1].slot)
        assert both[1].slot == both[0].slot + 1

    def test_a_429_without_retry_after_pauses_longer_each_time(self) -> None:
        """Pauses without a hint double from 0.5 s, up to the cap, and reset on success."""
        limiter = RequestLimiter(SlotPlan(100, 8), max_pause_s=3)
        assert [limiter.throttled(None) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
        limiter.succeeded()
        assert limiter.throttled(None) == 0.5

    def test_a_longer_pause_is_never_shortened(self) -> None:
        """A short Retry-After after a long one leaves the long pause in place."""
        limiter = RequestLimiter(SlotPlan(100, 8))
        limiter.throttled(10)
        limiter.throttled(1)
        assert limiter.paused_for_s > 9


class _Backend:
    """Answers from a script: each request takes the next step; a step is a list of items."""

    name = "fake"

    def __init__(self, *script: list[Any], clock: FakeTime | None = None) -> None:
        self.script = list(script)
        self.clock = clock or FakeTime()
        self.sent: list[float] = []

    async def stream(self, audio_uri: str, options: RecognitionOptions) -> AsyncIterator[Any]:
        self.sent.append(self.clock.now)
        for item in self.script.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item


async def _drain(backend: RateLimitedBackend) -> list[Any]:
    async with contextlib.aclosing(backend.stream(URI, OPTIONS)) as stream:
        return [item async for item in stream]


def _ok(text: str = "hello") -> list[Any]:
    return [Delta(text), Result(text=text)]


class TestRateLimitedBackend:
    async def test_a_refused_request_is_sent_again_without_surfacing(self) -> None:
        """Two 429s before the stream starts are absorbed: the caller sees one clean result."""
        clock = FakeTime(MINUTE + 0.01)
        inner = _Backend(
            [RecognitionThrottled("429", retry_after_s=1.0)],
            [RecognitionThrottled("429", retry_after_s=1.0)],
            _ok(),
            clock=clock,
        )
        limiter = _limiter(600, 1, [0], clock)
        items = await _drain(RateLimitedBackend(inner, limiter))
        assert [type(i) for i in items] == [Delta, Result]
        assert limiter.throttles == 2
        assert limiter.admitted == 3
        # Each re-send waited out the Retry-After.
        assert inner.sent[1] - inner.sent[0] >= 1.0
        assert inner.sent[2] - inner.sent[1] >= 1.0

    async def test_a_429_mid_stream_reaches_the_caller(self) -> None:
        """Once deltas went out, a throttling error frame is the pipeline's to retry."""
        clock = FakeTime()
        inner = _Backend([Delta("he"), RecognitionThrottled("429 frame", retry_after_s=5)])
        limiter = _limiter(600, 1, [0], clock)
        with pytest.raises(RecognitionThrottled):
            await _drain(RateLimitedBackend(inner, limiter))
        assert limiter.paused_for_s > 0

    async def test_too_many_refusals_in_a_row_surface_as_throttled(self) -> None:
        """After max_throttled refusals the error goes to the pipeline's retry policy."""
        clock = FakeTime()
        inner = _Backend(*([[RecognitionThrottled("429", retry_after_s=0)]] * 3))
        limiter = _limiter(600, 1, [0], clock)
        with pytest.raises(RecognitionThrottled):
            await _drain(RateLimitedBackend(inner, limiter, max_throttled=3))
        assert not inner.script

    async def test_other_errors_pass_through_untouched(self) -> None:
        """A 5xx is not the limiter's business."""
        inner = _Backend([RecognitionUnavailable("503")])
        limiter = _limiter(600, 1, [0], FakeTime())
        with pytest.raises(RecognitionUnavailable):
            await _drain(RateLimitedBackend(inner, limiter))
        assert limiter.throttles == 0

    def test_keeps_the_inner_backend_name(self) -> None:
        """Final events name the real backend, not the wrapper."""
        assert RateLimitedBackend(_Backend(), RequestLimiter(SlotPlan(100, 8))).name == "fake"


def test_the_worker_exports_its_share_on_every_rebalance() -> None:
    """The share gauges follow the partitions the worker is handed and gives up."""
    settings = Settings(topic_partitions=8, asr_requests_per_minute=100)
    runtime = Runtime(settings, FaustSender({}))
    runtime.hold_partitions([1, 2])
    exposition = runtime.metrics.exposition().decode()
    assert "streams_asr_rate_share_partitions 2.0" in exposition
    assert "streams_asr_rate_share_requests_per_minute 25.0" in exposition
    assert runtime.release_partitions([1]) == Share((2,), 8, 12.5) == runtime.limiter.share
    assert "streams_asr_rate_share_partitions 1.0" in runtime.metrics.exposition().decode()
