"""Scenario 3: one worker, then a second joins the same consumer group mid-backlog.

32 partitions; each worker may have 8 recognition requests in flight
(``STREAMS_ASR_CONCURRENCY``), and the scripted server answers any number at once, so the
recogniser is not the bottleneck: a worker's own bound is. The scripted pace is slower than
``e2e``'s (``STEADY``: 0.9-8.9 s before the first delta) so that two workers stay well within
two cores. Timeline: worker A alone drains a backlog, worker B starts, the group rebalances,
both drain it. From the server's journal:

- throughput in each phase, as audio seconds recognised per second: each request's audio is
  spread evenly over its time at the server, then summed over a window, which counts work in
  progress fairly (a count of finished recordings over a short window would not);
- the rebalance: how long B waits from asking to join the group until faust says it is ready
  (on revoke faust first waits for the recordings A has in flight), and the longest stretch
  in that time during which no request started, and the time nothing at all was in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import asdict
from typing import Any

from tests.benchmarks.harness import Bench, Deployment, Profile, WorkerProcess, cpu_seconds
from tests.benchmarks.kafka_io import publish, read_all

__all__ = ["STEADY", "run"]

STEADY = Profile(first_delta_s=0.05, first_delta_per_audio_s=0.03, delta_interval_s=0.02)
PARTITIONS = 32
SLOTS = 8
_RAMP_S = 8.0  # the first recordings of a phase decode before they reach the server
_TAIL_S = 15.0  # longer than any request under STEADY, so that the window's work is finished


def run(bench: Bench) -> dict[str, Any]:
    """The two phases and the rebalance between them."""
    backlog, alone_s, together_s = (160, 12.0, 12.0) if bench.quick else (260, 25.0, 25.0)
    with Deployment(
        bench, STEADY, name="scaleout", partitions=PARTITIONS, concurrency=SLOTS
    ) as dep:
        first = dep.add_worker()
        asyncio.run(dep.warm_up())
        published_at = time.time()
        asyncio.run(publish(bench.bootstrap, dep.topics.recordings, dep.events(backlog)))
        _wait(dep, _RAMP_S + alone_s)
        cpu_a = cpu_seconds(first.pid)
        second = dep.add_worker()
        joined_at = second.started_at
        joining_at = _wait_for_line(dep, second, "Recovery]: Starting", 120)
        ready_at = _wait_for_line(dep, second, "Worker]: Ready", 600)
        _wait(dep, _RAMP_S + together_s + _TAIL_S)
        read_at = time.time()
        journal = list(dep.server.journal().values())
        cpu = {"a_alone": cpu_a, "a_total": cpu_seconds(first.pid), "b": cpu_seconds(second.pid)}
        finals = asyncio.run(read_all(bench.bootstrap, dep.topics.outputs["final"], PARTITIONS))
    alone = _rate(journal, published_at + _RAMP_S, joined_at)
    together = _rate(journal, ready_at + _RAMP_S, read_at - _TAIL_S)
    pause = _pause(journal, joining_at, ready_at + _RAMP_S)
    ids = [r.value["recording_id"] for r in finals]
    return {
        "profile": asdict(STEADY),
        "partitions": PARTITIONS,
        "slots_per_worker": SLOTS,
        "one_worker": alone,
        "two_workers": together,
        "ratio": round(together["audio_s_per_s"] / alone["audio_s_per_s"], 3)
        if alone["audio_s_per_s"] and together["audio_s_per_s"]
        else None,
        "rebalance": {
            "worker_start_s": round(joining_at - joined_at, 2),
            "join_to_assigned_s": round(ready_at - joining_at, 2),
            **pause,
        },
        "duplicate_finals": len(ids) - len(set(ids)),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "in_flight": _in_flight_series(journal, published_at, read_at),
        "marks": {
            k: round(v - published_at, 2)
            for k, v in {"joined": joined_at, "joining": joining_at, "ready": ready_at}.items()
        },
    }


def _wait_for_line(dep: Deployment, worker: WorkerProcess, text: str, timeout_s: float) -> float:
    """When ``text`` first showed up in the worker's log (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dep.check()
        if worker.log_path.exists() and text in worker.log_path.read_text(errors="replace"):
            return time.time()
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not in {worker.log_path} after {timeout_s:.0f} s")


def _wait(dep: Deployment, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dep.check()
        time.sleep(0.5)


def _spans(journal: list[dict[str, Any]], now: float) -> list[tuple[float, float, float]]:
    return [
        (e["started_at"], e.get("finished_at") or now, e["audio_s"] or 0.0)
        for e in journal
        if e.get("started_at")
    ]


def _rate(journal: list[dict[str, Any]], begin: float, end: float) -> dict[str, Any]:
    """Audio seconds recognised per second in ``[begin, end]``, work spread over each request."""
    if end <= begin:
        return {"window_s": 0.0, "audio_s_per_s": None, "audio_h_per_h": None}
    done = 0.0
    for start, finish, audio in _spans([e for e in journal if e.get("finished_at")], end):
        overlap = min(finish, end) - max(start, begin)
        if overlap > 0 and finish > start:
            done += audio * overlap / (finish - start)
    per_s = done / (end - begin)
    return {
        "window_s": round(end - begin, 1),
        "audio_s_per_s": round(per_s, 2),
        "audio_h_per_h": round(per_s, 1),  # audio seconds per second = hours per hour
    }


def _pause(journal: list[dict[str, Any]], begin: float, end: float) -> dict[str, Any]:
    """The longest gap between request starts in ``[begin, end]``; time nothing was in flight."""
    starts = sorted(e["started_at"] for e in journal if e.get("started_at"))
    points = [begin, *(s for s in starts if begin < s < end), end]
    gap = max(b - a for a, b in itertools.pairwise(points))
    series = _in_flight_series(journal, begin, end, step=0.05)
    return {
        "no_new_request_s": round(gap, 2),
        "nothing_in_flight_s": round(sum(0.05 for _, count in series if count == 0), 2),
    }


def _in_flight_series(
    journal: list[dict[str, Any]], begin: float, end: float, step: float = 0.5
) -> list[tuple[float, int]]:
    """Requests at the server every ``step`` seconds (time relative to ``begin``)."""
    spans = _spans(journal, end)
    series = []
    t = begin
    while t <= end:
        series.append((round(t - begin, 2), sum(1 for s, f, _ in spans if s <= t < f)))
        t += step
    return series
