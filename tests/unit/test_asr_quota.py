"""The local server's per-key request quota: the cloud's RPM and its per-second share."""

from __future__ import annotations

import pytest

from streams.asr_server.quota import RequestQuota


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _admit_at(quota: RequestQuota, clock: Clock, times: list[float], key: str = "k") -> list:
    results = []
    for at in times:
        clock.now = at
        results.append(quota.admit(key))
    return results


def test_a_calendar_second_holds_at_most_rpm_over_60() -> None:
    """At 100 RPM a second admits 2; the third waits for the next second."""
    clock = Clock(0.0)
    quota = RequestQuota(100, clock=clock)
    assert _admit_at(quota, clock, [1000.1, 1000.2, 1000.3, 1001.0]) == [None, None, 1, None]


def test_refused_requests_do_not_count() -> None:
    """Only admitted requests use the quota: a refusal leaves the next second's share whole."""
    clock = Clock(0.0)
    quota = RequestQuota(100, clock=clock)
    refused = _admit_at(quota, clock, [5.0, 5.1, 5.2, 5.3, 5.4])
    assert refused.count(None) == 2
    assert _admit_at(quota, clock, [6.0, 6.1, 6.2]) == [None, None, 1]


def test_the_minute_window_slides() -> None:
    """At 3 RPM the fourth request waits until the oldest leaves the 60 s window."""
    clock = Clock(0.0)
    quota = RequestQuota(3, clock=clock)
    assert _admit_at(quota, clock, [0.5, 1.5, 2.5, 3.5]) == [None, None, None, 57]
    assert _admit_at(quota, clock, [60.4, 60.5]) == [1, None]


def test_keys_have_their_own_quota() -> None:
    """One key's use does not throttle another's."""
    clock = Clock(10.0)
    quota = RequestQuota(1, clock=clock)
    assert quota.admit("a") is None
    assert quota.admit("a") == 60
    assert quota.admit("b") is None


@pytest.mark.parametrize("rpm", [0, -5])
def test_a_quota_must_admit_something(rpm: int) -> None:
    """A quota of no requests is a configuration error, not a server that refuses all."""
    with pytest.raises(ValueError, match="at least 1"):
        RequestQuota(rpm)
