"""Voice activity detection of one channel, fed block by block while the audio decodes.

WebRTC's VAD (the ``webrtcvad-wheels`` package: a 200 kB C extension, no dependencies) decides
per 30 ms frame. It was chosen on measurement against Silero (ONNX and ggml builds), TEN VAD
and a plain level gate (docs/audio.md): it lost the fewest words on clean, noisy and telephone
speech, at about 0.4 s of CPU per hour of audio, where the neural detectors took 14 to 180 s.
Its known weakness is music: hold music counts as speech (Silero rejected the music and lost a
sixth of the words next to it), so streams/music.py listens to the same blocks and takes music
and tones out of the speech before planning.

Frames quieter than :data:`SILENCE_FLOOR_DB` are silence whatever WebRTC says: it sometimes
calls dither or an idle line speech, and a request for that would be billed for nothing.
"""

from __future__ import annotations

import numpy as np
import webrtcvad

from streams.chunking import SpeechMap

__all__ = ["FRAME_SAMPLES", "SILENCE_FLOOR_DB", "STARTUP_FRAMES", "SpeechDetector"]

FRAME_SAMPLES = 480
"""30 ms at 16 kHz: the longest frame WebRTC's VAD takes, and the cheapest per second."""
SILENCE_FLOOR_DB = -70.0
"""Frame RMS (dBFS) below which nothing is speech; measured to lose no word (docs/audio.md)."""
STARTUP_FRAMES = 4
"""Frames at the start that WebRTC's VAD flags as speech whatever they hold (measured)."""
_NOISE_FRAMES = 100
"""Frames after the opening run whose quiet ones tell the line's noise level (3 s)."""
_NOISE_MARGIN_DB = 6.0
_SAMPLE_RATE = 16_000
_FULL_SCALE = 32768.0**2


class SpeechDetector:
    """Speech flags and levels of one 16 kHz mono channel, fed in blocks of any length.

    Usage::

        detector = SpeechDetector(aggressiveness=1)
        for block in blocks:
            detector.feed(block)
        speech_map = detector.finish()
    """

    def __init__(self, aggressiveness: int = 1) -> None:
        if aggressiveness not in range(4):
            raise ValueError(f"aggressiveness must be 0 to 3, got {aggressiveness!r}")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._rest = np.empty(0, dtype=np.int16)
        self._flags = bytearray()
        self._levels: list[np.ndarray] = []
        self._samples = 0

    def feed(self, pcm: np.ndarray) -> None:
        """Classify the whole frames in ``pcm`` (int16), keeping a partial one for later."""
        self._samples += len(pcm)
        data = np.concatenate((self._rest, pcm)) if len(self._rest) else pcm
        whole = len(data) // FRAME_SAMPLES * FRAME_SAMPLES
        self._rest = data[whole:].copy()
        if whole:
            self._classify(np.ascontiguousarray(data[:whole], dtype=np.int16))

    def finish(self) -> SpeechMap:
        """Classify what is left (padded with silence) and return the channel's speech map."""
        if len(self._rest):
            last = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            last[: len(self._rest)] = self._rest
            self._rest = np.empty(0, dtype=np.int16)
            self._classify(last)
        levels = np.concatenate(self._levels) if self._levels else np.empty(0, np.float32)
        flags = np.frombuffer(bytes(self._flags), dtype=np.bool_).copy()
        # WebRTC's VAD calls its first frames speech before its noise model adapts: a line
        # that opens with noise would cost a request for 120 ms of nothing. A run that starts
        # the recording and ends within those frames is not speech; real speech runs on.
        run = len(flags) if flags.all() else int(np.argmin(flags))
        if 0 < run <= STARTUP_FRAMES or _line_noise(flags, levels, run):
            flags[:run] = False
        return SpeechMap(
            frame_samples=FRAME_SAMPLES,
            speech=flags,
            level_db=levels,
            samples=self._samples,
        )

    def _classify(self, pcm: np.ndarray) -> None:
        frames = pcm.reshape(-1, FRAME_SAMPLES)
        power = np.mean(np.square(frames, dtype=np.float64), axis=1)
        levels = (10 * np.log10(power / _FULL_SCALE + 1e-10)).astype(np.float32)
        self._levels.append(levels)
        raw = memoryview(pcm.tobytes())
        step = 2 * FRAME_SAMPLES
        is_speech = self._vad.is_speech
        audible = (levels > SILENCE_FLOOR_DB).tolist()
        self._flags.extend(
            loud and is_speech(raw[i * step : (i + 1) * step], _SAMPLE_RATE)
            for i, loud in enumerate(audible)
        )


def _line_noise(flags: np.ndarray, levels: np.ndarray, run: int) -> bool:
    """Whether the run of speech that opens the recording is the VAD's start-up on the line's
    noise: a little longer than :data:`STARTUP_FRAMES` (the start-up outlasts them when its
    model adapts slowly), and no louder than the quiet frames that follow it. Talk that opens
    the call is speech; a run of noise joined to the first word would add up to 0.6 s of talk
    (the silence up to that word) to the analytics."""
    if not 0 < run <= 2 * STARTUP_FRAMES:
        return False
    after = levels[run : run + _NOISE_FRAMES][~flags[run : run + _NOISE_FRAMES]]
    if len(after) < STARTUP_FRAMES:
        return False
    return float(levels[:run].max()) < float(np.median(after)) + _NOISE_MARGIN_DB
