"""Scenario 1: CPU per streamed recognition request, the project's client vs the official SDK.

The scripted ASR server runs as its own process (10 deltas per request: the first after
100 ms, then one every 20 ms). Each measurement runs in a fresh child process that builds its
client, warms it up (imports, connections, the SDK's threads), then drives ``total`` requests
through ``concurrency`` concurrent streams and reports its own CPU time (getrusage: every
thread) and wall time for those requests alone. Same server, same audio, same run; the
clients alternate at each concurrency so that load from elsewhere hits them alike.

- ``project (worker's client)``: :class:`~streams.transcribe.DashScopeBackend` on the client
  the worker builds (:func:`~streams.transcribe.asr_client`, httpx over the aiohttp transport).
- ``project on httpx's own pool``: the same backend over httpx's default transport.
- ``dashscope SDK, thread pool``: ``dashscope.MultiModalConversation.call(stream=True)`` in a
  ``ThreadPoolExecutor`` with as many threads as streams, as its documentation suggests.

    python -m tests.benchmarks.bench_client [--concurrency 32,128,256] [--requests 768]

Figures only, no assertions (``python -m tests.benchmarks`` runs it as scenario ``client``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.decode import SAMPLE_RATE, decode_sync
from streams.encode import encode_data_uri
from streams.transcribe import DashScopeBackend, Delta, RecognitionOptions, asr_client
from tests.audio import asset
from tests.benchmarks.harness import Profile, ScriptedServer, cpu_seconds
from tests.benchmarks.measure import CORES
from tests.benchmarks.profiling import Spy, summarise

__all__ = ["CLIENTS", "PROFILE", "main", "run"]

OPTIONS = RecognitionOptions(model="qwen3-asr-flash", language="en")
# 30 words in deltas of 3: ten deltas per request, 20 ms apart after a 100 ms first delta.
PROFILE = Profile(
    first_delta_s=0.1,
    delta_interval_s=0.02,
    words_per_delta=3,
    transcript=" ".join(f"word{i}" for i in range(30)),
)
DELTAS = 10
CLIENTS = ("project", "project-httpx-pool", "sdk")
LABELS = {
    "project": "project (worker's client)",
    "project-httpx-pool": "project on httpx's own pool",
    "sdk": "dashscope SDK, thread pool",
}
_WARM_UP = 16


def _audio_uri() -> str:
    pcm = decode_sync(asset("en_speechbrain_harvard_birch_canoe.wav")).channels[0][:SAMPLE_RATE]
    return encode_data_uri(pcm, SAMPLE_RATE)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _project(url: str, concurrency: int, total: int, transport: str) -> tuple[float, float]:
    uri = _audio_uri()
    client = asr_client(transport, connect_timeout_s=10, read_timeout_s=30, concurrency=concurrency)
    backend = DashScopeBackend(client, url, "sk-bench")

    async def one() -> None:
        deltas = 0
        async for item in backend.stream(uri, OPTIONS):
            deltas += isinstance(item, Delta)
        assert deltas == DELTAS, deltas

    async def streams(count: int) -> None:
        remaining = count

        async def loop() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        await asyncio.gather(*(loop() for _ in range(concurrency)))

    async with client:
        await streams(max(_WARM_UP, concurrency))
        cpu, wall = _cpu(), time.perf_counter()
        await streams(total)
        return _cpu() - cpu, time.perf_counter() - wall


def _sdk(url: str, concurrency: int, total: int) -> tuple[float, float]:
    import dashscope

    dashscope.base_http_api_url = f"{url}/api/v1"
    messages = [{"role": "user", "content": [{"audio": _audio_uri()}]}]

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
        # The SDK also hands over the closing frame, which repeats the last piece's content.
        assert deltas >= DELTAS, deltas

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(max(_WARM_UP, concurrency))))  # starts every thread
        cpu, wall = _cpu(), time.perf_counter()
        list(pool.map(one, range(total)))
        return _cpu() - cpu, time.perf_counter() - wall


def _child(client: str, url: str, concurrency: int, total: int) -> None:
    if client == "sdk":
        cpu, wall = _sdk(url, concurrency, total)
    else:
        transport = "aiohttp" if client == "project" else "httpx"
        cpu, wall = asyncio.run(_project(url, concurrency, total, transport))
    print(json.dumps({"cpu_s": cpu, "wall_s": wall}))


def measure(
    server: ScriptedServer, client: str, concurrency: int, total: int, profile: Path | None = None
) -> dict[str, Any]:
    """One client at one concurrency, in a fresh process; CPU per request and requests/s.

    With ``profile`` the child runs under ``py-spy record`` (raw stacks into that file); its
    figures then carry py-spy's sampling cost and are not comparable.
    """
    command = [sys.executable, "-m", "tests.benchmarks.bench_client", "--child", client]
    command += [server.url, str(concurrency), str(total)]
    if profile is not None:
        spy = [Spy.available() or "py-spy", "record", "--format", "raw", "--rate", "200"]
        command = [*spy, "--nonblocking", "-o", str(profile), "--", *command]
    server_cpu = cpu_seconds(server.pid)
    done = subprocess.run(command, capture_output=True, check=False, timeout=900)
    if done.returncode:
        raise RuntimeError(f"{client} at {concurrency} failed:\n{done.stderr.decode()[-3000:]}")
    # The last JSON line: py-spy, when it wraps the child, prints its own lines after it.
    lines = done.stdout.decode().splitlines()
    child = json.loads([line for line in lines if line.startswith("{")][-1])
    # The server's CPU covers the warm-up too; per request it is only a close upper bound.
    server_per = (cpu_seconds(server.pid) - server_cpu) / (total + max(_WARM_UP, concurrency))
    client_per = child["cpu_s"] / total
    latency = PROFILE.recognition_s(0)
    return {
        "client": client,
        "label": LABELS[client],
        "concurrency": concurrency,
        "requests": total,
        "cpu_ms_per_request": round(1000 * client_per, 3),
        "requests_per_s": round(total / child["wall_s"], 1),
        "server_cpu_ms_per_request": round(1000 * server_per, 3),
        # What the machine allows: every stream busy for exactly the server's latency, or
        # every core busy on this client and the server alone.
        "ceiling_latency_per_s": round(concurrency / latency, 1),
        "ceiling_cpu_per_s": round(CORES / (client_per + server_per), 1),
    }


def run(bench: Any, levels: tuple[int, ...] = (32, 128, 256)) -> dict[str, Any]:
    """Every client at every concurrency against one scripted server."""
    total_for: Callable[[int], int] = (
        (lambda c: 2 * c) if getattr(bench, "quick", False) else (lambda c: max(768, 3 * c))
    )
    rows = []
    logs = Path(getattr(bench, "logs", None) or tempfile.mkdtemp(prefix="bench-client-"))
    with ScriptedServer(PROFILE, logs, "client") as server:
        for concurrency in levels:
            for client in CLIENTS:
                row = measure(server, client, concurrency, total_for(concurrency))
                rows.append(row)
                print(
                    f"  {row['label']:<28} {concurrency:>4} streams "
                    f"{row['cpu_ms_per_request']:7.2f} ms CPU/request "
                    f"{row['requests_per_s']:7.1f} req/s",
                    flush=True,
                )
                server.reset()
        profiles = {}
        if getattr(bench, "profile", False):
            for client in ("project", "sdk"):
                raw = Path(bench.results) / f"profile-client-{client}.txt"
                measure(server, client, levels[-1], total_for(levels[-1]), raw)
                profiles[client] = summarise(raw)
    return {
        "profile": PROFILE.__dict__,
        "deltas_per_request": DELTAS,
        "rows": rows,
        "profiles": profiles,
    }


def main(argv: list[str] | None = None) -> None:
    """Run standalone and write ``bench-results/client.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="32,128,256")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("CLIENT", "URL", "CONCURRENCY", "TOTAL"))
    args = parser.parse_args(argv)
    if args.child:
        client, url, concurrency, total = args.child
        _child(client, url, int(concurrency), int(total))
        return
    levels = tuple(int(c) for c in args.concurrency.split(","))
    result = run(argparse.Namespace(quick=args.quick, logs=None), levels)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        (out / "client.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
