"""Words into sentences for the long-file API's result, and the speech stretches of a channel.

A sentence ends after a word whose punctuation closes one (``. ? !``, their full-width forms,
``…``; not the full stop of an abbreviation such as "Mr." or of an initial) and before a
pause of :data:`PAUSE_S` or more between two words. Each word of the result carries its text
without the trailing punctuation and the punctuation apart, as the vendor's ``enable_words``
result does; times are whole milliseconds on the file's timeline.

:func:`speech_stretches` finds where a channel speaks with a plain level gate; the scripted
engine lays its words over those stretches so that its sentences follow the real speech.
Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streams.asr_server.engine import Word

__all__ = [
    "PAUSE_S",
    "channel_transcript",
    "speech_stretches",
    "split_punctuation",
    "split_sentences",
]

PAUSE_S = 0.5
"""A silence between two words at least this long ends a sentence."""
FRAME_S = 0.02
"""Frame of the level gate."""
FLOOR_DBFS = -55.0
"""Frames quieter than this are never speech."""
BELOW_PEAK_DB = 35.0
"""Frames this far below the channel's loud frames are silence."""
ABOVE_NOISE_DB = 12.0
"""Frames less than this above the channel's quiet frames (10th percentile) are noise."""
MIN_SPEECH_S = 0.12
"""A shorter burst (a click, a breath) is not a stretch of speech."""
_ENDS = frozenset(".?!\u3002\uff1f\uff01\u2026")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e approx dept inc ltd".split()  # noqa: SIM905
)
"""Words whose full stop does not end a sentence (compared lowercased, without the stop)."""
_CJK = re.compile("[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
# Trailing punctuation: ASCII, CJK full stop/comma/enumeration comma, full-width ; : ? ! ),
# ellipsis, closing quotes.
_TRAILING = re.compile(
    "[\\s.,;:?!\"')\u3002\uff0c\u3001\uff1b\uff1a\uff1f\uff01\uff09\u2026\u201d\u2019]+$"
)


def split_punctuation(token: str) -> tuple[str, str]:
    """Split a written word into its text and its trailing punctuation: ``"no?"`` → ("no", "?")."""
    token = token.strip()
    found = _TRAILING.search(token)
    if found is None or found.start() == 0:
        return token, ""
    return token[: found.start()], found.group().strip()


def _initial(text: str) -> bool:
    """A single capital letter other than "I" (as in "J. Smith")."""
    return len(text) == 1 and text.isupper() and text != "I"


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def split_sentences(words: Sequence[Word], *, pause_s: float = PAUSE_S) -> list[list[Word]]:
    """Group ``words`` (in time order) into sentences on closing punctuation and long pauses."""
    sentences: list[list[Word]] = []
    current: list[Word] = []
    for word in words:
        if current and word.begin_s - current[-1].end_s >= pause_s:
            sentences.append(current)
            current = []
        current.append(word)
        text, punctuation = split_punctuation(word.text)
        if punctuation == "." and (text.lower() in _ABBREVIATIONS or _initial(text)):
            continue  # "Mr." or an initial: the sentence goes on
        if punctuation and punctuation[-1] in _ENDS:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def _join(parts: Iterable[str]) -> str:
    """Join written words: no space next to a CJK character, one space elsewhere."""
    text = ""
    for part in parts:
        if text and not (_CJK.search(text[-1]) or _CJK.match(part)):
            text += " "
        text += part
    return text


def channel_transcript(
    channel_id: int,
    words: Sequence[Word],
    *,
    language: str | None,
    emotion: str | None,
    pause_s: float = PAUSE_S,
) -> dict[str, Any]:
    """One entry of the result's ``transcripts``: the channel's text, sentences and words."""
    sentences: list[dict[str, Any]] = []
    texts: list[str] = []
    for index, group in enumerate(split_sentences(words, pause_s=pause_s)):
        items = []
        for word in group:
            text, punctuation = split_punctuation(word.text)
            items.append(
                {
                    "begin_time": _ms(word.begin_s),
                    "end_time": max(_ms(word.end_s), _ms(word.begin_s)),
                    "text": text,
                    "punctuation": punctuation,
                }
            )
        sentences.append(
            {
                "sentence_id": index,
                "begin_time": items[0]["begin_time"],
                "end_time": items[-1]["end_time"],
                "language": language,
                "emotion": emotion or "neutral",
                "text": _join(word.text.strip() for word in group),
                "words": items,
            }
        )
        texts.append(sentences[-1]["text"])
    return {"channel_id": channel_id, "text": _join(texts), "sentences": sentences}


def speech_stretches(
    pcm: np.ndarray, sample_rate: int = 16_000, *, pause_s: float = PAUSE_S
) -> list[tuple[float, float]]:
    """Stretches ``(begin_s, end_s)`` of speech in int16 mono ``pcm``.

    A frame is loud when its RMS is above :data:`FLOOR_DBFS`, within :data:`BELOW_PEAK_DB` of
    the channel's loud frames (their 95th percentile) and :data:`ABOVE_NOISE_DB` over its
    quiet ones (10th percentile; at most 10 dB under the loud ones); loud frames
    closer than ``pause_s`` join one stretch, and stretches shorter than
    :data:`MIN_SPEECH_S` are dropped.
    """
    frame = max(1, round(FRAME_S * sample_rate))
    count = len(pcm) // frame
    if count == 0:
        return []
    frames = pcm[: count * frame].astype(np.float64).reshape(count, frame) / 32768.0
    level = 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    peak = float(np.percentile(level, 95))
    noise = float(np.percentile(level, 10))
    # Over the floor, near enough the peak, and clear of steady background noise (unless the
    # channel speaks nearly all the time, when its 10th percentile is speech too).
    threshold = max(FLOOR_DBFS, peak - BELOW_PEAK_DB, min(noise + ABOVE_NOISE_DB, peak - 10.0))
    loud = level > threshold
    stretches: list[list[int]] = []
    gap = max(1, round(pause_s / FRAME_S))
    for index in np.flatnonzero(loud):
        if stretches and index - stretches[-1][1] < gap:
            stretches[-1][1] = int(index) + 1
        else:
            stretches.append([int(index), int(index) + 1])
    seconds = frame / sample_rate
    return [
        (begin * seconds, end * seconds)
        for begin, end in stretches
        if (end - begin) * seconds >= MIN_SPEECH_S
    ]
