"""Benchmark where the audio stages run: threads of the worker vs a pool of processes.

Run ``python -m tests.benchmarks.bench_audio_stages [--runs 3] [--recordings 8]``. It prints
one table and writes ``bench-results/bench_audio_stages.json``. Figures, never assertions.

The stages are the worker's own (streams/audiowork.py): ``decode_and_plan`` (PyAV decode, the
WebRTC VAD, the dual-mono check, the request plan) and ``request_uri`` (read a request's PCM
from the spool, FLAC, base64), run through :class:`streams.audiostages.AudioStages` as the
worker runs them. For each mode (``threads``; ``pool-N``: N processes):

- ``batch``: ``--recordings`` 10-minute stereo calls (mp3, 44.1 kHz) decoded and planned at
  once, as after a burst on as many partitions: wall seconds, audio minutes decoded per wall
  second, and CPU seconds of the worker and of its audio processes;
- ``loop lag``: during the batch, how late a 10 ms ticker on the worker's event loop woke up
  (p99 and max): what every other recording's SSE stream and Kafka heartbeat feel;
- ``one call``: one 10-minute call alone (median), and one 3.3 s clip alone (median), to show
  the pool's cost per recording (pickling the plan, a process hop);
- ``encode``: one 232 s request (the largest a 10 MB ``data:`` URI can hold) to a ``data:``
  URI, alone (median), which moves ~5 MB back from the audio process;
- ``RSS``: resident memory of the audio processes after the runs (what the pool costs).

Modes alternate within each run, so a busy neighbour on a shared machine hits all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from streams.audiostages import AudioStages
from streams.audiowork import decode_and_plan, request_uri
from streams.config import Settings
from streams.decode import SAMPLE_RATE
from streams.events import RecognitionDefaults, parse_recording
from streams.runtime import chunk_policy
from tests.audio import asset, conversation_script, stereo_call, transcode, write_wav
from tests.benchmarks.harness import cpu_seconds, memory_kib, percentile

__all__ = ["main"]

RESULTS = Path("bench-results")
CALL_S = 600


def _recording(path: Path, rid: str) -> Any:
    raw = json.dumps(
        {
            "schema_version": 2,
            "recording_id": rid,
            "audio_url": path.as_uri(),
            "channels": {"layout": "split"},
        }
    ).encode()
    return parse_recording(raw, RecognitionDefaults(model="qwen3-asr-flash"))


def _decode_call(settings: Settings) -> functools.partial[Any]:
    return functools.partial(
        decode_and_plan,
        split_plan=settings.split_plan,
        max_duration_s=settings.max_audio_s,
        policy=chunk_policy(settings),
        vad_aggressiveness=settings.vad_aggressiveness,
    )


async def _lagging(stop: asyncio.Event, lags: list[float], tick_s: float = 0.01) -> None:
    """Record how late each tick of the event loop comes."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + tick_s
        await asyncio.sleep(tick_s)
        lags.append(max(0.0, loop.time() - due))


def _pool_pids(stages: AudioStages) -> list[int]:
    pool = stages._pool  # the benchmark looks inside on purpose
    return list(pool._processes) if pool is not None else []


async def _mode(
    processes: int, files: dict[str, Path], spool: Path, recordings: int, settings: Settings
) -> dict[str, Any]:
    stages = AudioStages(processes)
    stages.start()
    decode = _decode_call(settings)
    (spool / "warm").mkdir(exist_ok=True)
    # Warm: the pool's processes import the stages; threads get their first call.
    await stages.run(
        "decode",
        "warm",
        functools.partial(decode, recording=_recording(files["clip"], "w")),
        files["clip"],
        spool / "warm",
    )
    figures: dict[str, Any] = {}

    # The batch, with the loop's lag measured while it runs.
    calls = [_recording(files["call"], f"r{i}") for i in range(recordings)]
    for i in range(recordings):
        (spool / f"b{i}").mkdir(exist_ok=True)
    me = os.getpid()
    pids = _pool_pids(stages)
    cpu_before = cpu_seconds(me), sum(cpu_seconds(p) for p in pids)
    stop, lags = asyncio.Event(), []
    ticker = asyncio.create_task(_lagging(stop, lags))
    started = time.perf_counter()
    planned = await asyncio.gather(
        *(
            stages.run(
                "decode",
                c.recording_id,
                functools.partial(decode, recording=c),
                files["call"],
                spool / f"b{i}",
            )
            for i, c in enumerate(calls)
        )
    )
    wall = time.perf_counter() - started
    stop.set()
    await ticker
    cpu_after = cpu_seconds(me), sum(cpu_seconds(p) for p in _pool_pids(stages))
    audio_min = sum(p.audio.duration_s for p in planned) / 60
    figures["batch_s"] = wall
    figures["audio_min_per_s"] = audio_min / wall
    figures["worker_cpu_s"] = cpu_after[0] - cpu_before[0]
    figures["audio_processes_cpu_s"] = cpu_after[1] - cpu_before[1]
    figures["loop_lag_p99_ms"] = percentile(lags, 99) * 1000
    figures["loop_lag_max_ms"] = max(lags) * 1000

    # One at a time: a long call, a short clip, the largest request's encoding.
    one_call, one_clip, encode = [], [], []
    for _ in range(3):
        t = time.perf_counter()
        await stages.run(
            "decode",
            "one",
            functools.partial(decode, recording=calls[0]),
            files["call"],
            spool / "b0",
        )
        one_call.append(time.perf_counter() - t)
    clip = _recording(files["clip"], "clip")
    for _ in range(15):
        t = time.perf_counter()
        await stages.run(
            "decode",
            "clip",
            functools.partial(decode, recording=clip),
            files["clip"],
            spool / "warm",
        )
        one_clip.append(time.perf_counter() - t)
    request = max(planned[0].requests, key=lambda r: r.duration_s)
    for _ in range(5):
        t = time.perf_counter()
        uri = await stages.run("encode", "enc", request_uri, planned[0].audio, request)
        encode.append(time.perf_counter() - t)
    figures["one_call_s"] = statistics.median(one_call)
    figures["one_clip_ms"] = statistics.median(one_clip) * 1000
    figures["encode_ms"] = statistics.median(encode) * 1000
    figures["encode_request_s"] = request.duration_s
    figures["encode_uri_mb"] = len(uri) / 1e6
    figures["audio_processes_rss_mib"] = (
        sum(memory_kib(p)["VmRSS"] for p in _pool_pids(stages)) / 1024
    )
    await stages.close()
    return figures


def _files(tmp: Path) -> dict[str, Path]:
    call, _ = stereo_call(conversation_script(CALL_S - 20, seed=4), tail_s=1.0)
    source = write_wav(tmp / "call-16k-stereo.wav", call[:, : CALL_S * SAMPLE_RATE])
    mp3 = transcode(source, tmp / "call.mp3", codec="libmp3lame", rate=44100, layout="stereo")
    clip = tmp / "clip.wav"
    shutil.copy(asset("en_speechbrain_harvard_birch_canoe.wav"), clip)
    return {"call": mp3, "clip": clip}


def _table(modes: dict[str, dict[str, list[float]]]) -> list[str]:
    cols = [
        ("batch_s", "batch s", 1),
        ("audio_min_per_s", "audio min/s", 1),
        ("worker_cpu_s", "worker CPU s", 1),
        ("audio_processes_cpu_s", "audio procs CPU s", 1),
        ("loop_lag_p99_ms", "loop lag p99 ms", 0),
        ("loop_lag_max_ms", "loop lag max ms", 0),
        ("one_call_s", "one 10-min call s", 2),
        ("one_clip_ms", "one 3 s clip ms", 0),
        ("encode_ms", "encode 232 s ms", 0),
        ("audio_processes_rss_mib", "audio procs RSS MiB", 0),
    ]
    head = ["mode", *(label for _, label, _ in cols)]
    rows = [head]
    for mode, figures in modes.items():
        rows.append(
            [mode, *(f"{statistics.median(figures[key]):.{digits}f}" for key, _, digits in cols)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


async def _measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    settings = Settings()
    modes = ["threads", *(f"pool-{n}" for n in args.pools)]
    results: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp_name:
        tmp = Path(tmp_name)
        files = _files(tmp)
        for run in range(args.runs):
            for mode in modes if run % 2 == 0 else reversed(modes):
                processes = 0 if mode == "threads" else int(mode.split("-")[1])
                spool = tmp / f"spool-{mode}"
                spool.mkdir(exist_ok=True)
                figures = await _mode(processes, files, spool, args.recordings, settings)
                for key, value in figures.items():
                    results[mode].setdefault(key, []).append(value)
                print(f"run {run + 1} {mode}: batch {figures['batch_s']:.1f} s", flush=True)
    return results


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recordings", type=int, default=8)
    parser.add_argument("--pools", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    results = asyncio.run(_measure(args))
    print(
        f"\nAudio stages: {args.recordings} x {CALL_S // 60}-min stereo mp3 (44.1 kHz) decoded, "
        f"VAD'd and planned at once; medians of {args.runs} runs; "
        f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}"
    )
    for line in _table(results):
        print(line)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "bench_audio_stages.json"
    out.write_text(json.dumps({"recordings": args.recordings, "runs": results}, indent=1))
    print(f"\nraw figures: {out}")


if __name__ == "__main__":
    main()
