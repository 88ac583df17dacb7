"""Tell a stereo file whose two channels carry the same signal, fed block by block while it decodes.

Many recorders write the mixed call twice, once per channel. Under ``layout: auto`` such a
file would be transcribed (and billed) twice with two made-up roles; it is one channel.
Channels count as the same when their difference is at least :data:`SAME_BELOW_DB` quieter
than the signal: lossy stereo codecs (joint-stereo MP3, AAC) leave a residue far below that,
while two parties on two channels differ by about as much as they speak.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAME_BELOW_DB", "DualMonoDetector"]

SAME_BELOW_DB = 30.0
"""How much quieter than the signal the left-right difference must be for one signal."""


class DualMonoDetector:
    """Accumulates the energy of the first channel and of the first two channels' difference.

    Usage::

        detector = DualMonoDetector()
        for block in blocks:          # int16, shaped (channels, samples)
            detector.feed(block)
        if detector.same(): ...
    """

    def __init__(self) -> None:
        self._signal = 0.0
        self._difference = 0.0
        self._channels = 0

    def feed(self, block: np.ndarray) -> None:
        """Add one block of int16 samples shaped ``(channels, samples)``."""
        self._channels = block.shape[0]
        if self._channels < 2:
            return
        left = block[0].astype(np.float64)
        right = block[1].astype(np.float64)
        self._signal += float(np.dot(left, left) + np.dot(right, right)) / 2
        diff = left - right
        self._difference += float(np.dot(diff, diff))

    def same(self) -> bool:
        """Whether exactly two channels were fed and they carry one signal."""
        if self._channels != 2:
            return False
        if self._signal == 0.0:
            return True  # two silent channels: nothing to transcribe twice
        return self._difference <= self._signal * 10 ** (-SAME_BELOW_DB / 10)
