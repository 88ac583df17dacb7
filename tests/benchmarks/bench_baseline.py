"""Scenario 5: the same recordings through the consumer you would write yourself.

``baseline_worker.py`` (aiokafka, the ffmpeg CLI, the official SDK) on its own topics with the
same scripted server profile as ``e2e`` (``FAST``), in two forms: one recording at a time,
and a pool of 32 threads (as many recordings in flight as the service's worker has). Each
drains a backlog; the CPU includes the ffmpeg processes it starts. Its overhead clock starts
when its loop picks the recording up (``started_at`` in its final event).
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from tests.benchmarks.bench_e2e import FAST, PARTITIONS, run_backlog
from tests.benchmarks.harness import Bench, Deployment, cpu_seconds

__all__ = ["VARIANTS", "run"]

# name -> (threads, recordings in a full run, in a quick run)
VARIANTS = {"sequential": (1, 10, 4), "threads": (32, 128, 40)}


def run(bench: Bench) -> dict[str, Any]:
    """Both variants; figures and per-recording rows (or why they were skipped)."""
    if shutil.which("ffmpeg") is None:
        return {"skipped": "ffmpeg is not on PATH: apt-get install -y ffmpeg"}
    results: dict[str, Any] = {"profile_name": "FAST"}
    for name, (threads, full, quick) in VARIANTS.items():
        with Deployment(
            bench, FAST, name=f"baseline-{name}", partitions=PARTITIONS, concurrency=threads
        ) as dep:
            worker = dep.add_baseline(threads)
            asyncio.run(dep.warm_up())
            result = run_backlog(
                dep,
                dep.events(quick if bench.quick else full),
                profile=f"baseline-{name}",
                start="started_at",
            )
            result["threads"] = threads
            result["ffmpeg_cpu_s"] = _children_cpu(worker.pid)
            results[name] = result
    return results


def _children_cpu(pid: int) -> float:
    """CPU of the process's finished children (the ffmpeg runs), since it started."""
    return round(cpu_seconds(pid, children=True) - cpu_seconds(pid), 2)
