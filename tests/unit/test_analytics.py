"""Call analytics (streams/analytics.py): each figure on calls whose answer is known by hand,
and on generated calls through the worker's own decode, VAD and plan against their truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

import schemas
from streams.analytics import (
    VAD_HANGOVER_S,
    VAD_ONSET_S,
    ToneRun,
    call_analytics,
    speech_spans,
    talk_spans,
    word_count,
)
from streams.chunking import ChunkPolicy, SpeechMap, plan_requests
from streams.event_types import FinalEvent, Segment
from streams.events import RecognitionDefaults, final_event, parse_recording
from streams.transcribe import Result
from tests.benchmarks.bench_analytics import (
    borderline_pauses,
    errors,
    measured,
    truth_analytics,
)
from tests.benchmarks.calls import CallSpec, write_call

RATE = 16_000
FRAME = 480  # 30 ms


def _map(speech: list[tuple[float, float]], seconds: float) -> SpeechMap:
    frames = int(seconds * RATE) // FRAME
    flags = np.zeros(frames, bool)
    for a, b in speech:
        flags[round(a * RATE / FRAME) : round(b * RATE / FRAME)] = True
    levels = np.where(flags, -20.0, -60.0).astype(np.float32)
    return SpeechMap(FRAME, flags, levels, frames * FRAME)


def _segment(role: str | None, start: float, end: float, text: str, emotion: str | None) -> Segment:
    return {
        "channel": 0 if role in ("agent", None) else 1,
        "role": role,
        "start_s": start,
        "end_s": end,
        "text": text,
        "language": "en",
        "emotion": emotion,
    }


def test_speech_of_a_packed_request_is_its_stretches_without_padding() -> None:
    """Under ``packed`` one request carries every stretch of a channel; the speech comes back
    per stretch (pauses under the silence threshold bridged), not as the request's bounds."""
    speech = [(0.3, 2.1), (3.6, 5.4), (5.7, 6.0), (9.0, 12.0), (14.1, 14.4)]
    requests = plan_requests(
        [_map(speech, 16.0)], ("agent",), ChunkPolicy(), plan="packed", sample_rate=RATE
    )
    assert len(requests) == 1
    got = speech_spans(requests[0])
    want = [(0.3, 2.1), (3.6, 6.0), (9.0, 12.0), (14.1, 14.4)]
    assert len(got) == len(want)
    for (a, b), (x, y) in zip(got, want, strict=True):
        assert a == pytest.approx(x, abs=0.031)
        assert b == pytest.approx(y, abs=0.031)


def test_figures_of_a_known_conversation() -> None:
    """Agent and customer with one overlap that is an interruption and one backchannel."""
    talk = {
        "agent": [(1.0, 5.0), (8.0, 12.0), (12.5, 12.9)],
        "customer": [(4.5, 7.5), (10.0, 10.5), (13.0, 20.0)],
    }
    segments = [
        _segment("agent", 1.0, 12.0, "hello how can I help " * 4, "neutral"),
        _segment("customer", 4.5, 20.0, "my line is dead " * 6, "angry"),
    ]
    figures = call_analytics(talk, segments, duration_s=30.0)
    assert figures.talk_s == pytest.approx(17.9)  # 1-7.5, 8-12, 12.5-12.9, 13-20
    assert figures.non_talk_s == pytest.approx(12.1)
    assert figures.hold_s == 0
    assert figures.longest_silence_s == pytest.approx(0.5)  # 7.5-8 and 12-12.5; first wins
    assert figures.longest_silence_start_s == pytest.approx(7.5)
    assert figures.overlap_s == pytest.approx(1.0)  # 4.5-5 and 10-10.5
    assert figures.overlaps == 2
    # The customer's 4.5 s start cuts into the agent; 10-10.5 is a backchannel.
    assert figures.interruptions == 1
    by_role = {r.role: r for r in figures.roles}
    assert by_role["customer"].interruptions == 1
    assert by_role["agent"].interruptions == 0
    assert by_role["agent"].talk_s == pytest.approx(8.4)
    assert by_role["customer"].talk_s == pytest.approx(10.5)
    assert by_role["agent"].words == 20
    assert by_role["customer"].words == 24
    assert by_role["agent"].words_per_minute == pytest.approx(20 * 60 / 8.4, abs=0.05)
    # The agent's first turn after the customer began (8.0) answers talk that ended at 7.5.
    assert figures.first_agent_response_s == pytest.approx(0.5)
    assert [(e.role, e.emotion) for e in figures.emotions] == [
        ("agent", "neutral"),
        ("customer", "angry"),
    ]
    out = figures.to_json()
    assert out["roles"][0]["talk_share"] == pytest.approx(8.4 / 17.9, abs=0.001)


def test_an_agent_answering_in_overlap_responds_in_negative_time() -> None:
    talk = {"agent": [(0.5, 2.0), (5.0, 9.0)], "customer": [(2.2, 5.4)]}
    figures = call_analytics(talk, [], duration_s=10.0)
    assert figures.first_agent_response_s == pytest.approx(-0.4)
    assert figures.interruptions == 1
    assert figures.overlaps == 1


def test_hold_is_neither_talk_nor_silence() -> None:
    """The VAD calls hold music speech; inside the hold stretches no talk is counted."""
    talk = {
        "agent": [(1.0, 4.0), (5.0, 35.0), (36.0, 40.0)],  # 5-35: music heard as speech
        "customer": [(40.5, 45.0)],
    }
    figures = call_analytics(talk, [], duration_s=50.0, hold=[(5.0, 35.0)])
    assert figures.hold_s == pytest.approx(30.0)
    assert {r.role: r.talk_s for r in figures.roles} == {"agent": 7.0, "customer": 4.5}
    assert figures.non_talk_s == pytest.approx(50 - 11.5 - 30)
    assert figures.longest_silence_s == pytest.approx(1.0)  # 4-5 and 35-36, not the hold


def test_overlaps_shorter_than_the_vad_edge_are_not_counted() -> None:
    talk = {"agent": [(0.0, 3.05)], "customer": [(3.0, 6.0)]}
    figures = call_analytics(talk, [], duration_s=6.0)
    assert figures.overlaps == 0
    assert figures.overlap_s == 0
    assert figures.interruptions == 0


@pytest.mark.parametrize("talk", [{}, {"agent": [], "customer": []}])
def test_a_call_without_speech_gives_zeros_and_nulls(talk: dict) -> None:
    """A silent call, or one whose requests failed to plan: zeros where a figure is a sum,
    null where there is nothing to measure."""
    figures = call_analytics(talk, [], duration_s=12.0)
    out = figures.to_json()
    assert out["talk_s"] == 0
    assert out["non_talk_s"] == 12.0
    assert out["longest_silence_s"] == 0
    assert out["longest_silence_start_s"] is None
    assert out["first_agent_response_s"] is None
    assert all(r["talk_s"] == 0 and r["words_per_minute"] is None for r in out["roles"])
    assert out["emotions"] == []


def test_a_silent_channel_keeps_its_role() -> None:
    requests = plan_requests(
        [_map([(1.0, 4.0)], 6.0), _map([], 6.0)],
        ("agent", "customer"),
        ChunkPolicy(),
        plan="packed",
        sample_rate=RATE,
    )
    talk = talk_spans(requests, ("agent", "customer"))
    figures = call_analytics(talk, [], duration_s=6.0)
    assert [(r.role, r.talk_s) for r in figures.roles] == [
        ("agent", pytest.approx(3.0 - VAD_ONSET_S - VAD_HANGOVER_S, abs=0.031)),
        ("customer", 0.0),
    ]
    assert figures.overlaps == 0
    assert figures.first_agent_response_s is None


def test_a_mixed_call_has_no_roles_to_compare() -> None:
    figures = call_analytics({None: [(0.5, 3.0), (4.0, 6.0)]}, [], duration_s=8.0)
    assert figures.talk_s == pytest.approx(4.5)
    assert figures.overlap_s is None
    assert figures.interruptions is None
    assert figures.to_json()["roles"][0]["interruptions"] is None


def test_emotion_timeline_joins_runs_of_one_emotion_per_role() -> None:
    segments = [
        _segment("agent", 0.0, 2.0, "a", "neutral"),
        _segment("customer", 2.5, 4.0, "b", "sad"),
        _segment("agent", 4.5, 6.0, "c", "neutral"),
        _segment("agent", 7.0, 8.0, "d", "happy"),
        _segment("customer", 8.5, 9.0, "e", None),
    ]
    timeline = call_analytics({}, segments, duration_s=10.0).emotions
    assert [(e.role, e.start_s, e.end_s, e.emotion) for e in timeline] == [
        ("agent", 0.0, 6.0, "neutral"),
        ("customer", 2.5, 4.0, "sad"),
        ("agent", 7.0, 8.0, "happy"),
    ]


def test_words_are_counted_per_script() -> None:
    assert word_count("Hello, my order #42 didn't arrive — twice.") == 7
    assert word_count("欢迎使用 ok") == 5
    assert word_count("  ") == 0


# 70 s two-party calls from real speech: about 20 turns, 4 of them in overlap, backchannels.
@pytest.mark.parametrize(
    "spec",
    [
        CallSpec("analytics-a", 70, seed=7, codec="pcm_s16le"),
        CallSpec("analytics-b", 70, seed=8),  # 8 kHz mu-law
    ],
    ids=["pcm16k", "ulaw8k"],
)
def test_figures_of_a_generated_call_match_its_truth(spec: CallSpec, tmp_path: Path) -> None:
    """The worker's decode, VAD and packed plan, then the analytics, against the figures of
    the generator's words: seconds within 0.3 s, counts within one.

    These calls have no pause within 60 ms of the silence threshold: such a pause is joined
    into talk or not as the VAD's frame edges fall, which moves talk by the whole pause
    (docs/analytics.md; the benchmark counts them over the corpus)."""
    call = write_call(spec, tmp_path)
    assert not borderline_pauses(call.truth)
    found = errors(measured(call, tmp_path), truth_analytics(call))
    for name, (truth, error) in found.items():
        bound = 1 if name in ("overlaps", "interruptions") else 0.3
        assert abs(error) <= bound, (name, truth, error)


def test_hold_found_by_the_detector_is_reported(tmp_path: Path) -> None:
    """A call with 15 s on hold: the hold the music detector finds is reported within 0.15 s
    (its stretch widened over the margins where the music plays), and every figure is within
    0.3 s (or one count) of the truth."""
    spec = CallSpec("analytics-hold", 75, seed=5, hold_s=15, hold_at=0.4, codec="pcm_s16le")
    call = write_call(spec, tmp_path)
    found = errors(measured(call, tmp_path), truth_analytics(call))
    assert found["hold_s"][0] == pytest.approx(15.0)
    assert abs(found["hold_s"][1]) <= 0.15
    for name, (truth, error) in found.items():
        assert abs(error) <= (1 if name in ("overlaps", "interruptions") else 0.3), (name, truth)
    # Without the hold stretch, the music filter has still taken the music out of the speech:
    # at most the margins it gives back to speech at each end (0.75 s) count as the agent's.
    (tmp_path / "unheld").mkdir()
    unheld = measured(call, tmp_path / "unheld", hold=False)
    agent = next(r for r in unheld.roles if r.role == "agent")
    assert agent.talk_s <= found["talk_agent_s"][0] + 3.0  # 15 s of music would add 15
    assert unheld.hold_s == 0


def test_tones_are_reported_apart_from_talk_and_hold() -> None:
    """Keyed digits are nobody's talk and no hold; a ringback is hold. Digits heard on both
    channels count once; the timeline lists every run by role, in order of start."""
    tones = [
        ToneRun("tone", "agent", 30.0, 36.0),
        ToneRun("dtmf", "customer", 12.0, 14.5),
        ToneRun("dtmf", "agent", 13.0, 15.0),  # the agent's line hears the digits too
        ToneRun("dtmf", "customer", 58.0, 61.0),  # runs past the end of the call
    ]
    talk = {"agent": [(1.0, 10.0)], "customer": [(16.0, 25.0)]}
    figures = call_analytics(talk, [], duration_s=60.0, hold=[(30.0, 40.0)], tones=tones)
    assert figures.dtmf_s == pytest.approx(3.0 + 2.0)
    assert figures.tone_s == pytest.approx(6.0)
    assert figures.hold_s == pytest.approx(10.0)
    assert figures.talk_s == pytest.approx(18.0)
    assert figures.non_talk_s == pytest.approx(60.0 - 18.0 - 10.0)  # digits included
    timeline = figures.to_json()["tones"]
    assert [(t["kind"], t["role"], t["start_s"]) for t in timeline] == [
        ("dtmf", "customer", 12.0),
        ("dtmf", "agent", 13.0),
        ("tone", "agent", 30.0),
        ("dtmf", "customer", 58.0),
    ]
    assert [ToneRun.from_json(t) for t in timeline] == sorted(tones, key=lambda t: t.start_s)


def test_the_final_event_carries_the_tones_the_plan_found() -> None:
    tones = [ToneRun("dtmf", "customer", 12.0, 14.5), ToneRun("tone", "agent", 30.0, 40.0)]
    final = _final([], split=True, hold=[(30.0, 40.0)], tones=tones)
    assert not list(schemas.validator("final").iter_errors(final))
    figures = final["analytics"]
    assert (figures["dtmf_s"], figures["tone_s"], figures["hold_s"]) == (2.5, 10.0, 10.0)
    assert [t["kind"] for t in figures["tones"]] == ["dtmf", "tone"]
    no_tones = _final([], split=True, hold=[])["analytics"]
    assert (no_tones["dtmf_s"], no_tones["tone_s"], no_tones["tones"]) == (0.0, 0.0, [])


def _final(
    results: list,
    *,
    split: bool,
    hold: list[tuple[float, float]],
    tones: list[ToneRun] | None = None,
) -> FinalEvent:
    recording = parse_recording(
        orjson.dumps({"schema_version": 2, "recording_id": "r", "audio_url": "file:///a.wav"}),
        RecognitionDefaults(model="qwen3-asr-flash"),
    )
    return final_event(
        recording,
        results,
        plan="packed",
        split=split,
        audio_seconds=60.0,
        attempts=1,
        timings={},
        backend="dashscope",
        price_per_second_usd=0.0,
        hold=hold,
        tones=tones or (),
    )


def test_the_final_event_carries_the_analytics_of_its_requests() -> None:
    """One packed request per channel; the hold the detector found is reported, not talked."""
    requests = plan_requests(
        [_map([(1.0, 4.0), (30.0, 50.0)], 60.0), _map([(4.5, 9.0)], 60.0)],
        ("agent", "customer"),
        ChunkPolicy(),
        plan="packed",
        sample_rate=RATE,
    )
    results = [(r, Result("one two three", "en", "neutral", 5, None)) for r in requests]
    final = _final(results, split=True, hold=[(30.0, 50.0)])
    assert not list(schemas.validator("final").iter_errors(final))
    figures = final["analytics"]
    edges = VAD_ONSET_S + VAD_HANGOVER_S
    assert figures["hold_s"] == 20.0
    assert [(r["role"], r["words"]) for r in figures["roles"]] == [("agent", 3), ("customer", 3)]
    talk = {r["role"]: r["talk_s"] for r in figures["roles"]}
    assert talk["agent"] == pytest.approx(3.0 - edges, abs=0.031)
    assert talk["customer"] == pytest.approx(4.5 - edges, abs=0.031)


@pytest.mark.parametrize("split", [True, False])
def test_a_call_without_requests_still_gets_analytics(split: bool) -> None:
    """Nothing was planned (a silent recording): figures are zeros and nulls, schema-valid."""
    final = _final([], split=split, hold=[])
    assert not list(schemas.validator("final").iter_errors(final))
    figures = final["analytics"]
    assert figures["talk_s"] == 0
    assert figures["non_talk_s"] == 60.0
    assert [r["role"] for r in figures["roles"]] == (["agent", "customer"] if split else [None])
