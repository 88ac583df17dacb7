"""Music and tones of one channel (hold music, ringback, dial and busy tones): not speech.

WebRTC's VAD (streams/vad.py) calls hold music speech, so without this stage a call's hold is
sent and billed. :class:`MusicDetector` is fed the same blocks as the VAD and marks the
stretches where the sound is *tonal and stable*: the spectrum averaged over about a second
still has sharp peaks. Music holds its pitches (a chord, a bass note, a sustained melody note;
a tone holds one or two frequencies for its whole cadence), while a voice's pitch and formants
move from syllable to syllable, so the harmonics of speech smear out over a second even though
each 60 ms of a vowel is as peaky as a note. Three numbers per window of 0.96 s decide:

- *ripple*: how far the averaged spectrum rises and falls around its own smooth envelope (dB,
  150-3400 Hz, so that 8 kHz telephone audio and 16 kHz audio look alike);
- *kept*: that ripple over the mean ripple of the window's 60 ms pieces: near 1 when the
  pieces' peaks sit at the same frequencies (music), low when they wander (speech);
- *tonal*: the share of the pieces' energy in their few strongest bins: one or two pure
  sinusoids (call-progress tones) have no voice's spread of harmonics.

A window is music when ripple and kept are both high, or when it is tonal; music must last
:data:`MIN_MUSIC_S` (a held "mmm" or a hummed note is not hold music), and each music stretch
gives back :data:`SPEECH_MARGIN_S` at both ends, because the window that sees the music also
sees the first word after it: words next to music are never left out, at the price of a second
or two of music sent per hold.

Tones in bursts shorter than that (DTMF digits of 40-100 ms, a ringback's 0.4-2 s) are caught
piece by piece from the same spectra by streams/tones.py, and flagged with the music.

The margins cost talk time too: the VAD calls the music in them speech, so the agent's "please
hold" ran on into the music, and the music's tail into the agent's next words (0.4-0.8 s of
talk per hold edge in the analytics). :func:`without_music` therefore takes out the speech run
touching a music stretch when it is the music's own edge: it fits in the margin, a pause parts
it from what lies beyond, and the strongest peak of most of its 60 ms pieces is one of the
music's beside it (or a pure peak held from piece to piece: a new note).

numpy's FFT does all of it (scipy is not a dependency; no model): 5-7 s of CPU per hour of a
channel, and four numbers kept per 0.48 s plus five per 60 ms piece. Measured in
tests/benchmarks/bench_music.py and docs/audio.md (words lost next to music and tones: none;
music sent: at most 7 % of a hold; tones: at most 1.3 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from streams.chunking import SpeechMap
from streams.tones import NARROW, ToneStretch, ToneTracker

__all__ = [
    "MIN_MUSIC_S",
    "SPEECH_MARGIN_S",
    "MusicDetector",
    "MusicMap",
    "hold_stretches",
    "without_music",
]

_RATE = 16_000
_PIECE = 960
"""60 ms: two VAD frames; 15.6 Hz per bin, enough to resolve a voice's harmonics."""
_FFT = 1024
_LO, _HI = int(150 / 15.625), int(3400 / 15.625)
_SMOOTH = 9
"""Bins (±70 Hz) of the moving average that is the spectrum's envelope."""
_PEAKS = 5
"""The ripple is the mean height of the spectrum's five highest bins above its envelope."""
_TOP = 6
"""Bins that hold a tone's energy in a piece: two sinusoids (DTMF, 440+480 Hz) of three each."""
_SEGMENT = 8
"""Pieces per segment (0.48 s); a window is two segments (0.96 s), one segment apart."""
MIN_MUSIC_S = 2.0
"""Shortest stretch taken as music."""
SPEECH_MARGIN_S = 0.75
"""Music given back to the speech side at each end of a music stretch."""
_RIPPLE_DB = 14.0
_KEPT = 0.6
_CONCENTRATED = 0.97
"""Share of a piece's energy in its :data:`_TOP` bins above which it is a tone, not a voice."""
_EDGE_MUSIC_S = 1.0
"""Flagged music at least this long has its margins checked by :func:`without_music`."""
_MARGIN_SLACK_S = 0.45
"""A run this much longer than the margin is more than the music's edge (speech into music)."""
_PAUSE_FRAMES = 3
"""Non-speech frames that must part a margin's run from the speech beyond it."""
_REFERENCE_S = 1.0
"""Music beside the margin whose peaks the margin's pieces are matched against."""
_AUDIBLE_DB = 20.0
_SAME_MUSIC = 0.6
"""Share of a margin run's audible pieces whose strongest peak is one of the music's (±1 bin)
above which the run is the music's and not a voice."""
_LOUD_DB = 12.0
_FAR_END = 0.5
"""... and at least this share of the run's far third (where a word beside it would be)."""
_SCALE = _FFT * _PIECE / 2 * 32768.0**2
"""Band power of a full-scale piece: levels are dB below it."""
_QUIET_DB = -55.0
"""Windows quieter than this (dBFS) are left to the VAD: too quiet to be paid hold music."""


@dataclass(frozen=True)
class MusicMap:
    """Where one channel has music or tones: a flag per VAD frame, and the stretches."""

    frame_samples: int
    music: np.ndarray
    """bool per VAD frame (speech-side margins already given back)."""
    stretches: tuple[tuple[float, float], ...]
    """Seconds ``[start, end)`` of the channel's music and call-progress tones (the call's
    hold), margins given back; DTMF is not hold."""
    tones: tuple[ToneStretch, ...] = ()
    """The channel's DTMF digits and call-progress tones (streams/tones.py), flagged in
    :attr:`music` too."""
    piece_level: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    """Level (dB below full scale, band only) of each 60 ms piece of the analysis."""
    piece_share: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    """Share of each piece's energy in its two strongest peaks (streams/tones.py)."""
    piece_peak: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int16))
    """Bin of each piece's strongest peak: what :func:`without_music` matches a margin
    against the music beside it with."""


class MusicDetector:
    """Music flags of one 16 kHz mono channel, fed in blocks of any length.

    Usage::

        detector = MusicDetector()
        for block in blocks:
            detector.feed(block)
        music_map = detector.finish(frame_samples=480)
    """

    def __init__(self) -> None:
        self._rest = np.empty(0, dtype=np.int16)
        self._window = np.hanning(_PIECE).astype(np.float32)
        self._power: list[np.ndarray] = []  # per piece, band only, for the open segment
        self._last: np.ndarray | None = None  # summed band power of the last segment
        self._averaged: list[float] = []  # ripple of each window's averaged spectrum
        self._ripple: list[float] = []  # energy-weighted mean piece ripple per segment
        self._energy: list[float] = []  # summed band power per segment
        self._tonal: list[float] = []  # energy-weighted share of each piece in its top bins
        self._samples = 0
        self._tones = ToneTracker(
            bin_hz=_RATE / _FFT, lo_bin=_LO, piece=_PIECE, rate=_RATE, scale=_SCALE
        )

    def feed(self, pcm: np.ndarray) -> None:
        """Analyse the whole pieces in ``pcm`` (int16), keeping a partial one for later."""
        self._samples += len(pcm)
        data = np.concatenate((self._rest, pcm)) if len(self._rest) else pcm
        whole = len(data) // _PIECE * _PIECE
        self._rest = data[whole:].copy()
        if whole:
            pieces = data[:whole].reshape(-1, _PIECE).astype(np.float32) * self._window
            power = np.abs(np.fft.rfft(pieces, _FFT, axis=1)[:, _LO:_HI]) ** 2
            self._tones.add(power)
            self._power.extend(power)
            while len(self._power) >= _SEGMENT:
                self._close(np.asarray(self._power[:_SEGMENT]))
                del self._power[:_SEGMENT]

    def finish(self, *, frame_samples: int) -> MusicMap:
        """The channel's music, as flags per VAD frame of ``frame_samples``."""
        frames = -(-self._samples // frame_samples)
        flags = np.zeros(frames, dtype=bool)
        seg_s = _SEGMENT * _PIECE / _RATE
        music = self.window_music()
        stretches: list[tuple[float, float]] = []
        for a, b in _runs(music):
            # Window i spans segments i and i+1: its music is theirs.
            start, end = a * seg_s, (b + 1) * seg_s
            if end - start < MIN_MUSIC_S:
                continue
            start, end = start + SPEECH_MARGIN_S, min(end, self._samples / _RATE) - SPEECH_MARGIN_S
            if end <= start:
                continue
            stretches.append((start, end))
            lo = round(start * _RATE / frame_samples)
            hi = round(end * _RATE / frame_samples)
            flags[lo:hi] = True
        tone_flags, tones = self._tones.finish(samples=self._samples, frame_samples=frame_samples)
        flags |= tone_flags
        held = [(t.start_s, t.end_s) for t in tones if t.kind != "dtmf"]
        level, share = self._tones.features()[:2]
        return MusicMap(
            frame_samples,
            flags,
            tuple(_union([*stretches, *held])),
            tuple(tones),
            level.astype(np.float32),
            share.astype(np.float32),
            self._tones.peaks(),
        )

    def window_music(self) -> np.ndarray:
        """Whether each window (segments i and i+1) sounds like music: one bool per window."""
        ripple, kept, tonal, level = self.features()
        musical = (ripple >= _RIPPLE_DB) & (kept >= _KEPT)
        return (musical | (tonal >= _CONCENTRATED)) & (level >= _QUIET_DB)

    def features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per window: ripple (dB) of the averaged spectrum, the share of the pieces' ripple
        it kept, the pieces' energy share in their top bins, and the level (dBFS, band only)."""
        if not self._averaged:
            empty = np.empty(0)
            return empty, empty, empty, empty
        ripple = np.asarray(self._averaged)
        energy = np.asarray(self._energy)
        pieces = np.asarray(self._ripple) * energy
        pair = energy[:-1] + energy[1:]
        kept = ripple / np.maximum((pieces[:-1] + pieces[1:]) / np.maximum(pair, 1e-9), 1e-3)
        tonal = np.asarray(self._tonal) * energy
        tonal = (tonal[:-1] + tonal[1:]) / np.maximum(pair, 1e-9)
        level = 10 * np.log10(pair / (2 * _SEGMENT) / _SCALE + 1e-12)
        return ripple, kept, tonal, level

    def _close(self, power: np.ndarray) -> None:
        energy = power.sum(axis=1)
        summed = power.sum(axis=0)
        if self._last is not None:
            # Only the window's ripple is kept, not the spectra: memory stays flat however
            # long the call.
            self._averaged.append(float(_ripple((self._last + summed)[np.newaxis])[0]))
        self._last = summed
        self._energy.append(float(energy.sum()))
        weights = energy / max(float(energy.sum()), 1e-9)
        self._ripple.append(float(np.dot(_ripple(power), weights)))
        top = np.sort(power, axis=1)[:, -_TOP:].sum(axis=1) / np.maximum(energy, 1e-9)
        self._tonal.append(float(np.dot(top, weights)))


def without_music(speech_map: SpeechMap, music_map: MusicMap) -> SpeechMap:
    """``speech_map`` with the frames of music no longer speech."""
    music = music_map.music[: speech_map.frames]
    if not music.any():
        return speech_map
    speech = speech_map.speech.copy()
    speech[: len(music)] &= ~music
    frame_s = music_map.frame_samples / _RATE
    for lo, hi in _runs(music):
        if (hi - lo) * frame_s >= _EDGE_MUSIC_S:
            _trim_margin(speech, music_map, lo, -1)
            _trim_margin(speech, music_map, hi - 1, +1)
    return replace(speech_map, speech=speech)


def hold_stretches(speech_map: SpeechMap, music_map: MusicMap) -> list[tuple[float, float]]:
    """The channel's hold as the analytics report it: each music stretch widened, piece by
    piece, over the margins it gave back, as far as they sound like its music (no quieter than
    :data:`_AUDIBLE_DB` below its median) and hold no speech (``speech_map`` is the channel's
    map after :func:`without_music`). The margins keep speech from being cut; here they would
    shorten every hold by up to 0.4 s at each end, where the music is already playing."""
    level = music_map.piece_level
    per_piece = _PIECE // music_map.frame_samples
    reach = round((SPEECH_MARGIN_S + _MARGIN_SLACK_S) * _RATE / _PIECE)

    def heard(piece: int, floor: float) -> bool:
        frames = speech_map.speech[piece * per_piece : (piece + 1) * per_piece]
        return 0 <= piece < len(level) and level[piece] >= floor and not frames.any()

    out = []
    for start, end in music_map.stretches:
        first, stop = round(start * _RATE / _PIECE), round(end * _RATE / _PIECE)
        inside = level[first:stop]
        if not len(inside):
            out.append((start, end))
            continue
        floor = float(np.median(inside)) - _AUDIBLE_DB
        lo, hi = first, stop
        while first - lo < reach and heard(lo - 1, floor):
            lo -= 1
        while hi - stop < reach and heard(hi, floor):
            hi += 1
        out.append((min(start, lo * _PIECE / _RATE), max(end, hi * _PIECE / _RATE)))
    return _union(out)


def _trim_margin(speech: np.ndarray, music_map: MusicMap, edge: int, step: int) -> None:
    """Take out the speech run touching a music stretch at frame ``edge`` (``step`` -1: the run
    before it, +1: after it) when it is the music's own start or tail that the margin gave
    back: the run fits in the margin, a pause parts it from what is beyond, and the strongest
    peak of its audible pieces is, in most of them, one of the music's beside it."""
    frames = len(speech)
    per_piece = _PIECE / music_map.frame_samples
    reach = round((SPEECH_MARGIN_S + _MARGIN_SLACK_S) * _RATE / music_map.frame_samples)
    run = edge + step
    while 0 <= run < frames and speech[run] and abs(run - edge) <= reach:
        run += step
    length = abs(run - edge) - 1
    pause = range(run, run + step * _PAUSE_FRAMES, step)
    if not length or abs(run - edge) > reach or any(0 <= f < frames and speech[f] for f in pause):
        return
    inside = sorted((edge, edge - step * round(_REFERENCE_S / _frame_s(music_map))))
    first, last = sorted((edge + step, run - step))
    pieces = music_map.piece_peak
    level = music_map.piece_level
    ref = np.arange(int(max(inside[0], 0) / per_piece), int(inside[1] / per_piece) + 1)
    own = np.arange(int(first / per_piece), int(last / per_piece) + 1)
    ref, own = ref[ref < len(pieces)], own[own < len(pieces)]
    if not len(ref) or not len(own):
        return
    audible = own[level[own] >= float(np.median(level[ref])) - _AUDIBLE_DB]
    if not len(audible):
        return
    notes = np.unique(pieces[ref])
    near = np.abs(pieces[audible][:, np.newaxis] - notes[np.newaxis]).min(axis=1) <= 1
    # A new note of the music: a pure peak held into the next piece or from the last one.
    before, after = (
        pieces[np.maximum(audible - 1, 0)],
        pieces[np.minimum(audible + 1, len(pieces) - 1)],
    )
    peak = pieces[audible]
    held = (np.abs(peak - before) <= 1) | (np.abs(peak - after) <= 1)
    pure = music_map.piece_share[audible] >= NARROW
    matched = near | (held & pure)
    # A word right beside the music's edge (no pause between) sits at the run's far end:
    # that third must be the music's too.
    # (Only its pieces as loud as the music count there: not the music's fading last one.)
    third = max(1, len(matched) // 3)
    far = slice(None, third) if step < 0 else slice(-third, None)
    loud = level[audible][far] >= float(np.median(level[ref])) - _LOUD_DB
    outer = matched[far][loud]
    if matched.mean() >= _SAME_MUSIC and (not len(outer) or outer.mean() >= _FAR_END):
        speech[first : last + 1] = False


def _frame_s(music_map: MusicMap) -> float:
    """Seconds of one VAD frame of the map."""
    return music_map.frame_samples / _RATE


def _ripple(power: np.ndarray) -> np.ndarray:
    """Per row: RMS (dB) of the log spectrum around its moving-average envelope."""
    log = 10 * np.log10(power + 1e-3)
    total = np.cumsum(np.pad(log, ((0, 0), (1, 0))), axis=1)
    envelope = (total[:, _SMOOTH:] - total[:, :-_SMOOTH]) / _SMOOTH
    edge = _SMOOTH // 2
    residual = log[:, edge : log.shape[1] - edge] - envelope
    peaks: np.ndarray = np.sort(residual, axis=1)[:, -_PEAKS:].mean(axis=1)
    return peaks


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted spans, overlapping ones joined."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as ``[start, end)`` index ranges."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )
