"""A corpus of two-party stereo calls built from the real speech in tests/data/speech.

The request-economy benchmark (bench_economy.py) needs calls whose silence, turn-taking and
hold look like a contact centre's, because that is what decides how many requests a call
costs and how many seconds are billed: a looped monologue (corpus.py) has neither turns nor
pauses. Every call here has the agent on the left channel and the customer on the right, and
comes with its ground truth (turns, backchannels, speech per channel, hold).

What is modelled, and from where:

- **Turn lengths**: most turns are short, some long. 80 % are 1-5 s (log-normal, median 2 s:
  turns at talk average about 2 s, Levinson 2016, *Trends Cogn. Sci.* 20:6), 14 % are 5-12 s
  and 6 % are 20-60 s (a customer telling the problem, an agent explaining the fix).
- **Between turns**: the floor changes after a short gap, median about 200 ms (Stivers et al.
  2009, *PNAS* 106:10587: offsets cluster around 0-200 ms in every language studied; log-normal
  here, median 0.2 s, clipped to 0.03-2 s); a fifth of changes overlap the previous turn by
  0.1-0.8 s (Heldner & Edlund 2010, *J. Phonetics* 38:555, find many speaker changes in overlap,
  most of them short); before 5 % of agent turns the agent looks something up for 2-5 s.
- **Inside turns**: turns longer than 5 s are phrases of 1.5-7 s with pauses of 0.3-1.5 s
  between them (log-normal, median 0.55 s), so some pauses are longer than the worker's 1 s
  silence threshold and some are not.
- **Backchannels** ("yeah", "mm-hm": about a fifth of Switchboard utterances, Jurafsky et al.
  1997, SWBD-DAMSL): a real word or two, 0.3-0.8 s, on the listening channel, in a third of the
  pauses of the other party's turns, 4 dB softer than that party's turns. They are not turns.
- **Hold**: the agent says a short sentence, 0.4-1 s later hold music (plucked notes, as
  tests/audio.py's ``hold_music``) plays on the agent channel only for the call's hold seconds; the
  customer's line carries only its noise meanwhile; the agent then speaks first again.
- **Line**: each channel has -60 dBFS white noise under everything (a line is never digitally
  silent); each phrase is scaled to its speaker's level (agent -20 dBFS, customer -24 dBFS
  RMS over its words, +-1.5 dB per phrase) with 8 ms fades at the cuts.

Speech material: phrases are slices of the shared recordings that begin and end at word
boundaries (runs of 10 ms frames 12 dB above the clip's own floor, split at pauses of 80 ms or
more), so every second of speech is a real recording. English calls draw on the English clips
(agent: JFK, LibriVox, Harvard; customer: the two LibriSpeech speakers, LibriVox, Harvard);
two calls have a German or Chinese customer (one language per channel).

Files are stereo WAV as call recorders write them, alternately 8 kHz mu-law (telephony) and
16 kHz PCM, built once into ``.cache/bench-calls-<hash>/`` (the hash covers this module and the
speech manifest, so a change rebuilds them). ``python -m tests.benchmarks.calls`` prints the
corpus statistics (docs/perf/corpus.md).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from streams.decode import SAMPLE_RATE, decode_sync
from tests.audio import AUDIO_DIR, asset, english_clips, hold_music, write_wav, write_wav_blocks

__all__ = [
    "CALLS",
    "NAMED_CALL",
    "Call",
    "CallSpec",
    "CallTruth",
    "Talk",
    "build_calls",
    "compose",
    "default_cache",
    "statistics",
    "statistics_markdown",
    "write_call",
]

ROOT = Path(__file__).resolve().parents[2]
NAMED_CALL = "six-minute-call"
"""The corpus member that stands for a typical call: 6 minutes, about 70 turns, 45 s on hold."""
AGENT, CUSTOMER = 0, 1
ROLES = ("agent", "customer")
Kind = Literal["turn", "backchannel"]

_NOISE_DB = -60.0
_LEVEL_DB = (-20.0, -24.0)
_FADE_S = 0.008
_FRAME = SAMPLE_RATE // 100  # 10 ms frames to find words in the clips
_POOLS = {
    "en": (("jfk", "librivox", "harvard"), ("wizard", "horizon", "librivox", "harvard")),
    "de": (("de",), ("de",)),
    "zh": (("zh",), ("zh",)),
}


@dataclass(frozen=True)
class CallSpec:
    """The recipe of one call: how long, with which seed, how much hold, in which format."""

    name: str
    seconds: float
    seed: int
    hold_s: float = 0.0
    hold_at: float = 0.5
    """Where the hold begins, as a share of the call."""
    languages: tuple[str, str] = ("en", "en")
    """Language of the agent's and of the customer's speech."""
    codec: Literal["pcm_mulaw", "pcm_s16le"] = "pcm_mulaw"
    """``pcm_mulaw``: 8 kHz mu-law stereo WAV (telephony); ``pcm_s16le``: 16 kHz PCM WAV."""

    @property
    def file_name(self) -> str:
        """The file's name: the call's name and its format."""
        return f"{self.name}-{'ulaw8k' if self.codec == 'pcm_mulaw' else 'pcm16k'}.wav"


CALLS: tuple[CallSpec, ...] = (
    # Seed 4 of the first 24 gives a typical draw: about 70 turns, three of them long.
    CallSpec(NAMED_CALL, 360, seed=4, hold_s=45, hold_at=0.45),
    CallSpec("call-02min", 120, seed=21, codec="pcm_s16le"),
    CallSpec("call-03min-hold", 180, seed=22, hold_s=20, hold_at=0.5),
    CallSpec("call-04min-de", 240, seed=23, languages=("en", "de"), codec="pcm_s16le"),
    CallSpec("call-05min-hold", 300, seed=24, hold_s=60, hold_at=0.4),
    CallSpec("call-07min", 420, seed=25, hold_s=30, hold_at=0.6, codec="pcm_s16le"),
    CallSpec("call-08min-zh", 480, seed=26, hold_s=90, languages=("en", "zh")),
    CallSpec("call-09min", 540, seed=27, codec="pcm_s16le"),
    CallSpec("call-10min-hold", 600, seed=28, hold_s=120, hold_at=0.35),
    CallSpec("call-11min", 660, seed=29, hold_s=45, hold_at=0.7, codec="pcm_s16le"),
    CallSpec("call-12min", 720, seed=30, hold_s=75, hold_at=0.55),
)
"""The corpus: the named 6-minute call and ten more of 2 to 12 minutes."""


@dataclass(frozen=True)
class Talk:
    """One stretch of talk placed on one channel: a turn or a backchannel."""

    channel: int
    kind: Kind
    start: int
    end: int
    """Samples ``[start, end)`` at 16 kHz on the call's timeline, pauses inside included."""
    words: tuple[tuple[int, int], ...]
    """Where the words are (sample ranges inside ``[start, end)``): the talk's speech."""
    phrases: tuple[tuple[int, int], ...]
    """The slices of recordings placed (words and the clip's own short pauses between them);
    outside them the channel carries only line noise."""

    @property
    def start_s(self) -> float:
        """Start on the call's timeline, in seconds."""
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        """End on the call's timeline, in seconds."""
        return self.end / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        """From the first word to the last, in seconds."""
        return (self.end - self.start) / SAMPLE_RATE

    @property
    def speech_s(self) -> float:
        """Seconds of words."""
        return sum(b - a for a, b in self.words) / SAMPLE_RATE


@dataclass(frozen=True)
class CallTruth:
    """What a generated call holds, as the generator placed it."""

    samples: int
    """Length of the call at 16 kHz."""
    talk: tuple[Talk, ...]
    """Turns and backchannels of both channels, by start."""
    hold: tuple[int, int] | None
    """Samples ``[start, end)`` of hold music on the agent channel, if the call has a hold."""
    languages: tuple[str, str]

    @property
    def duration_s(self) -> float:
        """Length of the call in seconds."""
        return self.samples / SAMPLE_RATE

    @property
    def turns(self) -> tuple[Talk, ...]:
        """The turns (backchannels left out), by start."""
        return tuple(t for t in self.talk if t.kind == "turn")

    @property
    def backchannels(self) -> tuple[Talk, ...]:
        """The backchannels, by start."""
        return tuple(t for t in self.talk if t.kind == "backchannel")

    @property
    def hold_s(self) -> float:
        """Seconds of hold music."""
        return (self.hold[1] - self.hold[0]) / SAMPLE_RATE if self.hold else 0.0

    def speech_s(self, channel: int) -> float:
        """Seconds of words on one channel (turns and backchannels)."""
        return sum(t.speech_s for t in self.talk if t.channel == channel)

    def offsets_s(self) -> list[float]:
        """Floor-transfer offsets: next turn's start minus previous turn's end, at each change
        of speaker (negative: overlap). Changes across the hold are left out."""
        turns = self.turns
        out = []
        for before, after in itertools.pairwise(turns):
            across_hold = self.hold is not None and before.end <= self.hold[0] < after.start
            if before.channel != after.channel and not across_hold:
                out.append((after.start - before.end) / SAMPLE_RATE)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (the cache's index)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallTruth:
        """The inverse of :meth:`to_json`."""
        talk = tuple(
            Talk(
                t["channel"],
                t["kind"],
                t["start"],
                t["end"],
                tuple(tuple(w) for w in t["words"]),
                tuple(tuple(p) for p in t["phrases"]),
            )
            for t in data["talk"]
        )
        hold = tuple(data["hold"]) if data["hold"] else None
        return cls(data["samples"], talk, hold, tuple(data["languages"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Call:
    """A generated call on disk with its ground truth."""

    spec: CallSpec
    path: Path
    truth: CallTruth


# --- speech material --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Clip:
    """A recording as float samples and where its words are."""

    name: str
    pcm: np.ndarray
    words: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _Slice:
    """Words ``[first, last]`` of a clip and the samples to cut around them."""

    clip: str
    start: int
    end: int
    words: tuple[tuple[int, int], ...]
    """Relative to ``start``."""

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


def _find_words(pcm: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Runs of 10 ms frames 12 dB above the clip's floor (and within 40 dB of its peak),
    joined across pauses shorter than 80 ms; runs shorter than 80 ms go."""
    frames = pcm[: len(pcm) // _FRAME * _FRAME].reshape(-1, _FRAME)
    level = 10 * np.log10(np.mean(frames**2, axis=1) / 32768**2 + 1e-10)
    voiced = level > max(np.percentile(level, 10) + 12, level.max() - 40)
    edges = np.diff(np.concatenate(([0], voiced.astype(np.int8), [0])))
    runs: list[list[int]] = []
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if runs and a - runs[-1][1] < 8:
            runs[-1][1] = int(b)
        else:
            runs.append([int(a), int(b)])
    return tuple((a * _FRAME, b * _FRAME) for a, b in runs if b - a >= 8)


@cache
def _clips() -> dict[str, _Clip]:
    raw = {name: pcm for name, (pcm, _) in english_clips().items()}
    raw["de"] = decode_sync(asset("de_picovoice_leopard_test_de.wav")).channels[0]
    raw["zh"] = decode_sync(asset("zh_funasr_asr_example_welcome.wav")).channels[0]
    out = {}
    for name, pcm in sorted(raw.items()):
        samples = pcm.astype(np.float64)
        out[name] = _Clip(name, samples, _find_words(samples))
    return out


@cache
def _slices(pool: tuple[str, ...]) -> tuple[_Slice, ...]:
    """Every run of consecutive words of the pool's clips, cut halfway into the pauses around
    it (at most 40 ms before the first word and 60 ms after the last)."""
    out = []
    for name in pool:
        clip = _clips()[name]
        words = clip.words
        for i in range(len(words)):
            before = (words[i - 1][1] + words[i][0]) // 2 if i else 0
            start = max(before, words[i][0] - int(0.04 * SAMPLE_RATE))
            for j in range(i, len(words)):
                last = j + 1 == len(words)
                after = len(clip.pcm) if last else (words[j][1] + words[j + 1][0]) // 2
                end = min(after, words[j][1] + int(0.06 * SAMPLE_RATE))
                inside = tuple((a - start, b - start) for a, b in words[i : j + 1])
                out.append(_Slice(name, start, end, inside))
    return tuple(out)


def _onset_slice(pool: tuple[str, ...], seconds: float, rng: np.random.Generator) -> _Slice:
    """A slice of ``seconds`` from a word's onset, for lengths no run of whole words has."""
    clips = _clips()
    starts = [(name, a) for name in pool for a, _ in clips[name].words]
    name, a = starts[int(rng.integers(len(starts)))]
    start = max(0, a - int(0.04 * SAMPLE_RATE))
    end = min(len(clips[name].pcm), start + int(seconds * SAMPLE_RATE))
    inside = tuple(
        (max(w0, start) - start, min(w1, end) - start)
        for w0, w1 in clips[name].words
        if w1 > start and w0 < end
    )
    return _Slice(name, start, end, inside)


def _pick(
    pool: tuple[str, ...], seconds: float, rng: np.random.Generator, *, slack: float = 0.2
) -> _Slice:
    """A run of whole words lasting ``seconds`` give or take ``slack`` (as a share)."""
    slices = _slices(pool)
    fitting = [s for s in slices if abs(s.seconds - seconds) <= slack * seconds]
    if fitting:
        return fitting[int(rng.integers(len(fitting)))]
    longer = [s for s in slices if s.seconds > seconds]
    if longer:
        return _onset_slice(pool, seconds, rng)
    return max(slices, key=lambda s: s.seconds)


# --- the conversation -------------------------------------------------------------------------


@dataclass
class _Track:
    """Phrases being placed on a call's two channels."""

    rng: np.random.Generator
    levels_db: tuple[float, float]
    placed: list[tuple[int, int, _Slice, float]] = field(default_factory=list)
    """(channel, start sample, slice, gain) of every phrase."""

    def phrase(self, channel: int, at: int, piece: _Slice, *, softer_db: float = 0.0) -> int:
        """Place ``piece`` at sample ``at``; returns where it ends."""
        clip = _clips()[piece.clip]
        base = piece.start
        words = np.concatenate([clip.pcm[base + a : base + b] for a, b in piece.words])
        rms_db = 10 * np.log10(np.mean(words**2) / 32768**2 + 1e-12)
        target = self.levels_db[channel] - softer_db + self.rng.normal(0, 1.5)
        self.placed.append((channel, at, piece, 10 ** ((target - rms_db) / 20)))
        return at + piece.end - piece.start


def _turn_seconds(rng: np.random.Generator) -> float:
    draw = rng.random()
    if draw < 0.80:
        return float(np.clip(rng.lognormal(math.log(2.0), 0.45), 1.0, 5.0))
    if draw < 0.94:
        return float(rng.uniform(5.0, 12.0))
    return float(rng.uniform(20.0, 60.0))


def _pause_s(rng: np.random.Generator) -> float:
    return float(np.clip(rng.lognormal(math.log(0.55), 0.45), 0.3, 1.5))


def _offset_s(rng: np.random.Generator, next_channel: int) -> float:
    """Start of the next turn relative to the end of this one (negative: overlap)."""
    if next_channel == AGENT and rng.random() < 0.05:
        return float(rng.uniform(2.0, 5.0))
    if rng.random() < 0.20:
        return -float(rng.uniform(0.1, 0.8))
    return float(np.clip(rng.lognormal(math.log(0.2), 0.55), 0.03, 2.0))


def _turn(
    track: _Track, channel: int, at: int, seconds: float, pools: tuple[tuple[str, ...], ...]
) -> tuple[Talk, list[tuple[int, int]]]:
    """One turn of about ``seconds`` from sample ``at``; also its inner pauses."""
    rng = track.rng
    pool = pools[channel]
    if seconds <= 5.0:
        pieces = [_pick(pool, seconds, rng)]
    else:
        pieces, total = [], 0.0
        while total < seconds - 1.0:
            want = min(float(rng.uniform(1.5, 7.0)), max(1.0, seconds - total))
            pieces.append(_pick(pool, want, rng))
            total += pieces[-1].seconds + 0.55
    now, words, phrases, pauses = at, [], [], []
    for i, piece in enumerate(pieces):
        if i:
            pause = int(_pause_s(rng) * SAMPLE_RATE)
            pauses.append((now, now + pause))
            now += pause
        end = track.phrase(channel, now, piece)
        words += [(now + a, now + b) for a, b in piece.words]
        phrases.append((now, end))
        now = end
    return Talk(channel, "turn", at, now, tuple(words), tuple(phrases)), pauses


def _backchannels(
    track: _Track, listener: int, pauses: list[tuple[int, int]], until: int, pool: tuple[str, ...]
) -> list[Talk]:
    """Backchannels of ``listener`` in a third of the speaker's pauses, ending before ``until``."""
    out = []
    for a, _ in pauses:
        if track.rng.random() >= 1 / 3:
            continue
        at = a + int(track.rng.uniform(0.05, 0.3) * SAMPLE_RATE)
        piece = _pick(pool, float(track.rng.uniform(0.3, 0.8)), track.rng, slack=0.35)
        if at + piece.end - piece.start >= until:
            continue
        end = track.phrase(listener, at, piece, softer_db=4.0)
        words = tuple((at + x, at + y) for x, y in piece.words)
        out.append(Talk(listener, "backchannel", at, end, words, ((at, end),)))
    return out


def _script(spec: CallSpec, rng: np.random.Generator) -> tuple[_Track, list[Talk], Any, int]:
    pools = (_POOLS[spec.languages[AGENT]][AGENT], _POOLS[spec.languages[CUSTOMER]][CUSTOMER])
    track = _Track(rng, _LEVEL_DB)
    total = int(spec.seconds * SAMPLE_RATE)
    tail = int(rng.uniform(0.5, 1.5) * SAMPLE_RATE)
    hold_from = int(spec.hold_at * total) if spec.hold_s else None
    hold = None
    talk: list[Talk] = []
    t, channel = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE), AGENT
    while True:
        left = (total - tail - t) / SAMPLE_RATE
        if left < 1.0:
            break
        if hold_from is not None and hold is None and t >= hold_from and channel == AGENT:
            # "Let me check that for you, please hold", the music, then the agent again.
            turn, _ = _turn(track, AGENT, t, float(rng.uniform(2.0, 4.0)), pools)
            talk.append(turn)
            start = turn.end + int(rng.uniform(0.4, 1.0) * SAMPLE_RATE)
            hold = (start, start + int(spec.hold_s * SAMPLE_RATE))
            t = hold[1] + int(rng.uniform(0.3, 0.8) * SAMPLE_RATE)
            continue
        turn, pauses = _turn(track, channel, t, min(_turn_seconds(rng), left), pools)
        talk.append(turn)
        listener = 1 - channel
        offset = _offset_s(rng, listener)
        until = turn.end - int(0.9 * SAMPLE_RATE)
        talk += _backchannels(track, listener, pauses, until, pools[listener])
        # An overlap starts past the middle of the turn it overlaps, and never inside the
        # next speaker's own last talk.
        own_last = max((x.end for x in talk if x.channel == listener), default=0)
        t = max(
            turn.end + int(offset * SAMPLE_RATE),
            turn.start + (turn.end - turn.start) // 2,
            own_last + int(0.15 * SAMPLE_RATE),
        )
        channel = listener
    end = max(max(x.end for x in talk), hold[1] if hold else 0, total - tail) + tail
    talk.sort(key=lambda x: (x.start, x.channel))
    return track, talk, hold, end


def compose(
    spec: CallSpec, *, hold_sound: Callable[[int, np.random.Generator], np.ndarray] = hold_music
) -> tuple[np.ndarray, CallTruth]:
    """The call as int16 ``(2, samples)`` at 16 kHz, and its ground truth; same spec, same call.

    ``hold_sound`` makes the hold (float samples at 16 kHz): the plucked notes of the corpus by
    default, or a real-like sound of tests/hold_sounds.py (tests/benchmarks/bench_music.py)."""
    rng = np.random.default_rng(spec.seed)
    track, talk, hold, samples = _script(spec, rng)
    noise = np.random.default_rng(spec.seed + 1_000_000)
    call = noise.standard_normal((2, samples)) * 32768 * 10 ** (_NOISE_DB / 20)
    fade = int(_FADE_S * SAMPLE_RATE)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
    clips = _clips()
    for channel, at, piece, gain in track.placed:
        pcm = clips[piece.clip].pcm[piece.start : piece.end] * gain
        pcm[:fade] *= ramp[: len(pcm)]
        pcm[-fade:] *= ramp[::-1][-len(pcm) :]
        call[channel, at : at + len(pcm)] += pcm
    if hold:
        call[AGENT, hold[0] : hold[1]] += hold_sound(hold[1] - hold[0], rng)
    truth = CallTruth(samples, tuple(talk), hold, spec.languages)
    return np.clip(np.rint(call), -32768, 32767).astype(np.int16), truth


def write_call(spec: CallSpec, folder: Path) -> Call:
    """Compose ``spec`` and write it into ``folder`` in its format."""
    pcm, truth = compose(spec)
    path = folder / spec.file_name
    if spec.codec == "pcm_mulaw":
        step = 10 * SAMPLE_RATE
        blocks = (pcm[:, i : i + step] for i in range(0, pcm.shape[1], step))
        write_wav_blocks(path, blocks)
    else:
        write_wav(path, pcm)
    return Call(spec, path, truth)


def default_cache() -> Path:
    """Where benchmark audio is built: the checkout's ``.cache``."""
    return ROOT / ".cache"


def _recipe_hash(specs: tuple[CallSpec, ...]) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update((AUDIO_DIR / "manifest.jsonl").read_bytes())
    digest.update(repr(specs).encode())
    return digest.hexdigest()[:12]


def build_calls(cache_dir: Path | None = None, specs: tuple[CallSpec, ...] = CALLS) -> list[Call]:
    """The corpus on disk, built on first use (about 20 s) and reused while its recipe holds.

    Built in a scratch folder that is renamed into place, so a run that is interrupted, or two
    that build at once, never leave half a corpus behind; corpora of earlier recipes go.
    """
    cache_dir = (cache_dir or default_cache()).resolve()
    folder = cache_dir / f"bench-calls-{_recipe_hash(specs)}"
    index = folder / "index.json"
    if not index.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".bench-calls-", dir=cache_dir))
        entries = []
        for spec in specs:
            call = write_call(spec, scratch)
            entries.append({"spec": asdict(spec), "truth": call.truth.to_json()})
        (scratch / "index.json").write_bytes(orjson.dumps(entries))
        try:
            os.rename(scratch, folder)
        except OSError:  # another run built it first
            shutil.rmtree(scratch, ignore_errors=True)
        for stale in cache_dir.glob("bench-calls-*"):  # corpora of earlier recipes
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
    entries = orjson.loads(index.read_bytes())
    calls = []
    for entry in entries:
        raw = entry["spec"]
        spec = CallSpec(**{**raw, "languages": tuple(raw["languages"])})
        calls.append(Call(spec, folder / spec.file_name, CallTruth.from_json(entry["truth"])))
    return calls


# --- statistics -------------------------------------------------------------------------------


def _q(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _figures(truths: list[CallTruth]) -> dict[str, Any]:
    turns = [t.duration_s for truth in truths for t in truth.turns]
    offsets = [o for truth in truths for o in truth.offsets_s()]
    gaps = [o for o in offsets if o >= 0]
    backchannels = [t.duration_s for truth in truths for t in truth.backchannels]
    return {
        "calls": len(truths),
        "minutes": sum(t.duration_s for t in truths) / 60,
        "turns": len(turns),
        "turn_median_s": _q(turns, 50),
        "turn_p90_s": _q(turns, 90),
        "turns_over_20s": sum(d > 20 for d in turns),
        "gap_median_s": _q(gaps, 50),
        "offset_median_s": _q(offsets, 50),
        "overlaps": sum(o < 0 for o in offsets),
        "speaker_changes": len(offsets),
        "backchannels": len(backchannels),
        "backchannel_median_s": _q(backchannels, 50),
        "speech_s": [sum(t.speech_s(ch) for t in truths) for ch in (AGENT, CUSTOMER)],
        "hold_s": sum(t.hold_s for t in truths),
    }


def statistics(calls: list[Call]) -> dict[str, Any]:
    """The corpus's figures, per call and over all calls."""
    return {
        "calls": {c.spec.name: _figures([c.truth]) for c in calls},
        "total": _figures([c.truth for c in calls]),
    }


def statistics_markdown(calls: list[Call]) -> str:
    """The figures as the Markdown table of docs/perf/corpus.md."""
    stats = statistics(calls)
    head = ["call", "format", "languages", "minutes", "turns", "turn s median / p90", "> 20 s"]
    head += ["gap s median", "overlaps", "backchannels", "speech s agent / customer", "hold s"]
    rows = []
    for call in calls:
        rows.append(_row(call.spec.name, call.spec, stats["calls"][call.spec.name]))
    rows.append(_row("**all**", None, stats["total"]))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    t = stats["total"]
    lines += [
        "",
        f"Floor-transfer offset median {t['offset_median_s'] * 1000:.0f} ms over "
        f"{t['speaker_changes']} speaker changes ({t['overlaps']} in overlap); backchannel "
        f"median {t['backchannel_median_s']:.2f} s.",
    ]
    return "\n".join(lines)


def _row(name: str, spec: CallSpec | None, f: dict[str, Any]) -> list[str]:
    fmt = "-" if spec is None else ("8 kHz mu-law" if spec.codec == "pcm_mulaw" else "16 kHz PCM")
    langs = "-" if spec is None else " / ".join(spec.languages)
    return [
        name,
        fmt,
        langs,
        f"{f['minutes']:.1f}",
        str(f["turns"]),
        f"{f['turn_median_s']:.1f} / {f['turn_p90_s']:.1f}",
        str(f["turns_over_20s"]),
        f"{f['gap_median_s']:.2f}",
        str(f["overlaps"]),
        str(f["backchannels"]),
        f"{f['speech_s'][0]:.0f} / {f['speech_s'][1]:.0f}",
        f"{f['hold_s']:.0f}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the corpus and print its statistics."""
    del argv
    calls = build_calls()
    print(f"corpus: {calls[0].path.parent}\n")
    print(statistics_markdown(calls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
