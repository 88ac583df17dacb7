"""The filetrans backend's result file: read, checked, and put back on the call's timeline.

The result (``transcription_url`` of a SUCCEEDED task) holds per channel its sentences, each
with its words, times in milliseconds into the *compacted* file (streams/filetrans_audio.py).
:func:`parse_result` checks its shape (a wrong one is ``asr_protocol_error``) and maps every
time back through the :class:`~streams.filetrans_audio.StretchMap`; :func:`segments_of` turns
the sentences into the final event's segments, whose consecutive sentences of one role are the
turns of a split call (streams/events.py's ``turns_of``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.errors import RecognitionProtocolError
from streams.event_types import Segment, Sentence, Word
from streams.filetrans_audio import StretchMap, section_of

__all__ = ["EMOTIONS", "Transcript", "parse_result", "segments_of"]

EMOTIONS = frozenset({"surprised", "neutral", "happy", "sad", "disgusted", "angry", "fearful"})
"""The emotions the final schema knows; anything else is reported as null."""


@dataclass
class Transcript:
    """A task's result on the call timeline: sentences ordered by start, words likewise."""

    sentences: list[Sentence] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise RecognitionProtocolError(f"filetrans result: {what} is not a time in ms: {value!r}")
    return float(value)


def _items(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RecognitionProtocolError(f"filetrans result: {what} is not a list of objects")
    return value


def parse_result(
    data: Any,
    maps: Sequence[StretchMap],
    roles: Sequence[str | None],
    channels: Sequence[int],
    *,
    tracks: int | None = None,
) -> Transcript:
    """The sentences and words of a result file, on the call timeline in seconds.

    ``maps[i]`` is the stretch map of call channel ``channels[i]``; ``roles`` the role of each
    call channel (None: a mixed call). With ``tracks`` fewer than the channels, the file is
    one track of sections (streams/filetrans_audio.py): a sentence belongs to the section its
    start falls in. Otherwise track ``i`` of the file carries ``channels[i]``.

    Raises:
        RecognitionProtocolError: not the documented shape.
    """
    if not isinstance(data, dict):
        raise RecognitionProtocolError("filetrans result is not a JSON object")
    pieces: list[tuple[Sentence, list[Word]]] = []
    for transcript in _items(data.get("transcripts"), "transcripts"):
        sections = tracks is not None and tracks < len(channels)
        track = transcript.get("channel_id", 0)
        if not isinstance(track, int) or not 0 <= track < (tracks or len(channels)):
            raise RecognitionProtocolError(f"filetrans result: unknown channel_id {track!r}")
        for raw in _items(transcript.get("sentences"), "sentences"):
            text = raw.get("text")
            if not isinstance(text, str):
                raise RecognitionProtocolError("filetrans result: a sentence without text")
            begin = _number(raw.get("begin_time"), "begin_time") / 1000
            end = max(begin, _number(raw.get("end_time"), "end_time") / 1000)
            index = section_of(maps, begin) if sections else track
            channel, stretch_map = channels[index], maps[index]
            role = roles[channel] if channel < len(roles) else None
            language = raw.get("language")
            emotion = raw.get("emotion")
            sentence: Sentence = {
                "start": round(stretch_map.call_time(begin), 3),
                "end": round(stretch_map.call_time(end, end=True), 3),
                "text": text.strip(),
                "channel": channel,
                "role": role,
                "language": language if isinstance(language, str) and language else None,
                "emotion": emotion if emotion in EMOTIONS else None,
            }
            sentence["end"] = max(sentence["end"], sentence["start"])
            words: list[Word] = []
            for w in _items(raw.get("words"), "words"):
                w_begin = _number(w.get("begin_time"), "word begin_time") / 1000
                w_end = max(w_begin, _number(w.get("end_time"), "word end_time") / 1000)
                word_text = w.get("text")
                if not isinstance(word_text, str):
                    raise RecognitionProtocolError("filetrans result: a word without text")
                start = round(stretch_map.call_time(w_begin), 3)
                words.append(
                    {
                        "start": start,
                        "end": max(start, round(stretch_map.call_time(w_end, end=True), 3)),
                        "text": word_text.strip(),
                    }
                )
            if sentence["text"] or words:
                pieces.append((sentence, words))
    pieces.sort(key=lambda p: (p[0]["start"], p[0]["channel"]))
    result = Transcript()
    for index, (sentence, words) in enumerate(pieces):
        result.sentences.append(sentence)
        for word in sorted(words, key=lambda w: w["start"]):
            word["sentence"] = index
            result.words.append(word)
    return result


def segments_of(sentences: Sequence[Sentence]) -> list[Segment]:
    """One segment per sentence with text (the final's ``segments``; turns join them)."""
    return [
        {
            "channel": s["channel"],
            "role": s["role"],
            "start_s": s["start"],
            "end_s": s["end"],
            "text": s["text"],
            "language": s["language"],
            "emotion": s["emotion"],
        }
        for s in sentences
        if s["text"]
    ]
