"""The benchmark call generator (tests/benchmarks/calls.py): its ground truth is the audio it
wrote, in both formats, and a seed always gives the same call.

The request-economy figures are judged against this ground truth, so a generator that said
"speech" where it wrote silence would make every figure wrong without any test noticing.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streams.decode import SAMPLE_RATE, decode_sync
from tests.benchmarks.calls import AGENT, CUSTOMER, CallSpec, CallTruth, compose, write_call

# 75 s with 15 s on hold: every kind of event, quick to write and decode.
SPEC = CallSpec("unit", 75, seed=5, hold_s=15, hold_at=0.4)
FRAME = 480  # 30 ms
MARGIN = int(0.03 * SAMPLE_RATE)  # the 8 kHz resampler smears edges by a few ms


def _levels(pcm: np.ndarray, a: int, b: int) -> np.ndarray:
    """dBFS of the 30 ms frames inside samples ``[a, b)``."""
    piece = pcm[a : a + (b - a) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    return 10 * np.log10(np.mean(piece**2, axis=1) / 32768**2 + 1e-10)


def _quiet_spans(truth: CallTruth, channel: int) -> list[tuple[int, int]]:
    """Where the truth puts nothing on ``channel``: no phrase and no hold music."""
    busy = np.zeros(truth.samples, bool)
    for talk in truth.talk:
        if talk.channel == channel:
            for a, b in talk.phrases:
                busy[max(0, a - MARGIN) : b + MARGIN] = True
    if truth.hold and channel == AGENT:
        busy[truth.hold[0] - MARGIN : truth.hold[1] + MARGIN] = True
    edges = np.diff(np.concatenate(([0], (~busy).astype(np.int8), [0])))
    runs = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    return [(int(a), int(b)) for a, b in runs if b - a >= 2 * FRAME]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CallTruth, tuple]]:
    folder = tmp_path_factory.mktemp("calls")
    out = {}
    for codec in ("pcm_mulaw", "pcm_s16le"):
        call = write_call(replace(SPEC, codec=codec), folder)
        audio = decode_sync(call.path, layout="split")
        out[codec] = (call.truth, audio.channels)
    return out


@pytest.mark.parametrize("codec", ["pcm_mulaw", "pcm_s16le"])
def test_words_are_where_the_truth_says(written: dict, codec: str) -> None:
    """Every word the truth lists is loud on its channel in the written file."""
    truth, channels = written[codec]
    words = [(t.channel, a, b) for t in truth.talk for a, b in t.words if b - a >= FRAME]
    assert len(words) > 20
    for channel, a, b in words:
        assert _levels(channels[channel], a, b).max() > -40, (channel, a / SAMPLE_RATE)
    assert {t.kind for t in truth.talk} == {"turn", "backchannel"}


@pytest.mark.parametrize("codec", ["pcm_mulaw", "pcm_s16le"])
def test_only_line_noise_where_the_truth_says_nothing(written: dict, codec: str) -> None:
    """Outside its phrases (and the hold), a channel carries the -60 dBFS line noise only."""
    truth, channels = written[codec]
    for channel in (AGENT, CUSTOMER):
        quiet = _quiet_spans(truth, channel)
        assert sum(b - a for a, b in quiet) > 10 * SAMPLE_RATE
        for a, b in quiet:
            assert _levels(channels[channel], a, b).max() < -54, (channel, a / SAMPLE_RATE)


@pytest.mark.parametrize("codec", ["pcm_mulaw", "pcm_s16le"])
def test_hold_music_on_the_agent_channel_only(written: dict, codec: str) -> None:
    """During the hold the agent channel plays music all along and the customer is silent."""
    truth, channels = written[codec]
    assert truth.hold is not None
    assert truth.hold_s == pytest.approx(15)
    a, b = truth.hold
    music = _levels(channels[AGENT], a + MARGIN, b - MARGIN)
    assert np.median(music) > -45
    assert all(t.end <= a or t.start >= b for t in truth.talk)
    assert _levels(channels[CUSTOMER], a, b).max() < -54


def test_truth_adds_up() -> None:
    """Speech per channel is the sum of the words; turns alternate apart from the hold."""
    _, truth = compose(SPEC)
    for channel in (AGENT, CUSTOMER):
        words = sum(b - a for t in truth.talk if t.channel == channel for a, b in t.words)
        assert truth.speech_s(channel) == pytest.approx(words / SAMPLE_RATE)
        assert 0 < truth.speech_s(channel) < truth.duration_s
    turns = truth.turns
    same = [x for x, y in itertools.pairwise(turns) if x.channel == y.channel]
    assert len(same) <= 1  # the agent speaks before and after the hold
    for talk in truth.talk:
        assert talk.start <= talk.words[0][0] < talk.words[-1][1] <= talk.end
    for channel in (AGENT, CUSTOMER):
        mine = [t for t in truth.talk if t.channel == channel]
        assert all(a.end <= b.start for a, b in itertools.pairwise(mine))  # one voice at a time
    assert truth.offsets_s()
    assert CallTruth.from_json(truth.to_json()) == truth


def test_same_seed_same_call_other_seed_other_call() -> None:
    first, truth = compose(SPEC)
    again, truth_again = compose(SPEC)
    other, truth_other = compose(replace(SPEC, seed=6))
    assert np.array_equal(first, again)
    assert truth == truth_again
    assert truth_other != truth
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_written_file_is_the_composed_call(tmp_path: Path) -> None:
    """16 kHz PCM is written sample for sample."""
    pcm, _ = compose(SPEC)
    call = write_call(replace(SPEC, codec="pcm_s16le"), tmp_path)
    channels = decode_sync(call.path, layout="split").channels
    assert np.array_equal(np.stack(channels), pcm)
