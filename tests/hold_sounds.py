"""Real-like sounds of a call that are not speech: hold music, ringback, call-progress tones.

``tests/audio.py``'s :func:`~tests.audio.hold_music` (plucked notes) is the corpus's old hold
sound. The music here is closer to what a contact centre plays: a chord pad, a bass line on
the beat, a melody with vibrato and a hi-hat, in a random key and tempo. The tones follow the
national specifications (ITU-T E.180 lists them): a European 425 Hz ringback and busy, the
North American 440+480 Hz ringback, 480+620 Hz busy and 350+440 Hz dial tone, the British
400+450 Hz double ring, and DTMF digits (ITU-T Q.23 frequencies) dialled by hand and by an
auto-dialler. Every function returns float samples at 16 kHz, peaking at
-20 dBFS like the corpus's speech.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DTMF", "SOUNDS", "TONES", "lounge_music", "tone"]

_RATE = 16_000
_PEAK = 0.1 * 32768
# (frequencies, cadence as (on, off) seconds repeated)
TONES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "ringback-eu": ((425.0,), (1.0, 4.0)),
    "ringback-us": ((440.0, 480.0), (2.0, 4.0)),
    "ringback-uk": ((400.0, 450.0), (0.4, 0.2, 0.4, 2.0)),
    "busy-eu": ((425.0,), (0.5, 0.5)),
    "busy-us": ((480.0, 620.0), (0.5, 0.5)),
    "dial-us": ((350.0, 440.0), (3600.0, 0.0)),
}
"""Call-progress tones: frequencies and their on/off cadence in seconds."""
DTMF: dict[str, tuple[float, float]] = {"dtmf": (0.1, 0.1), "dtmf-fast": (0.07, 0.07)}
"""DTMF as dialled by hand (0.1 s on, 0.1 s off) and by an auto-dialler (70 ms, near Q.24's
40 ms minimum): digit and gap seconds."""
_DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
_DTMF_HIGH = (1209.0, 1336.0, 1477.0)
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_PROGRESSION = (0, 7, 9, 5)  # I-V-vi-IV, the progression of most easy-listening music


def _note(freq: float, seconds: float, *, harmonics: tuple[float, ...], decay: float) -> np.ndarray:
    t = np.arange(int(seconds * _RATE)) / _RATE
    wave = sum(
        a / (i + 1) * np.sin(2 * np.pi * freq * (i + 1) * t) for i, a in enumerate(harmonics)
    )
    return np.asarray(wave) * np.minimum(1, t * 40) * np.exp(-t * decay)


def lounge_music(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Easy-listening hold music: pad chords, bass, a vibrato melody and a hi-hat."""
    out = np.zeros(samples + 4 * _RATE)
    key = 110 * 2 ** (int(rng.integers(0, 12)) / 12)
    beat = 60 / rng.uniform(80, 110)
    bar = 4 * beat
    t0, chord = 0.0, 0
    while t0 * _RATE < samples:
        root = _PROGRESSION[chord % 4]
        at = int(t0 * _RATE)
        for step in (0, 4 if root in (0, 5, 7) else 3, 7):  # a major or minor triad
            freq = key * 2 ** ((root + step) / 12) * 2
            pad = _note(freq * rng.uniform(0.998, 1.002), bar, harmonics=(1, 0.6, 0.4), decay=0.3)
            out[at : at + len(pad)] += 0.35 * pad
        for b in (0, 2):  # bass on beats one and three
            bass = _note(key * 2 ** (root / 12) / 2, 2 * beat, harmonics=(1, 0.8, 0.5), decay=2.5)
            out[at + int(b * beat * _RATE) :][: len(bass)] += 0.8 * bass
        m = 0.0
        while m < bar - 0.1:  # the melody: scale notes over the chord, with vibrato
            length = float(rng.choice((0.5, 1.0, 1.5, 2.0))) * beat
            degree = _MAJOR[int(rng.integers(0, 7))]
            freq = key * 2 ** (degree / 12) * 4
            t = np.arange(int(length * _RATE)) / _RATE
            vibrato = 1 + 0.006 * np.sin(2 * np.pi * 5.5 * t) * np.minimum(1, t * 3)
            phase = 2 * np.pi * np.cumsum(freq * vibrato) / _RATE
            tone_ = (np.sin(phase) + 0.3 * np.sin(2 * phase)) * np.minimum(1, t * 30)
            tone_ *= np.exp(-t * 0.8)
            start = at + int(m * _RATE)
            out[start : start + len(tone_)] += 0.6 * tone_
            m += length
        for b in range(8):  # hi-hat on every half beat
            hit = rng.standard_normal(int(0.04 * _RATE)) * np.exp(-np.arange(640) / 120)
            start = at + int(b * beat / 2 * _RATE)
            out[start : start + len(hit)] += 0.05 * np.diff(hit, prepend=0)
        t0 += bar
        chord += 1
    out = out[:samples]
    return out / max(np.abs(out).max(), 1e-9) * _PEAK


def tone(kind: str, samples: int, rng: np.random.Generator) -> np.ndarray:
    """A call-progress tone of :data:`TONES`, or DTMF of :data:`DTMF`: digits of a random
    number dialled in groups of 3-10 with pauses between them, each digit's two tones 0-3 dB
    apart (a line's twist)."""
    out = np.zeros(samples)
    t = np.arange(samples) / _RATE
    if kind in DTMF:
        on, off = (int(s * _RATE) for s in DTMF[kind])
        at = 0
        while at < samples:
            for _ in range(int(rng.integers(3, 11))):
                low, high = rng.choice(_DTMF_LOW), rng.choice(_DTMF_HIGH)
                twist = 10 ** (-rng.uniform(0, 3) / 20)
                n = max(0, min(on, samples - at))
                out[at : at + n] = np.sin(2 * np.pi * low * t[:n]) + twist * np.sin(
                    2 * np.pi * high * t[:n]
                )
                at += on + off
            at += int(rng.uniform(0.5, 1.5) * _RATE)
        return out[:samples] / 2 * _PEAK
    freqs, cadence = TONES[kind]
    wave = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    on = np.zeros(samples, dtype=bool)
    at, i = 0.0, 0
    while at * _RATE < samples:
        if i % 2 == 0:
            on[int(at * _RATE) : int((at + cadence[i % len(cadence)]) * _RATE)] = True
        at += cadence[i % len(cadence)]
        i += 1
    return np.asarray(wave) * on * _PEAK


SOUNDS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "lounge music": lounge_music,
    **{name: (lambda n, rng, k=name: tone(k, n, rng)) for name in (*TONES, *DTMF)},
}
"""Every non-speech sound by name, as ``(samples, rng) -> float samples``."""
