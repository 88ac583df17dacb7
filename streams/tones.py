"""DTMF digits and call-progress tones (ringback, busy, dial) of one channel: not speech.

The music detector (streams/music.py) judges windows of about a second and keeps only music
of :data:`~streams.music.MIN_MUSIC_S` or more, so it misses what telephony sends in short
bursts: a DTMF digit lasts 40-100 ms, a European ringback is 1 s on and 4 s off, a British one
0.4 s on. WebRTC's VAD calls each burst speech, and every burst cost a request. This module
looks at each 60 ms piece of the music detector's spectrum instead (the same FFT, nothing
computed twice) and asks what a tone is and a voice is not:

- *narrow*: nearly all the piece's energy (:data:`NARROW`) sits in two peaks of a few bins
  (the main lobes of at most two sinusoids); a voice spreads its energy over many harmonics
  and its formants;
- **DTMF**: the two peaks fall on one low-group and one high-group frequency of the keypad
  (ITU-T Q.23, within :data:`DTMF_TOLERANCE_HZ`), at most :data:`DTMF_TWIST_DB` apart in
  level, in at least two pieces (one digit of 70 ms or more, or two digits close together);
- **call-progress tone**: the peaks' centre lies in the band of national call-progress tones
  (ITU-T E.180: 300-660 Hz) and holds still (within one bin, 15.6 Hz) for at least
  :data:`MIN_TONE_S`; a voice's pitch moves within that time.

A tone run is taken out of the speech together with the quiet pieces just after it (where
the VAD's hang-over still calls the line speech) and the quiet piece just before it; a piece
holding both speech and a tone is not narrow, so speech next to a tone is never taken. The
runs are reported as stretches of seconds, DTMF digits joined across the gaps of a dialled
number, a tone's bursts joined across its cadence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DTMF_TOLERANCE_HZ",
    "DTMF_TWIST_DB",
    "MIN_TONE_S",
    "NARROW",
    "ToneStretch",
    "ToneTracker",
]

DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_TOLERANCE_HZ = 25.0
"""Q.23 asks receivers to accept ±1.5 % (at most 25 Hz at 1633 Hz); the bins are 15.6 Hz."""
DTMF_TWIST_DB = 10.0
"""Largest level difference between a digit's two tones (Q.24 allows 4-8 dB on a line)."""
NARROW = 0.9
"""Share of a piece's band energy in its two peaks (±2 bins each) above which it is a tone."""
MIN_TONE_S = 0.3
"""Shortest steady call-progress burst (the British ringback's 0.4 s is the shortest common)."""
_TONE_BAND_HZ = (300.0, 660.0)
_LOBE = 2
"""Bins each side of a peak that belong to it (a Hann window's main lobe)."""
_QUIET_DB = 20.0
"""A piece this far below the tone's level is the line's silence."""
_FAINT_DB = 12.0
"""The edge piece of a tone may be this far below it: a few ms of the tone at the window's end."""
_AFTER = 4
"""Quiet pieces after a run taken with it (0.24 s: WebRTC's hang-over of up to 150 ms)."""
_DTMF_JOIN_S = 1.6
"""DTMF digits closer than this are one dialled number (one stretch)."""
_CADENCE_JOIN_S = 4.5
"""Bursts of one tone closer than this are one ringback or busy tone (one stretch)."""
_MIN_LEVEL_DB = -55.0
_DTMF_GAP = 3
"""Pieces between two keyed pieces of one dialled sequence (the 60 ms pieces straddling a
digit's end and the next one's start hold two digits and are keyed as neither)."""
_EDGE = 0.5
"""Share above which a piece next to a tone piece, with the same centre, is the tone's edge."""
_MIXED = 0.7
"""A piece between keyed pieces, not quiet, is taken with them only above this share: the
tail of one digit and the head of the next, not a voice."""


@dataclass(frozen=True)
class ToneStretch:
    """Seconds ``[start_s, end_s)`` of one channel holding DTMF or a call-progress tone."""

    start_s: float
    end_s: float
    kind: str
    """``"dtmf"`` or ``"tone"`` (ringback, busy, dial, and other steady call-progress tones)."""


class ToneTracker:
    """Per-piece tone features of one channel, from the band power the music detector has.

    ``add`` takes ``(pieces, bins)`` power of the band starting at bin ``lo_bin``; ``finish``
    gives the tone flags per VAD frame and the tone stretches. Five numbers are kept per
    60 ms piece, so memory stays small however long the call.
    """

    def __init__(self, *, bin_hz: float, lo_bin: int, piece: int, rate: int, scale: float) -> None:
        self._bin_hz, self._lo, self._piece, self._rate = bin_hz, lo_bin, piece, rate
        self._scale = scale
        self._level: list[np.ndarray] = []  # dB per piece
        self._share: list[np.ndarray] = []  # energy share of the two peaks
        self._centre: list[np.ndarray] = []  # Hz, power-weighted centre of the two peaks
        self._digit: list[np.ndarray] = []  # DTMF digit index (0-15), -1 if none
        self._peak: list[np.ndarray] = []  # bin of the strongest peak (of the band)

    def add(self, power: np.ndarray) -> None:
        """Take the band power of whole pieces, one row each."""
        if not len(power):
            return
        bins = np.arange(power.shape[1])
        energy = np.maximum(power.sum(axis=1), 1e-9)
        first = power.argmax(axis=1)
        lobe1 = np.abs(bins[np.newaxis] - first[:, np.newaxis]) <= _LOBE
        second = np.where(lobe1, 0.0, power).argmax(axis=1)
        lobe2 = np.abs(bins[np.newaxis] - second[:, np.newaxis]) <= _LOBE
        peaks = np.where(lobe1 | lobe2, power, 0.0)
        share = peaks.sum(axis=1) / energy
        freq = (bins + self._lo) * self._bin_hz
        centre = (peaks * freq).sum(axis=1) / np.maximum(peaks.sum(axis=1), 1e-9)
        f1, f2 = freq[first], freq[second]
        e1 = np.where(lobe1 & ~lobe2, power, 0.0).sum(axis=1)
        e2 = np.where(lobe2, power, 0.0).sum(axis=1)
        twist = np.abs(10 * np.log10((e1 + 1e-9) / (e2 + 1e-9)))
        low, high = np.minimum(f1, f2), np.maximum(f1, f2)
        row = _nearest(low, DTMF_LOW)
        col = _nearest(high, DTMF_HIGH)
        digit = np.where(
            (row >= 0) & (col >= 0) & (twist <= DTMF_TWIST_DB) & (share >= NARROW),
            row * 4 + col,
            -1,
        )
        self._level.append(10 * np.log10(energy / self._scale + 1e-12))
        self._share.append(share.astype(np.float32))
        self._centre.append(centre.astype(np.float32))
        self._digit.append(digit.astype(np.int8))
        self._peak.append(first.astype(np.int16))

    def features(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per piece: level (dB), share of the two peaks, their centre (Hz), DTMF digit."""
        if not self._level:
            empty = np.empty(0)
            return empty, empty, empty, np.empty(0, dtype=np.int8)
        return (
            np.concatenate(self._level),
            np.concatenate(self._share),
            np.concatenate(self._centre),
            np.concatenate(self._digit),
        )

    def peaks(self) -> np.ndarray:
        """Per piece: the band bin of its strongest peak."""
        return np.concatenate(self._peak) if self._peak else np.empty(0, dtype=np.int16)

    def runs(self, features: tuple[np.ndarray, ...] | None = None) -> list[tuple[int, int, str]]:
        """Tone runs as ``[first, end)`` piece indices and kind."""
        level, share, centre, digit = features or self.features()
        loud = level >= _MIN_LEVEL_DB
        out: list[tuple[int, int, str]] = []
        keyed = loud & (digit >= 0)
        # A digit's first or last piece holds only part of it: less narrow, not always keyed,
        # but its peaks' centre is the digit's. A voice does not hold a centre that still.
        same = np.abs(np.diff(centre)) <= self._bin_hz
        tail = loud & (share >= _EDGE)
        dialled = keyed.copy()
        dialled[1:] |= keyed[:-1] & same & tail[1:]
        dialled[:-1] |= keyed[1:] & same & tail[:-1]
        group: list[int] = []
        for a, b in [*_runs(dialled), (-1, -1)]:
            if group and a >= 0 and a - group[1] <= _DTMF_GAP:
                between = np.arange(group[1], a)
                quiet = level[between] < float(level[group[1] - 1]) - _QUIET_DB
                if np.all(quiet | (share[between] >= _MIXED)):
                    group[1] = b
                    group[2] += b - a
                    continue
            if group and group[2] >= 2:  # two pieces: one digit of 70 ms or more, or two
                out.append((group[0], group[1], "dtmf"))
            group = [a, b, b - a]
        lo_hz, hi_hz = _TONE_BAND_HZ
        steady = loud & (share >= NARROW) & (centre >= lo_hz) & (centre <= hi_hz) & (digit < 0)
        shortest = max(2, round(MIN_TONE_S * self._rate / self._piece))
        for a, b in _runs(steady):
            start = a
            for i in range(a + 1, b + 1):  # split where the centre moves by more than a bin
                if i == b or abs(centre[i] - centre[start]) > self._bin_hz:
                    if i - start >= shortest:
                        out.append((start, i, "tone"))
                    start = i
        return sorted(out)

    def _edge(self, features: tuple[np.ndarray, ...], piece: int, neighbour: int) -> bool:
        """Whether ``piece`` is the partial edge of the tone in ``neighbour``."""
        _, share, centre, _ = features
        close = abs(float(centre[piece]) - float(centre[neighbour])) <= self._bin_hz
        return close and float(share[piece]) >= _EDGE

    def finish(self, *, samples: int, frame_samples: int) -> tuple[np.ndarray, list[ToneStretch]]:
        """Tone flags per VAD frame (quiet edges included) and the joined tone stretches."""
        features = self.features()
        level = features[0]
        frames = -(-samples // frame_samples)
        flags = np.zeros(frames, dtype=bool)
        found = self.runs(features)
        for a, b, _ in found:
            quiet = level < float(np.median(level[a:b])) - _QUIET_DB
            # The piece where the tone starts or stops is less narrow (the cut spreads it), but
            # its peaks' centre is still the tone's; a voice in it would move the centre.
            faint = level < float(np.median(level[a:b])) - _FAINT_DB
            if a > 0 and (faint[a - 1] or self._edge(features, a - 1, a)):
                a -= 1
            if b < len(level) and (faint[b] or self._edge(features, b, b - 1)):
                b += 1
            after = 0
            while b < len(level) and after < _AFTER and quiet[b]:
                b, after = b + 1, after + 1
            lo = a * self._piece // frame_samples
            hi = -(-b * self._piece // frame_samples)
            flags[lo:hi] = True
        piece_s = self._piece / self._rate
        stretches: list[ToneStretch] = []
        for a, b, kind in found:
            join = _DTMF_JOIN_S if kind == "dtmf" else _CADENCE_JOIN_S
            last = next((s for s in reversed(stretches) if s.kind == kind), None)
            if last is not None and a * piece_s - last.end_s < join:
                stretches.remove(last)
                stretches.append(ToneStretch(last.start_s, b * piece_s, kind))
            else:
                stretches.append(ToneStretch(a * piece_s, b * piece_s, kind))
        return flags, sorted(stretches, key=lambda s: s.start_s)


def _nearest(freq: np.ndarray, table: tuple[float, ...]) -> np.ndarray:
    """Index of the table frequency within :data:`DTMF_TOLERANCE_HZ` of each, or -1."""
    distance = np.abs(freq[:, np.newaxis] - np.asarray(table)[np.newaxis])
    index = distance.argmin(axis=1)
    return np.where(distance.min(axis=1) <= DTMF_TOLERANCE_HZ, index, -1)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as ``[start, end)`` index ranges."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )
