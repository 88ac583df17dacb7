"""Scenario 4: peak memory of one worker with 256 recordings in flight.

256 partitions, one recording each (the corpus: 30-295 s of speech), 256 recognition slots.
The scripted server holds every request ``HOLD_S`` seconds before its first delta, long enough
for the worker to fetch, decode and send all 256, so that all of them are at the server at
once; then it streams them back at ``e2e``'s pace. The worker's VmRSS is sampled twice a
second with the server's count of requests in flight; VmHWM (the kernel's peak) is read at
the end. Per in-flight recording = (peak - RSS at rest after warm-up) / recordings in flight.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from tests.benchmarks.harness import Bench, Deployment, Profile, memory_kib
from tests.benchmarks.kafka_io import publish

__all__ = ["run"]

HOLD_S = 30.0


def run(bench: Bench) -> dict[str, Any]:
    """Samples of RSS and in-flight requests, and the peak."""
    count, hold = (32, 12.0) if bench.quick else (256, HOLD_S)
    profile = Profile(first_delta_s=hold, delta_interval_s=0.02)
    with Deployment(
        bench, profile, name="memory", partitions=count, concurrency=count, output_partitions=16
    ) as dep:
        worker = dep.add_worker()
        asyncio.run(dep.warm_up(timeout_s=180 + hold))
        time.sleep(2)
        dep.check()
        rest = memory_kib(worker.pid)["VmRSS"]
        events = dep.events(count)
        began = time.time()
        asyncio.run(publish(bench.bootstrap, dep.topics.recordings, events))
        samples = []
        finished = 0
        while finished < count:
            dep.check()
            if time.time() - began > 300 + hold:
                raise TimeoutError(f"{finished} of {count} recordings done")
            journal = dep.server.journal().values()
            in_flight = sum(1 for e in journal if e.get("started_at") and not e.get("finished_at"))
            finished = sum(1 for e in journal if e.get("finished_at"))
            rss = memory_kib(worker.pid)["VmRSS"]
            samples.append((round(time.time() - began, 2), rss, in_flight))
            time.sleep(0.5)
        peak = memory_kib(worker.pid)["VmHWM"]
    most = max(s[2] for s in samples)
    rss_at_most = max(s[1] for s in samples if s[2] == most)
    audio = sum(bench.corpus[i % len(bench.corpus)].duration_s for i in range(count))
    return {
        "profile": asdict(profile),
        "recordings": count,
        "mean_audio_s": round(audio / count, 1),
        "rest_rss_mib": round(rest / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "max_in_flight": most,
        "rss_at_max_in_flight_mib": round(rss_at_most / 1024, 1),
        "per_in_flight_mib": round((peak - rest) / 1024 / most, 2) if most else None,
        "samples": samples,
    }
