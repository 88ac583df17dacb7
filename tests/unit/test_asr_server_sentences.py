"""Sentence splitting and speech stretches of the long-file API's result (no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from streams.asr_server.engine import Word
from streams.asr_server.scripted import ScriptedEngine
from streams.asr_server.sentences import (
    channel_transcript,
    speech_stretches,
    split_punctuation,
    split_sentences,
)

RATE = 16_000


def _speech(*plan: tuple[str, float]) -> np.ndarray:
    """PCM from ("speech" | "silence", seconds) steps: noise at -20 dBFS or near-silence."""
    rng = np.random.default_rng(7)
    parts = []
    for kind, seconds in plan:
        n = round(seconds * RATE)
        level = 3000 if kind == "speech" else 3
        parts.append((rng.standard_normal(n) * level).astype(np.int16))
    return np.concatenate(parts)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("Hello,", ("Hello", ",")),
        ("no?", ("no", "?")),
        ("U.S.", ("U.S", ".")),
        ("word", ("word", "")),
        ("模型。", ("模型", "。")),
        ("...", ("...", "")),
    ],
)
def test_split_punctuation(token: str, expected: tuple[str, str]) -> None:
    assert split_punctuation(token) == expected


def test_sentences_end_on_closing_punctuation_and_on_long_pauses() -> None:
    words = [
        Word("Hello,", 0.0, 0.4),
        Word("there.", 0.5, 0.9),
        Word("How", 1.0, 1.2),
        Word("are", 1.3, 1.5),
        Word("you", 2.2, 2.5),  # 0.7 s pause before: a new sentence without punctuation
        Word("today?", 2.6, 3.0),
    ]
    groups = split_sentences(words)
    assert [[w.text for w in g] for g in groups] == [
        ["Hello,", "there."],
        ["How", "are"],
        ["you", "today?"],
    ]
    assert split_sentences(words, pause_s=1.0)[1] == words[2:]


def test_abbreviations_and_initials_do_not_end_a_sentence() -> None:
    words = [
        Word(t, i * 0.3, i * 0.3 + 0.2)
        for i, t in enumerate(["And", "Mr.", "J.", "Smith", "came."])
    ]
    assert len(split_sentences(words)) == 1


def test_channel_transcript_shape_and_milliseconds() -> None:
    words = [Word("Hello,", 0.0, 0.4), Word("world.", 0.5, 0.9), Word("Bye.", 2.0, 2.3)]
    result = channel_transcript(1, words, language="en", emotion=None)
    assert result["channel_id"] == 1
    assert result["text"] == "Hello, world. Bye."
    first, second = result["sentences"]
    assert (first["sentence_id"], first["begin_time"], first["end_time"]) == (0, 0, 900)
    assert first["text"] == "Hello, world."
    assert first["words"][0] == {
        "begin_time": 0,
        "end_time": 400,
        "text": "Hello",
        "punctuation": ",",
    }
    assert (second["begin_time"], second["end_time"], second["emotion"]) == (2000, 2300, "neutral")


def test_cjk_text_joins_without_spaces() -> None:
    words = [Word("欢迎", 0.0, 0.3), Word("大家。", 0.3, 0.6)]
    assert channel_transcript(0, words, language="zh", emotion=None)["text"] == "欢迎大家。"


def test_speech_stretches_follow_the_loud_parts() -> None:
    pcm = _speech(("silence", 0.5), ("speech", 1.0), ("silence", 0.3), ("speech", 0.5),
                  ("silence", 1.0), ("speech", 1.2), ("silence", 0.4))  # fmt: skip
    stretches = speech_stretches(pcm, RATE)
    # The 0.3 s gap is a pause inside a turn; the 1.0 s gap separates two turns.
    assert len(stretches) == 2
    (b1, e1), (b2, e2) = stretches
    for got, want in ((b1, 0.5), (e1, 2.3), (b2, 3.3), (e2, 4.5)):
        assert abs(got - want) <= 0.05, stretches


def test_silence_has_no_stretches() -> None:
    assert speech_stretches(np.zeros(RATE * 2, np.int16), RATE) == []
    assert speech_stretches(np.zeros(0, np.int16), RATE) == []


def test_scripted_words_make_one_sentence_per_stretch_inside_the_speech() -> None:
    pcm = _speech(("silence", 0.4), ("speech", 2.0), ("silence", 0.8), ("speech", 1.5),
                  ("silence", 0.6))  # fmt: skip
    engine = ScriptedEngine()
    words = engine.timed_words(pcm)
    assert words == engine.timed_words(pcm)  # deterministic
    sentences = channel_transcript(0, words, language="en", emotion="neutral")["sentences"]
    assert len(sentences) == 2
    for sentence, (begin, end) in zip(sentences, ((400, 2400), (3200, 4700)), strict=True):
        assert abs(sentence["begin_time"] - begin) <= 60
        assert abs(sentence["end_time"] - end) <= 60
        times = [(w["begin_time"], w["end_time"]) for w in sentence["words"]]
        assert times == sorted(times)
        assert all(b <= e for b, e in times)
        assert sentence["words"][-1]["punctuation"] == "."
    # Words in proportion to the stretch, 2.5 a second by default.
    assert len(sentences[0]["words"]) == 5
