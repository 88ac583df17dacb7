"""The filetrans backend's pure parts: stretch map, result parsing, sentences to turns."""

from __future__ import annotations

import io
from typing import Any

import av
import numpy as np
import pytest

from streams.analytics import ToneRun
from streams.chunking import Request
from streams.decode import SpooledAudio
from streams.errors import RecognitionProtocolError
from streams.events import turns_of
from streams.filetrans_audio import (
    SECTION_GAP_S,
    StretchMap,
    compact_audio,
    section_of,
    union_stretches,
)
from streams.filetrans_client import billed_seconds
from streams.filetrans_final import TaskEntry, task_final
from streams.filetrans_result import parse_result, segments_of

RATE = 16_000
# Speech at 1-2 s and 5-6 s of the call; 0.4 s of made-up silence between them in the file.
MAP = StretchMap(((1.0, 2.0, 0.0), (5.0, 6.0, 1.4)), 0.4)


@pytest.mark.parametrize(
    ("file_s", "end", "call_s"),
    [
        (0.0, False, 1.0),
        (0.5, False, 1.5),
        (1.0, True, 2.0),
        (1.2, False, 5.0),  # in the gap: a start goes to the next stretch
        (1.2, True, 2.0),  # an end to the previous one
        (1.4, False, 5.0),
        (2.0, False, 5.6),
        (9.0, True, 6.0),  # beyond the file: the last stretch's end
    ],
)
def test_file_times_map_back_to_the_call_timeline(file_s: float, end: bool, call_s: float) -> None:
    assert MAP.call_time(file_s, end=end) == pytest.approx(call_s)


def test_the_map_survives_the_ledger_and_knows_the_file_length() -> None:
    assert StretchMap.from_json(MAP.to_json()) == MAP
    assert MAP.file_seconds == pytest.approx(2.4)


def _request(channel: int, *stretches: tuple[float, float]) -> Request:
    return Request(
        channel,
        None,
        0,
        tuple((round(a * RATE), round(b * RATE)) for a, b in stretches),
        RATE,
    )


def test_the_channels_are_sections_of_one_mono_track(tmp_path: Any) -> None:
    """Each channel's stretches, with gaps, form its section; the sections follow each other
    SECTION_GAP_S apart on one track, so the file is as long as both parties' speech."""
    samples = 8 * RATE
    paths = []
    for channel in range(2):
        pcm = np.zeros(samples, dtype=np.int16)
        pcm[channel * RATE : (channel + 3) * RATE] = 1000 * (channel + 1)
        path = tmp_path / f"{channel}.raw"
        pcm.tofile(path)
        paths.append(path)
    audio = SpooledAudio(tuple(paths), samples, RATE, 2, RATE, "pcm_s16le")
    requests = [_request(0, (0.5, 1.5)), _request(1, (1.0, 2.5)), _request(0, (6.0, 7.0))]
    assert union_stretches(requests) == [(8000, 40000), (96000, 112000)]
    compact = compact_audio(audio, requests, [0, 1], 0.5)
    # Channel 0: two stretches 0.5 s apart (2.5 s); then the section gap; then channel 1.
    assert compact.maps[0].stretches == ((0.5, 1.5, 0.0), (6.0, 7.0, 1.5))
    assert compact.maps[1].stretches == ((1.0, 2.5, 2.5 + SECTION_GAP_S),)
    assert compact.file_seconds == pytest.approx(2.5 + SECTION_GAP_S + 1.5)
    assert [section_of(compact.maps, t) for t in (0.0, 2.4, 2.6, 4.5, 9.0)] == [0, 0, 0, 1, 1]
    with av.open(io.BytesIO(compact.flac)) as container:
        stream = container.streams.audio[0]
        assert stream.channels == 1
        pcm = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)[0]
    assert len(pcm) == round(compact.file_seconds * RATE)
    assert pcm[100] == 1000  # channel 0 at 0.5 s of the call
    assert not pcm[round(1.5 * RATE) + 10 : round(1.5 * RATE) + 20].any()  # the gap
    assert not pcm[round(2.5 * RATE) + 10 : round((2.5 + SECTION_GAP_S) * RATE) - 10].any()
    assert pcm[round((2.5 + SECTION_GAP_S) * RATE) + 100] == 2000  # channel 1's section


def test_sentences_of_one_track_belong_to_the_section_they_start_in() -> None:
    """The one-track file's result: each sentence and its words go back through its own
    section's map, with that section's channel and role."""
    second = StretchMap(((3.0, 4.0, 2.4 + SECTION_GAP_S),), 0.4)
    begin = round((2.4 + SECTION_GAP_S) * 1000)
    data = {
        "transcripts": [
            {
                "channel_id": 0,
                "sentences": [
                    {"begin_time": 100, "end_time": 2300, "text": "Hello. Bye.",
                     "words": [{"begin_time": 1900, "end_time": 2300, "text": "Bye."}]},
                    {"begin_time": begin + 100, "end_time": begin + 600, "text": "Hi.",
                     "words": [{"begin_time": begin + 100, "end_time": begin + 600,
                                "text": "Hi."}]},
                ],
            }
        ]
    }  # fmt: skip
    transcript = parse_result(data, [MAP, second], ["agent", "customer"], [0, 1], tracks=1)
    got = [(s["start"], s["end"], s["role"], s["channel"]) for s in transcript.sentences]
    assert got == [(1.1, 5.9, "agent", 0), (3.1, 3.6, "customer", 1)]
    assert [(w["text"], w["start"], w["sentence"]) for w in transcript.words] == [
        ("Bye.", 5.5, 0),
        ("Hi.", 3.1, 1),
    ]
    with pytest.raises(RecognitionProtocolError):  # one track: no channel_id 1
        parse_result(
            {"transcripts": [{"channel_id": 1, "sentences": []}]},
            [MAP, second],
            ["agent", "customer"],
            [0, 1],
            tracks=1,
        )


def _result() -> dict[str, Any]:
    def sentence(sid: int, begin: int, end: int, text: str, words: list[Any]) -> dict[str, Any]:
        return {
            "sentence_id": sid,
            "begin_time": begin,
            "end_time": end,
            "text": text,
            "language": "en",
            "emotion": "neutral",
            "words": [
                {"begin_time": b, "end_time": e, "text": t, "punctuation": ""} for b, e, t in words
            ],
        }

    return {
        "transcripts": [
            {
                "channel_id": 1,
                "text": "Hi there.",
                "sentences": [
                    sentence(
                        0, 1500, 1900, "Hi there.", [(1500, 1650, "Hi"), (1700, 1900, "there.")]
                    )
                ],
            },
            {
                "channel_id": 0,
                "text": "Hello. Bye.",
                "sentences": [
                    sentence(0, 100, 900, "Hello.", [(100, 900, "Hello.")]),
                    sentence(1, 2000, 2300, "Bye.", [(2000, 2300, "Bye.")]),
                ],
            },
        ]
    }


def test_result_sentences_and_words_come_back_on_the_call_timeline_in_order() -> None:
    transcript = parse_result(_result(), [MAP, MAP], ["agent", "customer"], [0, 1])
    got = [(s["start"], s["end"], s["role"], s["text"]) for s in transcript.sentences]
    assert got == [
        (1.1, 1.9, "agent", "Hello."),
        (5.1, 5.5, "customer", "Hi there."),
        (5.6, 5.9, "agent", "Bye."),
    ]
    assert [(w["text"], w["sentence"]) for w in transcript.words] == [
        ("Hello.", 0),
        ("Hi", 1),
        ("there.", 1),
        ("Bye.", 2),
    ]
    for word in transcript.words:
        sentence = transcript.sentences[word["sentence"]]
        assert sentence["start"] <= word["start"] <= word["end"] <= sentence["end"]


def test_sentences_become_turns_by_role() -> None:
    transcript = parse_result(_result(), [MAP, MAP], ["agent", "customer"], [0, 1])
    turns = turns_of(segments_of(transcript.sentences))
    assert [(t["role"], t["start_s"], t["end_s"]) for t in turns] == [
        ("agent", 1.1, 1.9),
        ("customer", 5.1, 5.5),
        ("agent", 5.6, 5.9),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        [],
        {"transcripts": [{"channel_id": 7, "sentences": []}]},
        {"transcripts": [{"channel_id": 0, "sentences": [{"begin_time": -1, "end_time": 1}]}]},
        {"transcripts": [{"channel_id": 0, "sentences": [{"begin_time": 0, "end_time": 1}]}]},
        {"transcripts": "x"},
    ],
)
def test_a_result_of_the_wrong_shape_is_a_protocol_error(bad: Any) -> None:
    with pytest.raises(RecognitionProtocolError):
        parse_result(bad, [MAP, MAP], ["agent", "customer"], [0, 1])


def test_billed_seconds_are_the_usage_rounded_up_else_each_channels_file() -> None:
    assert billed_seconds(10.2, 2, 5.0) == 11
    assert billed_seconds(None, 2, 5.1) == 12


def test_the_task_entry_round_trips_and_builds_a_schema_final() -> None:
    import schemas

    entry = TaskEntry(
        recording_id="r1",
        task_id="t1",
        source="recordings[3]@17",
        deadline=2e9,
        started=1e9,
        run=1,
        attempt_base=0,
        model="qwen3-asr-flash-filetrans",
        split=True,
        channels=[0, 1],
        roles=["agent", "customer"],
        maps=[MAP, MAP],
        audio_seconds=7.0,
        speech_seconds=2.0,
        sent_seconds=4.8,
        talk=[("agent", [(1.0, 2.0)]), ("customer", [(5.0, 6.0)])],
        tones=[ToneRun("dtmf", "customer", 3.0, 4.5)],
    )
    again = TaskEntry.from_value(entry.to_value())
    assert again is not None
    assert again.maps == [MAP, MAP]
    assert again.tones == entry.tones
    transcript = parse_result(_result(), again.maps, again.roles, again.channels)
    final = task_final(
        again,
        transcript,
        billed_seconds=6,
        attempts=3,
        price_per_second_usd=0.001,
        finished=1e9 + 5,
    )
    errors = list(schemas.validator("final").iter_errors(final))
    assert not errors, errors
    assert final["text"] == "agent: Hello.\ncustomer: Hi there.\nagent: Bye."
    assert final["billed_seconds"] == 6
    assert final["analytics"]["dtmf_s"] == 1.5  # the keyed digits kept in the ledger entry
