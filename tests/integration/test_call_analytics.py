"""Call analytics on the real stack: a generated two-party stereo call through a worker, a real
broker and the scripted ASR server; the final event's ``analytics`` against the call's truth.

The call comes from the benchmark corpus's generator (tests/benchmarks/calls.py): real speech,
turns, overlaps and backchannels, with the words' places known. The worker decodes, listens and
plans (``packed``: one request per channel), so the figures come from the VAD's stretches.
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.analytics import word_count
from streams.decode import SAMPLE_RATE
from tests.audio import write_wav
from tests.benchmarks.bench_analytics import borderline_pauses, truth_analytics
from tests.benchmarks.calls import CallSpec, compose, write_call
from tests.fixtures.worker import Stack, validate
from tests.hold_sounds import SOUNDS

pytestmark = pytest.mark.integration

# 70 s, about 20 turns, 4 of them in overlap; no pause near the silence threshold.
SPEC = CallSpec("analytics-it", 70, seed=7, codec="pcm_s16le")


async def test_the_final_event_carries_the_calls_analytics(
    stack: Stack, scripted_server: Any
) -> None:
    call = write_call(SPEC, stack.tmp)
    assert not borderline_pauses(call.truth)
    truth = truth_analytics(call)
    stack.start_worker()
    base = {"schema_version": 2, "audio_url": call.path.as_uri()}
    await stack.publish(
        [
            {**base, "recording_id": "split", "channels": {"layout": "split", "plan": "packed"}},
            {**base, "recording_id": "mixed", "channels": {"layout": "mix"}},
        ]
    )
    messages = await stack.collect(
        lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= {"split", "mixed"},
        timeout_s=90,
        topics=(stack.final, stack.failed),
    )
    events = {}
    for message in messages:
        validate(message)  # the analytics object included
        events[message.value["recording_id"]] = message.value
    split, mixed = events["split"], events["mixed"]
    assert split["type"] == "final", split
    assert mixed["type"] == "final", mixed

    figures = split["analytics"]
    talk = {r["role"]: r for r in figures["roles"]}
    assert set(talk) == {"agent", "customer"}
    for role in truth.roles:
        assert talk[role.role]["talk_s"] == pytest.approx(role.talk_s, abs=0.3), role.role
    assert figures["talk_s"] == pytest.approx(truth.talk_s, abs=0.3)
    assert figures["non_talk_s"] == pytest.approx(truth.non_talk_s, abs=0.3)
    assert figures["overlap_s"] == pytest.approx(truth.overlap_s, abs=0.3)
    assert truth.overlaps is not None
    assert truth.interruptions is not None
    assert abs(figures["overlaps"] - truth.overlaps) <= 1
    assert abs(figures["interruptions"] - truth.interruptions) <= 1
    assert figures["hold_s"] == 0
    assert figures["duration_s"] == split["audio_seconds"]
    # Speaking rate is the role's words (the scripted recogniser's text) over its talk.
    for role, entry in talk.items():
        words = sum(word_count(s["text"]) for s in split["segments"] if s["role"] == role)
        assert entry["words"] == words > 0
        assert entry["words_per_minute"] == pytest.approx(words * 60 / entry["talk_s"], abs=0.1)
    # One request per channel under packed, each with the recogniser's emotion.
    timeline = figures["emotions"]
    assert sorted((e["role"], e["emotion"]) for e in timeline) == [
        ("agent", "neutral"),
        ("customer", "neutral"),
    ]
    assert [e["start_s"] for e in timeline] == sorted(e["start_s"] for e in timeline)

    # A mixed call is one channel: talk is anyone's, and who overlaps whom cannot be told.
    mixed_figures = mixed["analytics"]
    assert [r["role"] for r in mixed_figures["roles"]] == [None]
    assert mixed_figures["overlap_s"] is None
    assert mixed_figures["interruptions"] is None
    assert mixed_figures["first_agent_response_s"] is None
    # One channel joins the floor changes' short gaps too: at least the split call's talk.
    assert figures["talk_s"] - 0.3 <= mixed_figures["talk_s"] <= mixed["audio_seconds"]
    assert mixed_figures["non_talk_s"] == pytest.approx(
        mixed["audio_seconds"] - mixed_figures["talk_s"], abs=0.002
    )


async def test_keyed_digits_and_a_ringback_are_reported_where_they_were(
    stack: Stack, scripted_server: Any
) -> None:
    """A call whose hold is DTMF (a card number keyed in) and one whose hold is a ringback:
    each final names the tone's kind, role and place, counts DTMF as no hold and a ringback
    as hold, and no request carried the tone."""
    spec = CallSpec("tones-it", 60, seed=7, hold_s=12, hold_at=0.5, codec="pcm_s16le")
    holds = {}
    for kind in ("dtmf", "ringback-us"):
        pcm, truth = compose(spec, hold_sound=SOUNDS[kind])
        assert truth.hold is not None
        holds[kind] = (truth.hold[0] / SAMPLE_RATE, truth.hold[1] / SAMPLE_RATE)
        write_wav(stack.tmp / f"{kind}.wav", pcm)
    stack.start_worker()
    await stack.publish(
        [
            {
                "schema_version": 2,
                "recording_id": kind,
                "audio_url": (stack.tmp / f"{kind}.wav").as_uri(),
                "channels": {"layout": "split", "plan": "packed"},
            }
            for kind in holds
        ]
    )
    messages = await stack.collect(
        lambda ms: {m.value["recording_id"] for m in stack.terminal(ms)} >= set(holds),
        timeout_s=90,
        topics=(stack.final, stack.failed),
    )
    finals = {}
    for message in messages:
        validate(message)
        finals[message.value["recording_id"]] = message.value
    for kind, (start, end) in holds.items():
        final = finals[kind]
        assert final["type"] == "final", final
        figures = final["analytics"]
        expected = "dtmf" if kind == "dtmf" else "tone"
        found = [t for t in figures["tones"] if t["kind"] == expected]
        assert found, figures["tones"]
        # On the agent's line, inside the hold (give or take one 60 ms piece of the detector).
        assert {t["role"] for t in figures["tones"]} == {"agent"}
        assert all(start - 0.06 <= t["start_s"] < t["end_s"] <= end + 0.06 for t in found)
        covered = figures["dtmf_s"] if kind == "dtmf" else figures["tone_s"]
        assert 0.5 * (end - start) <= covered <= end - start + 0.12
        if kind == "dtmf":
            assert figures["hold_s"] == 0  # keying a number is not waiting
        else:
            assert figures["hold_s"] >= figures["tone_s"]
        # The requests skipped the tone: no stretch sent lies inside its runs.
        sent = [s for seg in final["segments"] for s in seg["stretches"]]
        for tone in found:
            inside = sum(max(0.0, min(b, tone["end_s"]) - max(a, tone["start_s"])) for a, b in sent)
            assert inside <= 0.1 * (tone["end_s"] - tone["start_s"]), (tone, sent)
