"""Benchmark the whisper ASR server against calling faster-whisper directly, in the same run.

Run ``python -m tests.benchmarks.bench_whisper_server [--runs 3] [--model base]``. For each
shared recording and a ~60 s concatenation it measures, alternating the two so that load from
elsewhere on the machine hits both alike: the direct ``WhisperModel.transcribe(path)`` time
and time to first segment, and the server's time over HTTP (native SSE, incremental) and time
to first delta. It prints a table and writes ``bench-results/whisper_server.json``.

The helpers (error rate, the long recording, starting the server) are shared with
``tests/integration/test_whisper_engine.py``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import time
import unicodedata
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jiwer
import numpy as np
import orjson

from streams.asr_server.app import NATIVE_PATH
from streams.decode import decode_sync
from tests.audio import asset, manifest

__all__ = [
    "API_KEY",
    "WhisperServer",
    "error_rate",
    "long_recording",
    "main",
    "normalise",
    "run_whisper_server",
    "stream_native",
    "wav_bytes",
]

API_KEY = "sk-whisper-test"
ROOT = Path(__file__).resolve().parents[2]
GAP_S = 1.0
_BANNER = re.compile(rb"listening on (http://\S+)")
# English clips for the long recording: (file, channel or None for the downmix, reference key).
_LONG_PARTS = (
    ("en_whisper_jfk_stereo44k24bit.flac", None, "reference"),
    ("en_pocketsphinx_librivox_sense_sensibility_0870.wav", None, "reference"),
    ("en_speechbrain_harvard_birch_canoe.wav", None, "reference"),
    ("en_fasterwhisper_stereo_diarization_LR.wav", 0, "reference_left"),
    ("en_fasterwhisper_stereo_diarization_LR.wav", 1, "reference_right"),
)


def normalise(text: str, language: str) -> str:
    """Lowercase, drop punctuation and symbols (NFKC); for zh also drop spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    text = " ".join(text.split())
    return text.replace(" ", "") if language == "zh" else text


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    """Word error rate after :func:`normalise`; character error rate for zh."""
    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    return float(jiwer.cer(ref, hyp) if language == "zh" else jiwer.wer(ref, hyp))


def wav_bytes(pcm: np.ndarray, sample_rate: int = 16_000) -> bytes:
    """Write mono int16 samples as a WAV file in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.ascontiguousarray(pcm, dtype=np.int16).tobytes())
    return buffer.getvalue()


def long_recording(min_s: float = 60.0) -> tuple[np.ndarray, str]:
    """English clips joined with 1 s of silence until at least ``min_s``; PCM and reference."""
    entries = manifest()
    gap = np.zeros(int(GAP_S * 16_000), np.int16)
    pieces: list[np.ndarray] = []
    words: list[str] = []
    total = 0
    while total < min_s * 16_000:
        for name, channel, key in _LONG_PARTS:
            decoded = decode_sync(asset(name), layout="mix" if channel is None else "split")
            pcm = decoded.channels[channel or 0]
            pieces += [pcm, gap]
            words.append(str(entries[name][key]))
            total += len(pcm) + len(gap)
            if total >= min_s * 16_000:
                break
    return np.concatenate(pieces), " ".join(words)


@dataclass
class WhisperServer:
    """A running whisper server subprocess."""

    base_url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str) -> Any:
        """GET a JSON endpoint of the server."""
        response = httpx.get(self.base_url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def journal(self) -> list[dict[str, Any]]:
        """The engine's recent recognitions with their timings, oldest first."""
        entries: list[dict[str, Any]] = self.get("/whisper/journal")["entries"]
        return entries

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server wrote."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def run_whisper_server(
    log_path: Path, *args: str, startup_s: float = 180.0
) -> Iterator[WhisperServer]:
    """Start ``python -m streams.asr_server.main --engine whisper`` on a free port."""
    command = [sys.executable, "-m", "streams.asr_server.main", "--engine", "whisper"]
    command += ["--host", "127.0.0.1", "--port", "0", "--api-key", API_KEY, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_s
        while not (found := _BANNER.search(log_path.read_bytes())):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the whisper server did not start:\n{tail}")
            time.sleep(0.05)
        server = WhisperServer(found.group(1).decode(), API_KEY, process, log_path)
        httpx.get(server.base_url + "/health", timeout=10).raise_for_status()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def native_body(audio: bytes, mime: str = "audio/wav", **asr_options: Any) -> bytes:
    """A native request body carrying ``audio`` as a data URI, incremental output on."""
    uri = f"data:{mime};base64," + base64.b64encode(audio).decode()
    parameters: dict[str, Any] = {"incremental_output": True}
    if asr_options:
        parameters["asr_options"] = asr_options
    messages = [{"role": "user", "content": [{"audio": uri}]}]
    body = {"model": "qwen3-asr-flash", "input": {"messages": messages}, "parameters": parameters}
    return orjson.dumps(body)


def stream_native(base_url: str, body: bytes, api_key: str = API_KEY) -> dict[str, Any]:
    """POST a native SSE request; return the text, language and client-side timings."""
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "X-DashScope-SSE": "enable",
    }
    text, language, first = "", None, None
    started = time.perf_counter()
    with httpx.stream(
        "POST", base_url + NATIVE_PATH, content=body, headers=headers, timeout=300
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            event = orjson.loads(line[5:])
            message = event["output"]["choices"][0]["message"]
            piece = "".join(item.get("text", "") for item in message["content"])
            if piece and first is None:
                first = time.perf_counter() - started
            text += piece
            language = message["annotations"][0].get("language", language)
    total = time.perf_counter() - started
    return {"text": text, "language": language, "first_s": first, "total_s": total}


def _direct(model: Any, path: Path, beam_size: int) -> dict[str, Any]:
    started = time.perf_counter()
    segments, info = model.transcribe(str(path), beam_size=beam_size)
    text, first = "", None
    for segment in segments:
        if first is None:
            first = time.perf_counter() - started
        text += segment.text
    total = time.perf_counter() - started
    return {"text": text.strip(), "language": info.language, "first_s": first, "total_s": total}


def _cases(workdir: Path) -> list[tuple[str, Path, str, str, str]]:
    """(name, path, mime, language, reference) for each shared file and the long recording."""
    cases = []
    for name, entry in manifest().items():
        mime = "audio/flac" if name.endswith(".flac") else "audio/wav"
        cases.append((name, asset(name), mime, str(entry["language"]), str(entry["reference"])))
    pcm, reference = long_recording()
    path = workdir / "en_long_concat.wav"
    path.write_bytes(wav_bytes(pcm))
    name = f"en_long_concat ({len(pcm) / 16_000:.0f} s)"
    cases.append((name, path, "audio/wav", "en", reference))
    return cases


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_whisper_server")
    parser.add_argument("--model", default="base", help="base, tiny.en or a model directory")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="runs per file and side (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "whisper_server.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper import WhisperModel

    from streams.asr_server.whisper_models import resolve_model_dir

    cache = Path(os.environ.get("STREAMS_CACHE_DIR") or ROOT / ".cache") / "models"
    model_dir = resolve_model_dir(args.model, cache)
    threads = os.cpu_count() or 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = args.out.parent
    flags = ["--model", str(model_dir), "--beam-size", str(args.beam_size), "--workers", "1"]
    rows: list[dict[str, Any]] = []
    with run_whisper_server(workdir / "whisper_server.log", *flags) as server:
        model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            local_files_only=True,
        )
        cases = _cases(workdir)
        warm = cases[0]
        _direct(model, warm[1], args.beam_size)
        stream_native(server.base_url, native_body(warm[1].read_bytes(), warm[2]))
        for name, path, mime, language, reference in cases:
            body = native_body(path.read_bytes(), mime)
            direct_runs, server_runs = [], []
            for _ in range(args.runs):
                direct_runs.append(_direct(model, path, args.beam_size))
                server_runs.append(stream_native(server.base_url, body))
            audio_s = decode_sync(path).duration_s
            direct_s = statistics.median(run["total_s"] for run in direct_runs)
            server_s = statistics.median(run["total_s"] for run in server_runs)
            rows.append(
                {
                    "file": name,
                    "audio_s": round(audio_s, 2),
                    "direct_s": round(direct_s, 3),
                    "server_s": round(server_s, 3),
                    "direct_rtf": round(direct_s / audio_s, 4),
                    "server_rtf": round(server_s / audio_s, 4),
                    "overhead_pct": round(100 * (server_s / direct_s - 1), 1),
                    "direct_first_segment_s": _median(direct_runs, "first_s"),
                    "server_first_delta_s": _median(server_runs, "first_s"),
                    "server_language": server_runs[-1]["language"],
                    "server_error": round(
                        error_rate(reference, server_runs[-1]["text"], language), 3
                    ),
                    "direct_error": round(
                        error_rate(reference, direct_runs[-1]["text"], language), 3
                    ),
                    "same_text": server_runs[-1]["text"] == direct_runs[-1]["text"],
                    "direct_runs_s": [round(run["total_s"], 3) for run in direct_runs],
                    "server_runs_s": [round(run["total_s"], 3) for run in server_runs],
                }
            )
    total_direct = sum(row["direct_s"] for row in rows)
    total_server = sum(row["server_s"] for row in rows)
    summary = {
        "model": str(model_dir),
        "beam_size": args.beam_size,
        "cpu_threads": threads,
        "runs": args.runs,
        "overall_overhead_pct": round(100 * (total_server / total_direct - 1), 1),
        "rows": rows,
    }
    _print_table(summary)
    args.out.write_text(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    print(f"\nwrote {args.out}")
    return 0


def _print_table(summary: dict[str, Any]) -> None:
    head = (
        f"{'file':<54} {'audio':>6} {'direct':>7} {'server':>7} {'RTF d/s':>13} "
        f"{'ovh%':>6} {'1st seg':>7} {'1st Δ':>6} {'err':>6} lang same"
    )
    print(head)
    print("-" * len(head))
    for row in summary["rows"]:
        first_d = row["direct_first_segment_s"] or float("nan")
        first_s = row["server_first_delta_s"] or float("nan")
        print(
            f"{row['file']:<54} {row['audio_s']:>6.1f} {row['direct_s']:>7.2f} "
            f"{row['server_s']:>7.2f} {row['direct_rtf']:>6.3f}/{row['server_rtf']:<6.3f} "
            f"{row['overhead_pct']:>6.1f} {first_d:>7.2f} {first_s:>6.2f} "
            f"{row['server_error']:>6.3f} {row['server_language']:<4} {row['same_text']}"
        )
    print(f"\noverall server overhead: {summary['overall_overhead_pct']} %")


if __name__ == "__main__":
    sys.exit(main())
