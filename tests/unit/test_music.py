"""Hold music and tones are found and left out of the requests; speech next to them is not.

Calls are the corpus's (tests/benchmarks/calls.py: real speech on two channels, a hold on the
agent's channel with the agent speaking just before and after it), with the hold sound swapped
for the real-like sounds of tests/hold_sounds.py. Coverage is counted on the generator's word
positions, not on recognised text, so it holds on any CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from streams.audiowork import decode_and_plan, merge_stretches
from streams.chunking import ChunkPolicy, Request, SpeechMap, plan_requests
from streams.config import Settings
from streams.decode import SAMPLE_RATE
from streams.events import Recording
from streams.music import SPEECH_MARGIN_S, MusicDetector, MusicMap, without_music
from streams.runtime import chunk_policy
from streams.vad import FRAME_SAMPLES, SpeechDetector
from tests.audio import hold_music, write_wav
from tests.benchmarks.calls import CALLS, ROLES, CallTruth, compose
from tests.hold_sounds import SOUNDS

SPEC = next(c for c in CALLS if c.name == "call-03min-hold")
"""Three minutes, 20 s on hold halfway."""
NO_HOLD = next(c for c in CALLS if c.name == "call-02min")
POLICY = ChunkPolicy()
WORDS_MARGIN_S = 0.05
"""Word seconds a plan may leave out anywhere in a call (the VAD's own misses; measured 0)."""


def _listen(pcm: np.ndarray) -> tuple[SpeechMap, MusicMap]:
    vad, music = SpeechDetector(1), MusicDetector()
    for start in range(0, len(pcm), SAMPLE_RATE):
        vad.feed(pcm[start : start + SAMPLE_RATE])
        music.feed(pcm[start : start + SAMPLE_RATE])
    return vad.finish(), music.finish(frame_samples=FRAME_SAMPLES)


def _plan(pcm: np.ndarray, *, music_filter: bool) -> tuple[list[Request], list[MusicMap]]:
    speech, music = zip(*(_listen(channel) for channel in pcm), strict=True)
    maps = [without_music(s, m) for s, m in zip(speech, music, strict=True)]
    chosen = maps if music_filter else list(speech)
    return plan_requests(chosen, ROLES, POLICY, plan="packed", sample_rate=SAMPLE_RATE), [*music]


def _sent(requests: list[Request], channel: int, samples: int) -> np.ndarray:
    sent = np.zeros(samples, dtype=bool)
    for request in (r for r in requests if r.channel == channel):
        for a, b in request.stretches:
            sent[a:b] = True
    return sent


def _words_lost_s(truth: CallTruth, requests: list[Request]) -> float:
    lost = 0
    for channel in (0, 1):
        sent = _sent(requests, channel, truth.samples)
        for talk in (t for t in truth.talk if t.channel == channel):
            lost += sum(int(np.count_nonzero(~sent[a:b])) for a, b in talk.words)
    return lost / SAMPLE_RATE


@pytest.fixture(scope="module", params=["lounge music", "plucked notes", "dial-us", "busy-eu"])
def held(request: pytest.FixtureRequest) -> tuple[np.ndarray, CallTruth]:
    sound = hold_music if request.param == "plucked notes" else SOUNDS[request.param]
    return compose(SPEC, hold_sound=sound)


def test_music_is_left_out_and_speech_stays(held: tuple[np.ndarray, CallTruth]) -> None:
    pcm, truth = held
    assert truth.hold is not None
    a, b = truth.hold
    before, _ = _plan(pcm, music_filter=False)
    after, music = _plan(pcm, music_filter=True)
    # Without the detector WebRTC's VAD sends some (a steady tone) or nearly all (music) of
    # it; with it, at most a tenth.
    sent_before = np.count_nonzero(_sent(before, 0, truth.samples)[a:b])
    sent_after = np.count_nonzero(_sent(after, 0, truth.samples)[a:b])
    assert sent_after < sent_before
    assert sent_after <= 0.1 * (b - a)
    # Every word of both parties is still sent, the agent's words around the hold included.
    assert _words_lost_s(truth, after) <= _words_lost_s(truth, before) + WORDS_MARGIN_S
    # The music is reported on the agent's channel only, inside the hold.
    assert not music[1].stretches
    (start, end), *more = music[0].stretches
    assert not more
    # (A tone's stretch is as fine as the 60 ms pieces it is found in: up to one piece more.)
    assert a / SAMPLE_RATE - 0.06 <= start < end <= b / SAMPLE_RATE + 0.06
    assert end - start >= 0.9 * (b - a) / SAMPLE_RATE - 2


def test_ringback_is_left_out() -> None:
    pcm, truth = compose(SPEC, hold_sound=SOUNDS["ringback-us"])
    assert truth.hold is not None
    a, b = truth.hold
    before, _ = _plan(pcm, music_filter=False)
    after, _ = _plan(pcm, music_filter=True)
    sent_before = np.count_nonzero(_sent(before, 0, truth.samples)[a:b])
    sent_after = np.count_nonzero(_sent(after, 0, truth.samples)[a:b])
    # 2 s bursts every 6 s, too short for the music windows: the tone tracker takes each burst
    # whole (streams/tones.py; every tone kind in tests/unit/test_tones.py).
    assert sent_before > 0
    assert sent_after <= 0.1 * (b - a)
    assert _words_lost_s(truth, after) <= _words_lost_s(truth, before) + WORDS_MARGIN_S


def test_a_call_without_music_is_planned_as_before() -> None:
    pcm, truth = compose(NO_HOLD)
    assert truth.hold is None
    before, _ = _plan(pcm, music_filter=False)
    after, music = _plan(pcm, music_filter=True)
    assert after == before
    assert all(not m.stretches for m in music)


def test_speech_alone_is_never_music() -> None:
    """Every channel of the corpus's held calls, the hold replaced by line noise."""
    for spec in (SPEC, NO_HOLD, next(c for c in CALLS if c.name == "call-05min-hold")):
        pcm, _ = compose(replace(spec, hold_s=0.0))
        for channel in pcm:
            _, music = _listen(channel)
            assert not music.stretches, spec.name


def test_without_music_leaves_other_frames_alone() -> None:
    speech = np.array([True, True, False, True, True, True])
    speech_map = SpeechMap(480, speech, np.zeros(6, np.float32), 6 * 480)
    music_map = MusicMap(480, np.array([False, False, False, True, True, False]), ((1.0, 2.0),))
    assert without_music(speech_map, music_map).speech.tolist() == [1, 1, 0, 0, 0, 1]
    nothing = MusicMap(480, np.zeros(6, dtype=bool), ())
    assert without_music(speech_map, nothing) is speech_map


def test_music_of_channels_merges_on_the_call_timeline() -> None:
    channels = [[(10.0, 20.0), (40.0, 50.0)], [(15.0, 25.0)]]
    assert merge_stretches(channels) == [(10.0, 25.0), (40.0, 50.0)]


def test_the_setting_reaches_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chunk_policy(Settings()).music_filter
    monkeypatch.setenv("STREAMS_MUSIC_FILTER", "false")
    assert not chunk_policy(Settings()).music_filter


@pytest.mark.parametrize("music_filter", [True, False])
def test_decode_and_plan_reports_the_hold(tmp_path: Path, music_filter: bool) -> None:
    pcm, truth = compose(SPEC, hold_sound=SOUNDS["lounge music"])
    assert truth.hold is not None
    path = write_wav(tmp_path / "call.wav", pcm)
    recording = Recording(
        recording_id="r1",
        audio_url=path.as_uri(),
        model="qwen3-asr-flash",
        language=None,
        enable_itn=False,
        context="",
        layout="split",
        roles=ROLES,
    )
    planned = decode_and_plan(
        path,
        tmp_path,
        recording=recording,
        split_plan="packed",
        max_duration_s=3600,
        policy=replace(POLICY, music_filter=music_filter),
        vad_aggressiveness=1,
    )
    a, b = (x / SAMPLE_RATE for x in truth.hold)
    if music_filter:
        ((start, end),) = planned.music
        # The hold as reported: the detector's stretch widened over its margins where the
        # music plays and nobody speaks; never wider than the music (give or take a 60 ms
        # piece of the detector), and at most a margin short at each end (where the VAD
        # called the music's start or tail speech).
        assert a - 0.06 <= start <= a + SPEECH_MARGIN_S
        assert b - SPEECH_MARGIN_S <= end <= b + 0.06
        sent = sum(
            max(0, min(y, b * SAMPLE_RATE) - max(x, a * SAMPLE_RATE))
            for r in planned.requests
            for x, y in r.stretches
            if r.channel == 0
        )
        assert sent <= 0.1 * (b - a) * SAMPLE_RATE
    else:
        assert planned.music == []
