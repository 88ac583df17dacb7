"""Figures from one batch of recordings: throughput, CPU, overhead over the recogniser's time.

Every time here is a Unix time on the one machine clock: the broker's append time of each
message (topics use ``LogAppendTime``) and the scripted server's journal (``started_at``,
``first_delta_at``, ``finished_at`` per request). A recording's *server time* is the span from
its first request's start to its last request's end, as the engine saw them; what the worker
adds on top (fetch, decode, encode, upload, the server's own parsing of the upload, SSE
parsing, publishing) is its *overhead*.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

from tests.benchmarks.harness import Deployment, cpu_seconds, percentile
from tests.benchmarks.kafka_io import Record

__all__ = ["CORES", "CpuMeter", "batch_figures", "distribution", "recording_rows"]

CORES = len(os.sched_getaffinity(0))


def distribution(values: list[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """Count, p50, p99, mean and max of ``values`` times ``scale``."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}

    def scaled(v: float | None) -> float | None:
        return None if v is None else round(v * scale, 4)

    return {
        "n": len(values),
        "p50": scaled(percentile(values, 50)),
        "p99": scaled(percentile(values, 99)),
        "mean": scaled(statistics.fmean(values)),
        "max": scaled(max(values)),
    }


class CpuMeter:
    """CPU seconds of a deployment's processes (worker children included) between two readings."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        readings = {
            "worker": sum(cpu_seconds(w.pid, children=True) for w in self.dep.workers),
            "server": cpu_seconds(self.dep.server.pid),
        }
        if self.dep.bench.broker_pid:
            readings["broker"] = cpu_seconds(self.dep.bench.broker_pid)
        return readings

    def used(self) -> dict[str, float]:
        """CPU seconds per part since this meter was made."""
        now = self._read()
        return {part: round(now[part] - self._start[part], 2) for part in now}


def recording_rows(
    published: dict[str, Record],
    terminal: dict[str, Record],
    journal: dict[str, dict[str, Any]],
    first_partials: dict[str, float] | None = None,
    durations: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per recording: broker times, the server's times for its requests, the outcome.

    ``durations`` (by audio URL) gives every consumer's recordings the same audio length,
    whatever each one reports.
    """
    rows = []
    for rid, pub in published.items():
        event = terminal[rid].value
        row: dict[str, Any] = {
            "id": rid,
            "partition": pub.partition,
            "offset": pub.offset,
            "published": pub.timestamp,
            "terminal": terminal[rid].timestamp,
            "type": event["type"],
            "audio_s": (durations or {}).get(
                pub.value.get("audio_url", ""), event.get("audio_seconds")
            ),
            "started_at": event.get("started_at"),  # only the baseline reports it
            **{
                key: value
                for key, value in (event.get("timings") or {}).items()
                if key in ("fetch_s", "decode_s", "transcribe_s", "total_s")
            },
        }
        entries = [journal[r] for r in event.get("request_ids") or () if r in journal]
        if entries and all(e.get("finished_at") and e.get("started_at") for e in entries):
            row["requests"] = len(entries)
            row["server_start"] = min(e["started_at"] for e in entries)
            row["server_end"] = max(e["finished_at"] for e in entries)
            row["server_s"] = row["server_end"] - row["server_start"]
            firsts = [e["first_delta_at"] for e in entries if e.get("first_delta_at")]
            row["server_first_delta"] = min(firsts) if firsts else None
        if first_partials is not None and rid in first_partials:
            row["first_partial"] = first_partials[rid]
        rows.append(row)
    return rows


def _lane_starts(rows: list[dict[str, Any]], lane: Callable[[dict[str, Any]], object]) -> None:
    """Set ``start``: when the recording could begin, after the one before it in its lane."""
    previous: dict[object, float] = {}
    for row in sorted(rows, key=lambda r: (str(lane(r)), r["partition"], r["offset"])):
        key = lane(row)
        row["start"] = max(row["published"], previous.get(key, 0.0))
        previous[key] = row["terminal"]


def _overhead_parts(rows: list[dict[str, Any]], clock: str) -> dict[str, float] | None:
    """Mean overhead split by where the worker's own timings say it went, in milliseconds.

    ``request`` is the recognition time the worker saw beyond the server's: encoding the
    chunk, the upload, the server parsing and decoding it, the stream's way back. ``kafka`` is
    the rest: waiting to be consumed, and publishing the terminal event.
    """
    timed = [r for r in rows if "total_s" in r and "transcribe_s" in r]
    if not timed:
        return None

    def mean_ms(values: list[float]) -> float:
        return round(1000 * statistics.fmean(values), 1)

    return {
        "fetch": mean_ms([r.get("fetch_s", 0.0) for r in timed]),
        "decode": mean_ms([r.get("decode_s", 0.0) for r in timed]),
        "request": mean_ms([r["transcribe_s"] - r["server_s"] for r in timed]),
        "kafka": mean_ms([r["terminal"] - r[clock] - r["total_s"] for r in timed]),
    }


def batch_figures(
    rows: list[dict[str, Any]],
    cpu: dict[str, float],
    *,
    workers: int,
    slots: int,
    start: str = "published",
    lane: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Throughput, CPU per audio minute, overhead and first-partial lag of one batch.

    ``start`` names when a recording's clock starts: ``published`` (publish-to-final),
    ``lane`` (after the previous recording of its ``lane`` finished: the backlog's queueing
    removed) or ``started_at`` (the time the consumer says it picked the recording up).
    """
    if lane is not None:
        _lane_starts(rows, lane)
    done = [r for r in rows if r["type"] == "final" and "server_s" in r]
    wall = max(r["terminal"] for r in rows) - min(r["published"] for r in rows)
    audio = sum(r["audio_s"] or 0.0 for r in rows if r["type"] == "final")
    clock = "start" if start == "lane" else start
    overhead = [r["terminal"] - r[clock] - r["server_s"] for r in done if r.get(clock)]
    ratio = [
        (r["terminal"] - r[clock] - r["server_s"]) / r["server_s"]
        for r in done
        if r.get(clock) and r["server_s"] > 0
    ]
    lag = [
        r["first_partial"] - r["server_first_delta"]
        for r in done
        if r.get("first_partial") and r.get("server_first_delta")
    ]
    server_s = [r["server_s"] for r in done]
    parts = _overhead_parts([r for r in done if r.get(clock)], clock)
    total_cpu = sum(cpu.values())
    figures: dict[str, Any] = {
        "recordings": len(rows),
        "failed": sum(r["type"] != "final" for r in rows),
        "workers": workers,
        "slots": slots,
        "wall_s": round(wall, 2),
        "audio_s": round(audio, 1),
        "mean_audio_s": round(audio / max(1, len(done)), 1),
        "recordings_per_s": round(len(rows) / wall, 3),
        "audio_h_per_h_per_worker": round(audio / wall / workers, 1),
        "cpu_s": cpu,
        "cpu_s_per_audio_min": round(cpu["worker"] / (audio / 60), 4) if audio else None,
        "cpu_s_per_audio_min_all": round(total_cpu / (audio / 60), 4) if audio else None,
        "overhead_start": start,
        "overhead_ms": distribution(overhead, 1000),
        "overhead_ratio": distribution(ratio),
        "overhead_ratio_total": round(sum(overhead) / sum(server_s), 4) if server_s else None,
        "overhead_parts_ms": parts,
        "first_partial_lag_ms": distribution(lag, 1000),
        "server_s": distribution(server_s),
    }
    if server_s and done:
        # What the hardware allows: slots busy for exactly the server's time, or every core
        # busy on this work alone (worker, server and broker together).
        figures["ceiling_latency_per_s"] = round(slots / statistics.fmean(server_s), 3)
        if total_cpu:
            figures["ceiling_cpu_per_s"] = round(CORES * len(rows) / total_cpu, 3)
    return figures
