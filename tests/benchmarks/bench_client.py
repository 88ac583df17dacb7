"""Benchmark: CPU per streamed recognition request, the project's client vs the official SDK.

Runs the scripted ASR server as a separate process (realistic deltas and latency), then, in
this process, drives N concurrent streams with each client and measures this process's CPU
time per request and requests per second. Same server, same audio, same run.

    python -m tests.benchmarks.bench_client [--concurrency 32,128,256] [--requests 768]

Writes bench-results/client.json. Not a test: figures only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from streams.decode import SAMPLE_RATE, decode_sync
from streams.encode import encode_data_uri
from streams.transcribe import DashScopeBackend, Delta, RecognitionOptions
from tests.audio import asset

RESULTS = Path("bench-results")
OPTIONS = RecognitionOptions(model="qwen3-asr-flash", language="en")
# 30 words in deltas of 3: ten deltas per request, 20 ms apart after a 100 ms first delta.
TRANSCRIPT = " ".join(f"word{i}" for i in range(30))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def scripted_server() -> Iterator[str]:
    """The scripted server on a free port, as its own process (its CPU is not ours)."""
    command = [
        sys.executable,
        "-m",
        "streams.asr_server.main",
        "--engine",
        "scripted",
        "--no-auth",
        "--port",
        "0",
        "--transcript",
        TRANSCRIPT,
        "--words-per-delta",
        "3",
        "--first-delta-s",
        "0.1",
        "--delta-interval-s",
        "0.02",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        url = line.split("listening on ")[1].split()[0]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _run_project(url: str, uri: str, concurrency: int, total: int, transport: str) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0)
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(transport=AiohttpTransport(), timeout=timeout, limits=limits)
    else:
        client = httpx.AsyncClient(timeout=timeout, limits=limits)
    backend = DashScopeBackend(client, url, None)
    remaining = total

    async def stream_loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            deltas = 0
            async for item in backend.stream(uri, OPTIONS):
                deltas += isinstance(item, Delta)
            assert deltas == 10, deltas

    async with client:
        await asyncio.gather(*(stream_loop() for _ in range(concurrency)))


def _run_async(url: str, uri: str, concurrency: int, total: int, transport: str) -> None:
    asyncio.run(_run_project(url, uri, concurrency, total, transport))


def _run_sdk(url: str, uri: str, concurrency: int, total: int) -> None:
    import dashscope

    dashscope.base_http_api_url = f"{url}/api/v1"
    messages = [{"role": "user", "content": [{"audio": uri}]}]

    def one(_: int) -> None:
        deltas = 0
        for part in dashscope.MultiModalConversation.call(
            api_key="sk-bench",
            model=OPTIONS.model,
            messages=messages,
            result_format="message",
            asr_options={"language": "en"},
            stream=True,
            incremental_output=True,
        ):
            assert part.status_code == 200, part
            deltas += bool(part.output.choices[0].message.content)
        assert deltas >= 10, deltas

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(total)))


def measure(run: Callable[[], None], total: int) -> dict[str, float]:
    """CPU seconds of this process and wall time for ``total`` requests."""
    cpu, wall = _cpu(), time.perf_counter()
    run()
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return {"cpu_ms_per_request": 1000 * cpu / total, "requests_per_s": total / wall}


def main() -> None:
    """Run every client at every concurrency and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="32,128,256")
    parser.add_argument("--requests", type=int, default=768, help="requests per measurement")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    pcm = decode_sync(asset("en_speechbrain_harvard_birch_canoe.wav")).channels[0][:SAMPLE_RATE]
    uri = encode_data_uri(pcm, SAMPLE_RATE)
    rows: list[dict[str, Any]] = []
    with scripted_server() as url:
        asyncio.run(_run_project(url, uri, 8, 16, "default"))  # warm up imports and server
        for concurrency in levels:
            total = max(args.requests, concurrency * 2)
            clients: dict[str, Callable[[], None]] = {
                "project httpx (default pool)": functools.partial(
                    _run_async, url, uri, concurrency, total, "default"
                ),
                "project httpx + aiohttp transport": functools.partial(
                    _run_async, url, uri, concurrency, total, "aiohttp"
                ),
                "dashscope SDK, thread pool": functools.partial(
                    _run_sdk, url, uri, concurrency, total
                ),
            }
            for name, run in clients.items():
                figures = measure(run, total)
                rows.append({"client": name, "concurrency": concurrency, **figures})
                print(
                    f"{name:<36} {concurrency:>4} streams  "
                    f"{figures['cpu_ms_per_request']:6.2f} ms CPU/request  "
                    f"{figures['requests_per_s']:7.1f} req/s",
                    flush=True,
                )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "client.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
