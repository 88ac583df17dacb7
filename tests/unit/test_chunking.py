"""Planning requests from speech maps, and the VAD that makes them from real speech."""

from __future__ import annotations

import numpy as np
import pytest

from streams.chunking import (
    ChunkPolicy,
    SpeechMap,
    max_chunk_seconds,
    plan_requests,
    plan_spans,
)
from streams.decode import SAMPLE_RATE, decode_sync
from streams.encode import encode_data_uri
from streams.vad import FRAME_SAMPLES, SpeechDetector
from tests.audio import asset

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


def _map(pattern: str, *, levels: list[float] | None = None) -> SpeechMap:
    """A speech map from a string: one character per 30 ms frame, ``#`` speech, ``.`` not."""
    speech = np.array([c == "#" for c in pattern])
    level = np.array(levels if levels is not None else [-20.0 if s else -70.0 for s in speech])
    return SpeechMap(FRAME_SAMPLES, speech, level.astype(np.float32), len(pattern) * FRAME_SAMPLES)


def _frames(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a // FRAME_SAMPLES, b // FRAME_SAMPLES) for a, b in spans]


def _policy(**kwargs: float) -> ChunkPolicy:
    base = {"silence_s": 10 * FRAME_S, "pad_s": 0.0, "min_speech_s": 0.0, "max_chunk_s": 100.0}
    return ChunkPolicy(**{**base, **kwargs})


def test_long_silences_are_not_sent_and_short_pauses_are() -> None:
    """A gap shorter than the threshold stays inside a chunk; a longer one splits and is dropped."""
    pattern = "...#####....####" + "." * 12 + "###..."
    assert _frames(plan_spans(_map(pattern), _policy(), sample_rate=SAMPLE_RATE)) == [
        (3, 16),
        (28, 31),
    ]


def test_padding_keeps_context_but_never_overlaps() -> None:
    """Each region keeps pad frames around it, clipped at the ends and at its neighbour."""
    pattern = "#####" + "." * 10 + "#####"
    spans = _frames(
        plan_spans(
            _map(pattern),
            _policy(silence_s=8 * FRAME_S, pad_s=6 * FRAME_S),
            sample_rate=SAMPLE_RATE,
        )
    )
    assert spans == [(0, 11), (11, 20)]


def test_clicks_shorter_than_min_speech_are_ignored() -> None:
    """A two-frame blip of 'speech' in silence is not worth a request."""
    pattern = "." * 20 + "##" + "." * 20 + "#" * 10
    spans = plan_spans(_map(pattern), _policy(min_speech_s=3 * FRAME_S), sample_rate=SAMPLE_RATE)
    assert _frames(spans) == [(42, 52)]


def test_no_speech_means_no_request() -> None:
    """A silent channel plans nothing: nothing is paid for."""
    assert plan_spans(_map("." * 500), _policy(), sample_rate=SAMPLE_RATE) == []


def test_long_speech_is_cut_in_its_longest_pause_within_the_limit() -> None:
    """Over the limit, the cut goes in the longest pause of the second half of the window."""
    # 40 frames max; pauses: a short one at 25, a long one at 32..35, one past the limit.
    pattern = "#" * 25 + "." + "#" * 6 + "...." + "#" * 10 + "..." + "#" * 30
    levels = [-20.0 if c == "#" else -60.0 for c in pattern]
    levels[33] = -75.0  # the quietest frame of the long pause
    speech_map = _map(pattern, levels=levels)
    spans = _frames(
        plan_spans(speech_map, _policy(max_chunk_s=40 * FRAME_S), sample_rate=SAMPLE_RATE)
    )
    assert spans[0] == (0, 33)
    assert all(b - a <= 40 for a, b in spans)
    assert spans[-1][1] == len(pattern)
    # Cuts land on non-speech frames only.
    assert all(not speech_map.speech[b] for (_, b) in spans[:-1])


def test_speech_without_a_pause_is_cut_at_the_quietest_frame() -> None:
    """The last resort: no pause at all, so the cut falls on the quietest frame of the window."""
    levels = [-20.0] * 100
    levels[37] = -35.0
    spans = plan_spans(
        _map("#" * 100, levels=levels), _policy(max_chunk_s=40 * FRAME_S), sample_rate=SAMPLE_RATE
    )
    assert _frames(spans)[0] == (0, 37)
    assert all(b - a <= 40 * FRAME_SAMPLES for a, b in spans)


@pytest.mark.parametrize("max_request_s", [300.0, 60.0])
def test_the_byte_limit_holds_even_for_incompressible_audio(max_request_s: float) -> None:
    """A chunk of the planned maximum, white noise (FLAC's worst case), fits in the URI limit."""
    limit = 2 * 1024 * 1024
    seconds = max_chunk_seconds(max_request_s, limit, SAMPLE_RATE)
    rng = np.random.default_rng(7)
    noise = rng.integers(-32768, 32767, int(seconds * SAMPLE_RATE), dtype=np.int16)
    assert len(encode_data_uri(noise, SAMPLE_RATE)) <= limit
    assert seconds == pytest.approx(min(max_request_s, 48.6), abs=0.5)


def test_the_default_limits_give_about_four_minutes() -> None:
    """10 MiB of base64 bounds a worst-case chunk below the 5-minute limit."""
    assert max_chunk_seconds(300, 10 * 1024 * 1024, SAMPLE_RATE) == pytest.approx(243, abs=2)


def test_chunks_carry_channel_role_and_timeline() -> None:
    """Chunks of a two-channel plan carry their channel's role and absolute times."""
    left = _map("#" * 10 + "." * 40)
    right = _map("." * 30 + "#" * 10 + "." * 10)
    chunks = plan_requests(
        [left, right], ("agent", "customer"), _policy(), plan="stretches", sample_rate=SAMPLE_RATE
    )
    assert [(c.channel, c.role, c.index) for c in chunks] == [(0, "agent", 0), (1, "customer", 0)]
    assert chunks[1].start_s == pytest.approx(30 * FRAME_S)
    assert chunks[1].end_s == pytest.approx(40 * FRAME_S)


def test_policy_rejects_a_chunk_shorter_than_its_padding() -> None:
    """Padding must leave room for speech in a chunk."""
    with pytest.raises(ValueError, match="max_chunk_s"):
        ChunkPolicy(pad_s=1.0, max_chunk_s=1.5)


def _speech_map(pcm: np.ndarray, block: int = 7777) -> SpeechMap:
    detector = SpeechDetector(aggressiveness=1)
    for start in range(0, len(pcm), block):
        detector.feed(pcm[start : start + block])
    return detector.finish()


def test_vad_finds_real_speech_and_not_the_silence_around_it() -> None:
    """Real speech between two seconds of silence: speech found, the silence not sent."""
    speech = decode_sync(asset("en_speechbrain_harvard_birch_canoe.wav")).channels[0]
    silence = np.zeros(2 * SAMPLE_RATE, np.int16)
    pcm = np.concatenate([silence, speech, silence])
    speech_map = _speech_map(pcm)
    assert speech_map.samples == len(pcm)
    assert speech_map.frames == -(-len(pcm) // FRAME_SAMPLES)
    spans = plan_spans(speech_map, ChunkPolicy(), sample_rate=SAMPLE_RATE)
    assert len(spans) == 1
    start, end = spans[0]
    # The words run from 2.0 s to about 5.0 s (the clip has a quiet tail); the VAD's hangover
    # and the padding keep a few tenths of a second around them.
    assert 1.5 * SAMPLE_RATE <= start <= 2.0 * SAMPLE_RATE
    assert 5.0 * SAMPLE_RATE <= end <= len(pcm) - 1.5 * SAMPLE_RATE


def test_vad_result_does_not_depend_on_block_size() -> None:
    """Feeding the same audio in blocks of any length gives the same flags."""
    pcm = decode_sync(asset("de_picovoice_leopard_test_de.wav")).channels[0]
    one = _speech_map(pcm, block=len(pcm))
    many = _speech_map(pcm, block=333)
    assert np.array_equal(one.speech, many.speech)
    assert np.allclose(one.level_db, many.level_db)


def test_vad_rejects_an_unknown_mode() -> None:
    """WebRTC's VAD has modes 0 to 3."""
    with pytest.raises(ValueError, match="aggressiveness"):
        SpeechDetector(aggressiveness=4)


def test_dither_below_the_floor_is_never_speech() -> None:
    """An idle line at -80 dBFS plans no request, whatever WebRTC makes of it."""
    quiet = np.random.default_rng(0).normal(0, 3, 60 * SAMPLE_RATE).astype(np.int16)
    speech_map = _speech_map(quiet)
    assert not speech_map.speech.any()
    assert plan_spans(speech_map, ChunkPolicy(), sample_rate=SAMPLE_RATE) == []


def _plan(maps: list[SpeechMap], plan: str, **policy: float) -> list:
    roles = ("agent", "customer")[: len(maps)] if len(maps) > 1 else (None,)
    return plan_requests(maps, roles, _policy(**policy), plan=plan, sample_rate=SAMPLE_RATE)


def _stretch_frames(request) -> list[tuple[int, int]]:
    return _frames(list(request.stretches))


def test_packed_carries_a_channels_stretches_in_one_request_and_maps_back() -> None:
    """Three stretches of one channel travel in one request; its audio holds no long silence,
    and a time inside the request maps back to the call timeline through the stretches."""
    pattern = "#" * 10 + "." * 30 + "#" * 10 + "." * 30 + "#" * 10
    [request] = _plan([_map(pattern)], "packed")
    assert _stretch_frames(request) == [(0, 10), (40, 50), (80, 90)]
    assert request.duration_s == pytest.approx(30 * FRAME_S)
    assert request.speech_s == pytest.approx(30 * FRAME_S)
    # 15 frames into the request's audio is 5 frames into the second stretch.
    assert request.call_time(15 * FRAME_S) == pytest.approx(45 * FRAME_S)
    assert (request.start_s, request.end_s) == pytest.approx((0.0, 90 * FRAME_S))


def test_packed_fills_requests_up_to_the_limit_in_order() -> None:
    """Stretches fill a request until the next would pass the limit; none is split or reordered."""
    pattern = ("#" * 10 + "." * 20) * 5
    requests = _plan([_map(pattern)], "packed", max_chunk_s=25 * FRAME_S)
    assert [_stretch_frames(r) for r in requests] == [
        [(0, 10), (30, 40)],
        [(60, 70), (90, 100)],
        [(120, 130)],
    ]
    assert [r.index for r in requests] == [0, 1, 2]


def test_turns_split_where_the_other_party_speaks_and_nowhere_else() -> None:
    """The agent's stretches travel together until the customer's speech comes between them."""
    agent = _map("#" * 10 + "." * 20 + "#" * 10 + "." * 60 + "#" * 10 + "." * 20)
    customer = _map("." * 50 + "#" * 40 + "." * 40)
    requests = _plan([agent, customer], "turns", backchannel_s=5 * FRAME_S)
    assert [(r.role, _stretch_frames(r)) for r in requests] == [
        ("agent", [(0, 10), (30, 40)]),
        ("agent", [(100, 110)]),
        ("customer", [(50, 90)]),
    ]


def test_a_backchannel_does_not_end_the_other_partys_turn() -> None:
    """A short "mm-hm" on the listening channel leaves the speaker's turn in one request."""
    agent = _map("#" * 30 + "." * 20 + "#" * 30)
    customer = _map("." * 35 + "##" + "." * 43)
    requests = _plan([agent, customer], "turns", backchannel_s=5 * FRAME_S)
    assert [(r.role, _stretch_frames(r)) for r in requests] == [
        ("agent", [(0, 30), (50, 80)]),
        ("customer", [(35, 37)]),
    ]


def test_stretches_plan_sends_one_request_per_stretch() -> None:
    """The old behaviour, kept for comparison in the benchmarks."""
    pattern = "#" * 10 + "." * 30 + "#" * 10
    assert len(_plan([_map(pattern)], "stretches")) == 2


def test_no_request_carries_only_padding() -> None:
    """Speech that lies inside its neighbour's padding joins the neighbour's request."""
    # Silence threshold 3 frames, padding 8: the second region (2 frames) starts 4 frames
    # after the first ends, so the first's padding covers it whole.
    pattern = "#" * 10 + "...." + "##" + "." * 40
    spans = plan_spans(
        _map(pattern), _policy(silence_s=3 * FRAME_S, pad_s=8 * FRAME_S), sample_rate=SAMPLE_RATE
    )
    assert _frames(spans) == [(0, 24)]


def test_outer_padding_is_trimmed_when_that_saves_a_billed_second() -> None:
    """3.1 s of audio bills 4 s; trimming 0.1 s of padding (never below min_pad_s) bills 3."""
    frames_per_s = SAMPLE_RATE / FRAME_SAMPLES  # 33.3 frames
    speech = round(2.7 * frames_per_s)  # 90 frames = 2.7 s, padded by 0.2 s each side = 3.1 s
    pattern = "." * 20 + "#" * speech + "." * 20
    [request] = _plan([_map(pattern)], "packed", pad_s=0.2, min_pad_s=0.05)
    assert request.duration_s <= 3.0
    assert request.duration_s >= 2.7 + 2 * 0.05 - 1e-9
    # Where trimming cannot reach the second below, the padding stays whole.
    [kept] = _plan([_map(pattern)], "packed", pad_s=0.2, min_pad_s=0.18)
    assert kept.duration_s == pytest.approx(2.7 + 0.4, abs=0.031)


def test_the_vads_start_up_frames_on_a_noisy_line_are_not_speech() -> None:
    """WebRTC flags its first frames as speech before it adapts; a line that opens with
    noise plans no request for them, while speech from the very first frame is kept."""
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(3 * SAMPLE_RATE) * 32768 * 10 ** (-60 / 20)).astype(np.int16)
    assert plan_spans(_speech_map(noise), ChunkPolicy(), sample_rate=SAMPLE_RATE) == []
    speech = decode_sync(asset("en_speechbrain_harvard_birch_canoe.wav")).channels[0]
    spans = plan_spans(_speech_map(speech), ChunkPolicy(), sample_rate=SAMPLE_RATE)
    assert spans
    assert spans[0][0] == 0
