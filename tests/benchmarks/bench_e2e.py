"""Scenario 2: recordings end to end through one worker on Kafka, with the scripted recogniser.

Real speech (``corpus.py``: 30-295 s, WAV, FLAC and 8 kHz μ-law) through one ``streams worker``
on 32 partitions with 32 recognition slots; the scripted engine answers at a fixed pace that
is proportional to the audio (``FAST``: 0.3-3 s before the first delta, then 3 words every
20 ms). Two phases on the same worker:

- *backlog*: all recordings published at once; the worker drains them as fast as it can.
  Gives recordings per second, audio hours per hour and CPU per audio minute. Its overhead
  starts each recording's clock when the previous one of its partition finished, which takes
  out the time spent queueing behind it.
- *paced*: recordings published one by one at half the backlog's rate, so that they seldom
  queue. Gives the literal publish-to-final overhead and the first partial's lag behind the
  server's first delta: the latency a downstream consumer sees.

Run alone with ``python -m tests.benchmarks --only e2e``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tests.benchmarks.harness import Bench, Deployment, Profile
from tests.benchmarks.kafka_io import Record, end_offsets, publish, read_all
from tests.benchmarks.measure import CpuMeter, batch_figures, recording_rows
from tests.benchmarks.profiling import Spy, summarise

__all__ = ["FAST", "run", "run_backlog"]

FAST = Profile(first_delta_s=0.05, first_delta_per_audio_s=0.01, delta_interval_s=0.02)
PARTITIONS = 32


def run(bench: Bench) -> dict[str, Any]:
    """Both phases; figures and per-recording rows."""
    backlog_n, paced_n = (40, 16) if bench.quick else (500, 80)
    with Deployment(bench, FAST, name="e2e", partitions=PARTITIONS, concurrency=PARTITIONS) as dep:
        dep.add_worker()
        asyncio.run(dep.warm_up())
        backlog = run_backlog(dep, dep.events(backlog_n), profile="e2e-worker")
        rate = 0.5 * backlog["figures"]["recordings_per_s"]
        paced = asyncio.run(_paced(dep, dep.events(paced_n, start=backlog_n), rate))
    return {"profile": asdict(FAST), "partitions": PARTITIONS, "backlog": backlog, "paced": paced}


def run_backlog(
    dep: Deployment,
    events: list[dict[str, Any]],
    *,
    profile: str | None = None,
    start: str = "lane",
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Publish ``events`` at once and wait for every terminal event; figures and rows."""
    spy: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    raw = dep.bench.results / f"profile-{profile}.txt"
    if profile and dep.bench.profile:
        spy = Spy(dep.workers[0].pid, raw)
    meter = CpuMeter(dep)
    with spy:
        published = asyncio.run(_publish(dep, events))
        terminal = asyncio.run(dep.terminal(set(published), timeout_s=timeout_s))
    cpu = meter.used()
    partials = asyncio.run(_first_partials(dep, set(published))) if start != "lane" else None
    rows = recording_rows(published, terminal, dep.server.journal(), partials, dep.durations)
    figures = batch_figures(
        rows,
        cpu,
        workers=len(dep.workers),
        slots=dep.concurrency,
        start=start,
        lane=(lambda row: row["partition"]) if start == "lane" else None,
    )
    result: dict[str, Any] = {"figures": figures, "rows": rows}
    if profile and dep.bench.profile and raw.exists():
        result["profile"] = summarise(raw)
    return result


async def _publish(dep: Deployment, events: list[dict[str, Any]]) -> dict[str, Record]:
    return await publish(dep.bench.bootstrap, dep.topics.recordings, events)


async def _first_partials(
    dep: Deployment, ids: set[str], since: dict[int, int] | None = None
) -> dict[str, float]:
    """Broker time of each recording's first partial event."""
    records = await read_all(
        dep.bench.bootstrap,
        dep.topics.outputs["partial"],
        dep.output_partitions or dep.partitions,
        lambda value: value.get("recording_id") in ids,
        since=since,
    )
    first: dict[str, float] = {}
    for record in records:
        rid = record.value["recording_id"]
        first[rid] = min(first.get(rid, record.timestamp), record.timestamp)
    return first


async def _paced(dep: Deployment, events: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """Publish one recording every ``1 / rate`` seconds; figures and rows."""
    since = await end_offsets(
        dep.bench.bootstrap, dep.topics.outputs["partial"], dep.output_partitions or dep.partitions
    )
    published: dict[str, Record] = {}
    meter = CpuMeter(dep)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=dep.bench.bootstrap)
        await producer.start()
        try:
            due = time.monotonic()
            for event in events:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += 1 / rate
                rid = str(event["recording_id"])
                meta = await producer.send_and_wait(
                    dep.topics.recordings, orjson.dumps(event), key=rid.encode()
                )
                published[rid] = Record(
                    meta.topic, meta.partition, meta.offset, meta.timestamp / 1000, event
                )
        finally:
            await producer.stop()

    ids = {str(e["recording_id"]) for e in events}
    _, terminal = await asyncio.gather(
        produce(), dep.terminal(ids, timeout_s=120 + len(events) / rate)
    )
    cpu = meter.used()
    partials = await _first_partials(dep, ids, since)
    rows = recording_rows(published, terminal, dep.server.journal(), partials, dep.durations)
    figures = batch_figures(
        rows, cpu, workers=len(dep.workers), slots=dep.concurrency, start="published"
    )
    figures["publish_rate_per_s"] = round(rate, 3)
    return {"figures": figures, "rows": rows}
