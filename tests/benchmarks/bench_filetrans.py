"""The filetrans backend beside the streaming one: requests, billed seconds, time to final, and
how many calls in flight one partition set carries while tasks run.

Part 1 (``per_call``): every call of the call corpus (calls.py) through the worker's own
stages and clients against the scripted ASR server over real HTTP, no Kafka:

- ``filetrans``: decode + VAD, the silence-compacted stereo FLAC, one upload, one submit, polls
  with the worker's backoff (``--poll-initial-s``), the result file;
- ``streaming``: the same call split and ``packed`` (the worker's default), each request sent
  with the worker's DashScope SSE client.

Per backend it prints requests per call (uploads, submits, polls for filetrans; recognition
requests for streaming), billed / speech seconds, and time to final (from the first request).

Part 2 (``scale``): a Kafka broker, one worker on 8 partitions with ``STREAMS_ASR_BACKEND=
filetrans``, the scripted server's task delay fixed (``--filetrans-delay-s``), 200 calls
published at once: the wall time from the first publish to the last final, in units of the
delay. A partition that waited on its task would need 200 / 8 = 25 rounds of the delay; the
durable task lets the offset move on, so it takes a few.

    python -m tests.benchmarks.bench_filetrans [--calls N] [--scale-calls 200] [--delay-s 20]

Measured on a loaded 2-core machine (shared with other processes): 200 calls took 106 s with a
5 s delay and 101 s with a 20 s delay: the wall time is the workers' start throughput (decode,
VAD, compaction, upload, submit; about 2 calls a second here) plus about one delay, whatever
the delay; partitions that waited on their tasks would need 25 rounds of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from streams.api_limits import billed_seconds as request_billed
from streams.audiowork import decode_and_plan, request_uri
from streams.events import RecognitionDefaults, parse_recording, recording_event
from streams.filetrans_audio import compact_audio
from streams.filetrans_client import FiletransClient, QueryLimiter
from streams.ratelimit import RequestLimiter, SlotPlan
from streams.transcribe import DashScopeBackend, RecognitionOptions, Result, asr_client
from tests.audio import stereo_call, write_wav
from tests.benchmarks.bench_economy import policy
from tests.benchmarks.calls import build_calls

__all__ = ["main", "per_call", "run", "scale"]

API_KEY = "sk-bench"


def _recording(path: Path) -> Any:
    event = recording_event(
        "bench", path.as_uri(), layout="split", roles=["agent", "customer"], language="en"
    )
    return parse_recording(orjson.dumps(event), RecognitionDefaults(model="qwen3-asr-flash"))


def _limiter() -> RequestLimiter:
    limiter = RequestLimiter(SlotPlan(60_000, 1))
    limiter.assign([0])
    return limiter


async def _filetrans(base_url: str, path: Path, poll_initial_s: float) -> dict[str, Any]:
    recording = _recording(path)
    with tempfile.TemporaryDirectory() as spool:
        planned = decode_and_plan(
            path,
            Path(spool),
            recording=recording,
            split_plan="packed",
            max_duration_s=4 * 3600,
            policy=policy(),
            vad_aggressiveness=1,
        )
        channels = sorted({r.channel for r in planned.requests})
        compact = compact_audio(planned.audio, planned.requests, channels, 0.4)
    http = asr_client("httpx", connect_timeout_s=10, read_timeout_s=60, concurrency=4)
    async with http:
        client = FiletransClient(
            http, base_url, API_KEY, submit_limiter=_limiter(), query_limiter=QueryLimiter(20)
        )
        started = time.perf_counter()
        url = await client.upload(compact.flac, name="call.flac", model="qwen3-asr-flash-filetrans")
        task_id, _ = await client.submit(
            url,
            model="qwen3-asr-flash-filetrans",
            channels=[0],  # one track: a section per channel
            language="en",
            enable_itn=False,
        )
        wait = poll_initial_s
        while True:
            status = await client.poll(task_id)
            if status.done:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, 15.0)
        assert status.status == "SUCCEEDED", status
        assert status.transcription_url is not None
        await client.result(status.transcription_url)
        elapsed = time.perf_counter() - started
    counts = client.counts
    return {
        "requests": counts.policies + counts.uploads + counts.submits + counts.polls,
        "uploads": counts.uploads + counts.policies,
        "submits": counts.submits,
        "polls": counts.polls,
        "billed_s": math.ceil(status.usage_seconds or 0),
        "speech_s": sum(r.speech_s for r in planned.requests),
        "time_to_final_s": elapsed,
    }


async def _streaming(base_url: str, path: Path) -> dict[str, Any]:
    recording = _recording(path)
    with tempfile.TemporaryDirectory() as spool:
        planned = decode_and_plan(
            path,
            Path(spool),
            recording=recording,
            split_plan="packed",
            max_duration_s=4 * 3600,
            policy=policy(),
            vad_aggressiveness=1,
        )
        http = asr_client("httpx", connect_timeout_s=10, read_timeout_s=60, concurrency=8)
        billed = 0
        async with http:
            backend = DashScopeBackend(http, base_url, API_KEY)
            options = RecognitionOptions(model="qwen3-asr-flash", language="en")
            started = time.perf_counter()

            async def one(request: Any) -> int:
                async for item in backend.stream(request_uri(planned.audio, request), options):
                    if isinstance(item, Result):
                        return item.billed_seconds or request_billed(request.duration_s)
                return 0

            billed = sum(await asyncio.gather(*(one(r) for r in planned.requests)))
            elapsed = time.perf_counter() - started
    return {
        "requests": len(planned.requests),
        "uploads": 0,
        "submits": 0,
        "polls": 0,
        "billed_s": billed,
        "speech_s": sum(r.speech_s for r in planned.requests),
        "time_to_final_s": elapsed,
    }


@contextlib.contextmanager
def _server(logs: Path, *args: str) -> Iterator[Any]:
    from tests.fixtures.asr_server import run_scripted_server

    with run_scripted_server(
        logs / f"server-{uuid.uuid4().hex[:6]}.log", *args, api_key=API_KEY
    ) as s:
        yield s


def per_call(calls: int, logs: Path, delay_s: float, poll_initial_s: float) -> list[dict[str, Any]]:
    """Requests, billed and speech seconds, time to final per backend, averaged per call."""
    corpus = build_calls()[:calls]
    rows = []
    with _server(logs, "--filetrans-delay-s", str(delay_s), "--filetrans-pending-s", "0") as srv:
        for name, measure in (
            ("streaming (split packed)", lambda p: _streaming(srv.base_url, p)),
            ("filetrans", lambda p: _filetrans(srv.base_url, p, poll_initial_s)),
        ):
            figures = [asyncio.run(measure(call.path)) for call in corpus]
            n = len(figures)
            speech = sum(f["speech_s"] for f in figures)
            rows.append(
                {
                    "backend": name,
                    "calls": n,
                    "requests_per_call": sum(f["requests"] for f in figures) / n,
                    "uploads_per_call": sum(f["uploads"] for f in figures) / n,
                    "submits_per_call": sum(f["submits"] for f in figures) / n,
                    "polls_per_call": sum(f["polls"] for f in figures) / n,
                    "billed_over_speech": sum(f["billed_s"] for f in figures) / speech,
                    "time_to_final_s": sum(f["time_to_final_s"] for f in figures) / n,
                }
            )
    return rows


def scale(
    calls: int, delay_s: float, logs: Path, partitions: int = 8, bootstrap: str | None = None
) -> dict[str, Any]:
    """``calls`` short stereo calls on ``partitions`` partitions with a fixed task delay, on
    the broker at ``bootstrap`` (the suite's), else on one started here."""
    from streams.dev.kafka_download import default_cache_dir, ensure_jars
    from streams.dev.localkafka import LocalKafka

    broker = None
    if bootstrap is None:
        root = Path(__file__).resolve().parents[2]
        broker = LocalKafka(ensure_jars(default_cache_dir(root)))
        broker.start(timeout_s=120)
        bootstrap = broker.bootstrap
    try:
        return _scale(calls, delay_s, logs, partitions, bootstrap)
    finally:
        if broker is not None:
            broker.close()


def _scale(
    calls: int, delay_s: float, logs: Path, partitions: int, bootstrap: str
) -> dict[str, Any]:
    from tests.fixtures.kafka import make_topics
    from tests.fixtures.worker import new_stack

    audio, _ = stereo_call([(0, 0.3, "harvard"), (1, 4.0, "jfk")])
    path = write_wav(logs / "short.wav", audio)
    with _server(logs, "--filetrans-delay-s", str(delay_s), "--filetrans-pending-s", "0") as srv:
        stack = new_stack(f"ftbench{uuid.uuid4().hex[:6]}", bootstrap, srv, logs)
        stack.env.update(
            STREAMS_TOPIC_PARTITIONS=str(partitions),
            STREAMS_ASR_BACKEND="filetrans",
            STREAMS_RECORDING_DEADLINE_S="600",
            STREAMS_FILETRANS_POLL_INITIAL_S="0.5",
            STREAMS_FILETRANS_POLL_MAX_S=str(max(1.0, delay_s / 2)),
        )
        asyncio.run(make_topics(bootstrap, stack.topic_names(), partitions=partitions))
        stack.start_worker()
        try:
            asyncio.run(stack.publish([_event("warm", path)]))
            asyncio.run(_wait(stack, {"warm"}, 180))
            events = [_event(f"call-{i}", path) for i in range(calls)]
            started = time.time()
            asyncio.run(stack.publish(events))
            asyncio.run(_wait(stack, {e["recording_id"] for e in events}, 60 + 30 * delay_s))
            wall = time.time() - started
        finally:
            for worker in stack.workers:
                worker.stop()
    return {
        "calls": calls,
        "partitions": partitions,
        "delay_s": delay_s,
        "wall_s": wall,
        "wall_in_delays": wall / delay_s,
        "rounds_if_waiting": math.ceil(calls / partitions),
    }


def _event(rid: str, path: Path) -> dict[str, Any]:
    return recording_event(
        rid, path.as_uri(), layout="split", roles=["agent", "customer"], language="en"
    )


async def _wait(stack: Any, wanted: set[str], timeout_s: float) -> None:
    await stack.collect(
        lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= wanted,
        timeout_s=timeout_s,
        topics=(stack.final, stack.failed),
    )


def _print(rows: list[dict[str, Any]], scaled: dict[str, Any] | None) -> None:
    head = ("backend", "requests/call", "uploads", "submits", "polls", "billed/speech", "final s")
    print(" | ".join(head))
    for r in rows:
        print(
            f"{r['backend']} | {r['requests_per_call']:.1f} | {r['uploads_per_call']:.1f} | "
            f"{r['submits_per_call']:.1f} | {r['polls_per_call']:.1f} | "
            f"{r['billed_over_speech']:.3f} | {r['time_to_final_s']:.2f}"
        )
    if scaled:
        print(
            f"\n{scaled['calls']} calls on {scaled['partitions']} partitions, task delay "
            f"{scaled['delay_s']:.1f} s: {scaled['wall_s']:.1f} s = "
            f"{scaled['wall_in_delays']:.1f} delays (waiting partitions: "
            f"{scaled['rounds_if_waiting']} rounds)"
        )


def run(bench: Any) -> dict[str, Any]:
    """The suite's entry (tests/benchmarks/__main__.py): both parts, quick or full."""
    quick = bool(getattr(bench, "quick", False))
    logs = Path(getattr(bench, "logs", tempfile.mkdtemp(prefix="bench-filetrans-")))
    rows = per_call(2 if quick else 6, logs, 1.0, 0.5)
    scaled = scale(40 if quick else 200, 20.0, logs, bootstrap=getattr(bench, "bootstrap", None))
    _print(rows, scaled)
    return {"per_call": rows, "scale": scaled}


def main(argv: list[str] | None = None) -> int:
    """Print both tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=6, help="corpus calls for part 1")
    parser.add_argument("--task-delay-s", type=float, default=1.0, help="part 1's task delay")
    parser.add_argument("--poll-initial-s", type=float, default=0.5)
    parser.add_argument("--scale-calls", type=int, default=200, help="0: skip part 2")
    parser.add_argument("--delay-s", type=float, default=20.0, help="part 2's task delay")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="bench-filetrans-"))
    rows = per_call(args.calls, logs, args.task_delay_s, args.poll_initial_s)
    scaled = scale(args.scale_calls, args.delay_s, logs) if args.scale_calls else None
    _print(rows, scaled)
    print(f"\nlogs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
