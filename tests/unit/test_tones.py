"""DTMF and call-progress tones are caught and left out; speech next to them is kept.

The calls are the corpus's (real speech on two channels, the agent speaking 0.4-1 s before and
0.3-0.8 s after the hold) with the hold replaced by each tone of tests/hold_sounds.py, at
16 kHz and, for two kinds, through an 8 kHz mu-law file as telephony records it. Coverage is
counted on the generator's word positions. Assertions are on structure and margins (kinds,
containment, shares), never on exact figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.chunking import SpeechMap
from streams.decode import SAMPLE_RATE, decode_sync
from streams.music import SPEECH_MARGIN_S, MusicDetector, MusicMap, without_music
from streams.tones import ToneTracker
from streams.vad import FRAME_SAMPLES, STARTUP_FRAMES, SpeechDetector, _line_noise
from tests.audio import write_wav_blocks
from tests.benchmarks.calls import CALLS, CallTruth, compose
from tests.hold_sounds import DTMF, SOUNDS, TONES, tone
from tests.unit.test_music import _plan, _sent, _words_lost_s

SPEC = next(c for c in CALLS if c.name == "call-03min-hold")
PIECE_S = 0.06
"""The tone tracker's resolution: one 60 ms piece of the music detector."""


def _tones_of(pcm: np.ndarray) -> MusicMap:
    detector = MusicDetector()
    for start in range(0, len(pcm), SAMPLE_RATE):
        detector.feed(pcm[start : start + SAMPLE_RATE])
    return detector.finish(frame_samples=FRAME_SAMPLES)


def _words(truth: CallTruth, channel: int) -> np.ndarray:
    words = np.zeros(truth.samples, dtype=bool)
    for talk in (t for t in truth.talk if t.channel == channel):
        for a, b in talk.words:
            words[a:b] = True
    return words


@pytest.fixture(scope="module", params=[*DTMF, *TONES])
def toned(request: pytest.FixtureRequest) -> tuple[str, np.ndarray, CallTruth]:
    pcm, truth = compose(SPEC, hold_sound=SOUNDS[request.param])
    return request.param, pcm, truth


def test_tones_are_left_out_and_speech_next_to_them_stays(
    toned: tuple[str, np.ndarray, CallTruth],
) -> None:
    kind, pcm, truth = toned
    assert truth.hold is not None
    a, b = truth.hold
    before, _ = _plan(pcm, music_filter=False)
    after, music = _plan(pcm, music_filter=True)
    sent_after = np.count_nonzero(_sent(after, 0, truth.samples)[a:b])
    assert sent_after <= 0.1 * (b - a), kind
    assert _words_lost_s(truth, after) <= _words_lost_s(truth, before) + 0.01, kind
    # Reported on the agent's channel only, inside the hold, as the right kind.
    assert not music[1].tones
    expected = "dtmf" if kind in DTMF else "tone"
    found = [t for t in music[0].tones if t.kind == expected]
    assert found, kind
    assert all(
        a / SAMPLE_RATE - PIECE_S <= t.start_s < t.end_s <= b / SAMPLE_RATE + PIECE_S
        for t in music[0].tones
    ), kind
    # DTMF is not hold; a call-progress tone is (its cadence joined into one stretch).
    held = sum(e - s for s, e in music[0].stretches)
    if kind in DTMF:
        assert held == 0, kind
    else:
        assert held >= 0.5 * (b - a) / SAMPLE_RATE, kind


@pytest.mark.parametrize("kind", ["dtmf", "ringback-us"])
def test_tones_are_caught_in_8_khz_telephony(kind: str, tmp_path: Path) -> None:
    pcm, truth = compose(SPEC, hold_sound=SOUNDS[kind])
    assert truth.hold is not None
    a, b = truth.hold
    path = tmp_path / "call.wav"
    step = 10 * SAMPLE_RATE
    write_wav_blocks(path, (pcm[:, i : i + step] for i in range(0, pcm.shape[1], step)))
    agent = decode_sync(path, layout="split").channels[0]
    music = _tones_of(agent)
    flagged = np.repeat(music.music, FRAME_SAMPLES)[: truth.samples]
    sound = np.abs(SOUNDS[kind](b - a, np.random.default_rng(1))) > 0  # where it can sound
    assert np.count_nonzero(flagged[a:b]) >= 0.5 * np.count_nonzero(sound)
    assert not np.any(flagged & _words(truth, 0))


def test_dtmf_digits_are_read_as_dialled() -> None:
    """Each keyed piece names the digit's row and column of the keypad (ITU-T Q.23)."""
    rng = np.random.default_rng(7)
    pcm = tone("dtmf", 3 * SAMPLE_RATE, rng) + rng.standard_normal(3 * SAMPLE_RATE) * 30
    detector = MusicDetector()
    detector.feed(pcm.astype(np.int16))
    tracker: ToneTracker = detector._tones
    digits = tracker.features()[3]
    keyed = digits[digits >= 0]
    assert len(keyed) >= 6
    assert set(keyed.tolist()) <= {r * 4 + c for r in range(4) for c in range(3)}
    runs = tracker.runs()
    assert runs
    assert {kind for _, _, kind in runs} == {"dtmf"}


@pytest.mark.parametrize("gap_s", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("kind", ["dtmf", "ringback-eu"])
def test_speech_right_after_a_tone_is_not_flagged(kind: str, gap_s: float) -> None:
    """A tone that ends ``gap_s`` before a word: the word's pieces are never tone (a piece
    holding both is not narrow), at most the one 60 ms piece where they meet."""
    pcm, truth = compose(next(c for c in CALLS if c.name == "call-02min"))
    words = _words(truth, 0)
    onset = next(
        a for t in truth.talk if t.channel == 0 for a, _ in t.words if a > 20 * SAMPLE_RATE
    )
    length = int(2.0 * SAMPLE_RATE)
    end = onset - int(gap_s * SAMPLE_RATE)
    start = end - length
    assert not words[start:end].any()
    channel = pcm[0].astype(np.float64)
    channel[start:end] += tone(kind, length, np.random.default_rng(3))
    music = _tones_of(np.clip(channel, -32768, 32767).astype(np.int16))
    flagged = np.repeat(music.music, FRAME_SAMPLES)[: truth.samples]
    assert np.count_nonzero(flagged[start:end]) >= 0.3 * length  # the tone is caught ...
    assert np.count_nonzero(flagged & words) <= PIECE_S * SAMPLE_RATE  # ... the word is not


def test_speech_alone_has_no_tones() -> None:
    """Both channels of two corpus calls without a hold (English; English and German): no
    tone, no flag."""
    for name in ("call-02min", "call-04min-de"):
        pcm, _ = compose(next(c for c in CALLS if c.name == name))
        for channel in pcm:
            music = _tones_of(channel)
            assert not music.tones, name
            assert not music.music.any(), name


# The music's margin: a speech run that is the music's own edge goes with it.

_FRAMES = 400


def _margin_case(
    *, run_peak: int, pure: float, pause: int = 10, run: int = 20, word: int = 0
) -> np.ndarray:
    """Speech 0-100, a pause, a run of ``run`` frames touching music flagged from 150 on."""
    speech = np.zeros(_FRAMES, dtype=bool)
    speech[:100] = True
    lo = 150 - run
    speech[lo:150] = True
    speech[100 : lo - pause] = True  # shortens the pause to ``pause`` frames
    speech[150:] = True  # WebRTC calls the music speech
    music = np.zeros(_FRAMES, dtype=bool)
    music[150:] = True
    pieces = _FRAMES // 2
    peak = np.full(pieces, 40, dtype=np.int16)
    peak[: lo // 2] = np.arange(lo // 2) % 30  # a voice: its strongest peak moves
    peak[lo // 2 : 75] = run_peak
    share = np.full(pieces, 0.5, dtype=np.float32)
    share[lo // 2 : 75] = pure
    peak[lo // 2 : lo // 2 + word] = np.arange(word) % 30 + 3  # a word at the run's far end
    share[lo // 2 : lo // 2 + word] = 0.5
    level = np.full(pieces, -30.0, dtype=np.float32)
    music_map = MusicMap(FRAME_SAMPLES, music, ((4.5, 12.0),), (), level, share, peak)
    speech_map = SpeechMap(FRAME_SAMPLES, speech, np.zeros(_FRAMES, np.float32), _FRAMES * 480)
    return without_music(speech_map, music_map).speech


def test_the_musics_own_start_in_the_margin_is_not_speech() -> None:
    assert not _margin_case(run_peak=40, pure=0.5)[130:150].any()  # the music's notes
    assert not _margin_case(run_peak=12, pure=0.99)[130:150].any()  # a new note, held pure
    assert _margin_case(run_peak=40, pure=0.5)[:100].all()  # the speech before stays


def test_a_voice_in_the_margin_stays_speech() -> None:
    voice = _margin_case(run_peak=7, pure=0.5)  # a peak of its own, not pure
    assert voice[130:150].all()
    no_pause = _margin_case(run_peak=40, pure=0.5, pause=1)  # speech runs on into the music
    assert no_pause[130:150].all()
    word_first = _margin_case(run_peak=40, pure=0.5, run=30, word=5)  # a word, then music
    assert word_first[120:150].all()
    reach = round((SPEECH_MARGIN_S + 0.45) / 0.03)
    too_long = _margin_case(run_peak=40, pure=0.5, run=reach + 5)  # longer than the margin
    assert too_long[150 - reach - 5 : 150].all()


# The VAD's start-up on the line's noise.


def test_a_start_up_run_on_line_noise_is_not_speech() -> None:
    levels = np.full(200, -68.0, dtype=np.float32)
    flags = np.zeros(200, dtype=bool)
    flags[:6] = True  # WebRTC's start-up, longer than STARTUP_FRAMES
    flags[40:80] = True
    levels[40:80] = -25.0  # the first word, 1 s later
    assert STARTUP_FRAMES < 6
    assert _line_noise(flags, levels, 6)
    loud = levels.copy()
    loud[:6] = -30.0  # the call opens with talk: speech
    assert not _line_noise(flags, loud, 6)
    assert not _line_noise(flags, levels, 2 * STARTUP_FRAMES + 1)  # too long for a start-up


def test_a_call_that_opens_on_line_noise_starts_its_speech_at_the_first_word() -> None:
    pcm, truth = compose(next(c for c in CALLS if c.name == "call-02min"))
    first = min(a for t in truth.talk if t.channel == 0 for a, _ in t.words)
    detector = SpeechDetector(1)
    detector.feed(pcm[0])
    speech = detector.finish().speech
    starts = np.flatnonzero(np.diff(np.concatenate(([0], speech.astype(np.int8)))) == 1)
    assert starts[0] * FRAME_SAMPLES >= first - int(0.1 * SAMPLE_RATE)
