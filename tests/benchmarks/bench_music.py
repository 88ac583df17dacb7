"""Hold music and tones left out of the requests: what is still sent, what speech is lost.

The named 6-minute call of the corpus (calls.py: real speech on two channels, 45 s on hold on
the agent's channel, the agent speaking 0.4-1 s before the hold and 0.3-0.8 s after it) is
composed once per hold sound of tests/hold_sounds.py (and the corpus's plucked notes), written
as 16 kHz PCM WAV and as 8 kHz mu-law WAV, decoded as the worker decodes, and planned with the
worker's VAD (streams/vad.py) with and without the music detector (streams/music.py), under
the worker's default split plan. Per run:

- **music sent**: seconds of the hold inside the agent channel's requests, over the hold's
  length (target: at most 10 %);
- **words lost**: seconds of the generator's words (``Talk.words``, both channels) that no
  request of their channel covers, a CPU-independent stand-in for words missing from the
  transcript; "near hold" counts only words within 10 s of the hold (target 0 more than
  without the detector);
- **billed**: the seconds the API would bill (each request rounded up), without and with;
- **detector CPU**: seconds of CPU the music detector took, per hour of audio (one channel);
- **reported**: what the detector reports on the agent's channel: seconds of music and
  call-progress tones (the call's hold) and of DTMF (streams/tones.py; not hold).

Then the corpus's named call itself (plucked-note hold, 8 kHz mu-law) goes through
bench_economy's layouts and plans without and with the detector: requests, sent and billed.

``python -m tests.benchmarks.bench_music`` prints the table; ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import orjson

from streams.api_limits import billed_seconds
from streams.chunking import Request, SpeechMap, plan_requests
from streams.config import Settings
from streams.decode import SAMPLE_RATE, decode_sync
from streams.music import MusicDetector, MusicMap, without_music
from streams.runtime import chunk_policy
from streams.vad import FRAME_SAMPLES, SpeechDetector
from tests.audio import hold_music, write_wav, write_wav_blocks
from tests.benchmarks.bench_economy import PLANS, Layout, figures, plan
from tests.benchmarks.calls import (
    CALLS,
    NAMED_CALL,
    ROLES,
    CallSpec,
    CallTruth,
    build_calls,
    compose,
)
from tests.hold_sounds import SOUNDS, lounge_music

__all__ = ["MusicFigures", "economy", "main", "measure"]

NEAR_HOLD_S = 10.0
"""Words this close to the hold count as "next to music"."""
Sound = Callable[[int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class MusicFigures:
    """One call with one hold sound at one sample rate."""

    sound: str
    rate: int
    hold_s: float
    music_sent_off_s: float
    music_sent_on_s: float
    words_s: float
    words_lost_off_s: float
    words_lost_on_s: float
    near_hold_lost_off_s: float
    near_hold_lost_on_s: float
    requests_off: int
    requests_on: int
    billed_off_s: int
    billed_on_s: int
    detector_cpu_s_per_h: float
    hold_reported_s: float = 0.0
    dtmf_reported_s: float = 0.0


def _maps(
    path: Path, layout: Layout = "split", found: list[MusicMap] | None = None
) -> tuple[list[SpeechMap], list[SpeechMap], float]:
    """Speech maps without and with the music filter, and the detector's CPU seconds; the
    music maps go into ``found`` if given."""
    audio = decode_sync(path, layout=layout)
    plain, filtered, cpu = [], [], 0.0
    for pcm in audio.channels:
        vad, music = SpeechDetector(Settings().vad_aggressiveness), MusicDetector()
        for start in range(0, len(pcm), SAMPLE_RATE):
            block = pcm[start : start + SAMPLE_RATE]
            vad.feed(block)
            t = time.process_time()
            music.feed(block)
            cpu += time.process_time() - t
        t = time.process_time()
        music_map = music.finish(frame_samples=FRAME_SAMPLES)
        cpu += time.process_time() - t
        speech_map = vad.finish()
        plain.append(speech_map)
        filtered.append(without_music(speech_map, music_map))
        if found is not None:
            found.append(music_map)
    return plain, filtered, cpu


def _plan(maps: list[SpeechMap]) -> list[Request]:
    settings = Settings()
    return plan_requests(
        maps, ROLES, chunk_policy(settings), plan=settings.split_plan, sample_rate=SAMPLE_RATE
    )


def _covered(requests: list[Request], channel: int, samples: int) -> np.ndarray:
    sent = np.zeros(samples, dtype=bool)
    for request in requests:
        if request.channel == channel:
            for a, b in request.stretches:
                sent[a:b] = True
    return sent


def _lost(truth: CallTruth, requests: list[Request], near: tuple[int, int] | None) -> float:
    """Seconds of words (within ``near`` samples, if given) that no request covers."""
    lost = 0
    for channel in (0, 1):
        sent = _covered(requests, channel, truth.samples)
        for talk in truth.talk:
            if talk.channel != channel:
                continue
            for a, b in talk.words:
                if near is not None:
                    a, b = max(a, near[0]), min(b, near[1])
                if b > a:
                    lost += int(np.count_nonzero(~sent[a:b]))
    return lost / SAMPLE_RATE


def measure(spec: CallSpec, name: str, sound: Sound, rate: int, folder: Path) -> MusicFigures:
    """Compose, write at ``rate``, decode and plan one call with and without the detector."""
    pcm, truth = compose(spec, hold_sound=sound)
    path = folder / f"{spec.name}-{name.replace(' ', '-')}-{rate}.wav"
    if rate == 8_000:
        step = 10 * SAMPLE_RATE
        write_wav_blocks(path, (pcm[:, i : i + step] for i in range(0, pcm.shape[1], step)))
    else:
        write_wav(path, pcm)
    music_maps: list[MusicMap] = []
    plain, filtered, cpu = _maps(path, found=music_maps)
    off, on = _plan(plain), _plan(filtered)
    assert truth.hold is not None
    hold = truth.hold
    margin = int(NEAR_HOLD_S * SAMPLE_RATE)
    near = (hold[0] - margin, hold[1] + margin)

    def music_sent(requests: list[Request]) -> float:
        return float(np.count_nonzero(_covered(requests, 0, truth.samples)[hold[0] : hold[1]]))

    return MusicFigures(
        sound=name,
        rate=rate,
        hold_s=truth.hold_s,
        music_sent_off_s=music_sent(off) / SAMPLE_RATE,
        music_sent_on_s=music_sent(on) / SAMPLE_RATE,
        words_s=truth.speech_s(0) + truth.speech_s(1),
        words_lost_off_s=_lost(truth, off, None),
        words_lost_on_s=_lost(truth, on, None),
        near_hold_lost_off_s=_lost(truth, off, near),
        near_hold_lost_on_s=_lost(truth, on, near),
        requests_off=len(off),
        requests_on=len(on),
        billed_off_s=sum(billed_seconds(r.duration_s) for r in off),
        billed_on_s=sum(billed_seconds(r.duration_s) for r in on),
        detector_cpu_s_per_h=cpu / (2 * truth.duration_s) * 3600,
        hold_reported_s=sum(b - a for a, b in music_maps[0].stretches),
        dtmf_reported_s=sum(t.end_s - t.start_s for t in music_maps[0].tones if t.kind == "dtmf"),
    )


def markdown(rows: list[MusicFigures]) -> str:
    """The table of docs/audio.md."""
    lines = [
        "| hold sound | rate | music sent off → on | words lost off → on (near hold) "
        "| requests | billed off → on | detector CPU s / h | reported hold, DTMF |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.sound} | {r.rate // 1000} kHz "
            f"| {r.music_sent_off_s:.1f} → {r.music_sent_on_s:.1f} s "
            f"({r.music_sent_on_s / r.hold_s:.1%}) "
            f"| {r.words_lost_off_s:.2f} → {r.words_lost_on_s:.2f} s "
            f"({r.near_hold_lost_off_s:.2f} → {r.near_hold_lost_on_s:.2f}) "
            f"| {r.requests_off} → {r.requests_on} "
            f"| {r.billed_off_s} → {r.billed_on_s} s | {r.detector_cpu_s_per_h:.1f} "
            f"| {r.hold_reported_s:.1f} s, {r.dtmf_reported_s:.1f} s |"
        )
    return "\n".join(lines)


def run(sounds: list[str] | None = None) -> list[MusicFigures]:
    """Every hold sound at 16 kHz and 8 kHz on the named call."""
    spec = next(c for c in CALLS if c.name == NAMED_CALL)
    catalogue: dict[str, Sound] = {"plucked notes (corpus)": hold_music, **SOUNDS}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-music-") as folder:
        for name, sound in catalogue.items():
            if sounds and name not in sounds:
                continue
            for rate in (16_000, 8_000):
                rows.append(measure(spec, name, sound, rate, Path(folder)))
                print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def corpus(sound_name: str = "lounge music", rate: int = 8_000) -> list[MusicFigures]:
    """``sound_name`` as the hold of every held call of the corpus (2-12 min, English, German
    and Mandarin speech), at ``rate``: words lost and music sent across more than one call."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-music-") as folder:
        for spec in (c for c in CALLS if c.hold_s):
            row = measure(spec, sound_name, SOUNDS[sound_name], rate, Path(folder))
            rows.append(replace(row, sound=f"{spec.name}: {sound_name}"))
    return rows


def speech_over_music(levels_db: tuple[float, ...] = (-20, -12, -6, 0)) -> list[dict[str, float]]:
    """Music *under* speech (an announcement over the hold music, a radio in the room): the
    two-minute corpus call's words with lounge music mixed in at each level (dB relative to
    the music's -20 dBFS peak, the speech's own peak level); seconds of words marked music."""
    spec = next(c for c in CALLS if c.name == "call-02min")
    pcm, truth = compose(spec)
    rows = []
    for db in levels_db:
        flagged = music_s = 0
        for channel in (0, 1):
            words = np.zeros(truth.samples, dtype=bool)
            for talk in (t for t in truth.talk if t.channel == channel):
                for a, b in talk.words:
                    words[a:b] = True
            music = lounge_music(truth.samples, np.random.default_rng(5 + channel))
            mixed = np.clip(pcm[channel] + music * 10 ** (db / 20), -32768, 32767)
            detector = MusicDetector()
            detector.feed(mixed.astype(np.int16))
            found = detector.finish(frame_samples=FRAME_SAMPLES).music
            marked = np.repeat(found, FRAME_SAMPLES)[: truth.samples]
            flagged += int(np.count_nonzero(marked & words))
            music_s += int(np.count_nonzero(marked))
        rows.append(
            {
                "music_db": db,
                "words_s": truth.speech_s(0) + truth.speech_s(1),
                "words_marked_music_s": flagged / SAMPLE_RATE,
                "marked_music_s": music_s / SAMPLE_RATE,
            }
        )
    return rows


def economy() -> list[dict[str, object]]:
    """bench_economy's figures of the corpus's named call (plucked-note hold, 8 kHz mu-law)
    under every layout and plan, without and with the detector."""
    call = next(c for c in build_calls() if c.spec.name == NAMED_CALL)
    rows: list[dict[str, object]] = []
    for layout in ("split", "mix"):
        plain, filtered, _ = _maps(call.path, layout)
        for which in (p for lay, p in PLANS if lay == layout):
            off = figures(call, layout, which, plan(plain, layout, which))
            on = figures(call, layout, which, plan(filtered, layout, which))
            rows.append(
                {
                    "layout": layout,
                    "plan": which,
                    "requests": (off.requests, on.requests),
                    "sent_s": (round(off.sent_s, 1), round(on.sent_s, 1)),
                    "billed_s": (off.billed_s, on.billed_s),
                }
            )
    return rows


def economy_markdown(rows: list[dict[str, object]]) -> str:
    """The before/after table of docs/perf/economy.md."""
    lines = [
        "| layout, plan | requests off → on | sent off → on | billed off → on |",
        "|---|---|---|---|",
    ]
    for r in rows:
        req, sent, billed = r["requests"], r["sent_s"], r["billed_s"]
        assert isinstance(req, tuple)
        assert isinstance(sent, tuple)
        assert isinstance(billed, tuple)
        lines.append(
            f"| {r['layout']} `{r['plan']}` | {req[0]} → {req[1]} "
            f"| {sent[0]} → {sent[1]} s | {billed[0]} → {billed[1]} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the table (and write JSON with ``--json PATH``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--sound", action="append", help="only these sounds (repeatable)")
    args = parser.parse_args(argv)
    rows = run(args.sound)
    print(markdown(rows))
    held = corpus()
    print("\nEvery held call of the corpus, lounge music, 8 kHz:\n")
    print(markdown(held))
    under = speech_over_music()
    print("\nMusic under the speech of the 2-minute call (both channels):\n")
    for row in under:
        print(
            f"music at {row['music_db']:+.0f} dB: {row['words_marked_music_s']:.2f} s of "
            f"{row['words_s']:.1f} s of words marked music ({row['marked_music_s']:.1f} s marked)"
        )
    bills = economy()
    print("\nThe corpus's named call (bench_economy's method):\n")
    print(economy_markdown(bills))
    words = rows[0].words_s if rows else 0.0
    print(f"\nwords of the call: {words:.1f} s; hold: {rows[0].hold_s if rows else 0:.1f} s")
    if args.json:
        report = {
            "sounds": [asdict(r) for r in rows],
            "corpus": [asdict(r) for r in held],
            "under": under,
            "economy": bills,
        }
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
