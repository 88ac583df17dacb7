"""Runs of digits in transcript text, however the recogniser wrote them.

With ITN off the recogniser writes what was said ("four one one one, double one ..."), with it
on it writes digits, grouped as the speaker paused ("4111 1111-1111 1111"). A :class:`DigitRun`
is one maximal stretch of digits, digit words and the separators between them, with the digits
it spells and where each spoken group lies, so the detectors in streams/redaction.py check
numbers (Luhn, phone plans, checksums) and never parse words themselves.

Digit words: English, German and Chinese (the recogniser's languages in tests/data/speech),
"double"/"triple" (and "doppel"), "oh"/"o" for zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DIGIT_WORDS", "DigitRun", "Group", "digit_runs", "open_tail", "opens_with_number"]

DIGIT_WORDS: dict[str, str] = {
    # English
    "zero": "0", "oh": "0", "o": "0", "nought": "0", "one": "1", "two": "2", "three": "3",
    "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
    # German
    "null": "0", "eins": "1", "zwei": "2", "zwo": "2", "drei": "3", "vier": "4",
    "fünf": "5", "fuenf": "5", "sechs": "6", "sieben": "7", "acht": "8", "neun": "9",
    # Chinese (幺 is how one is read out in phone and card numbers)
    "零": "0", "〇": "0",  # noqa: RUF001 (the ideographic zero)
    "一": "1", "幺": "1", "二": "2", "两": "2", "三": "3", "四": "4",
    "五": "5", "六": "6", "七": "7", "八": "8", "九": "9",
}  # fmt: skip
# Two digits in one word: card expiry dates and phone numbers are often read in pairs.
_TEENS = {
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "zehn": "10", "elf": "11", "zwölf": "12",
}  # fmt: skip
_TENS = {
    "twenty": "2", "thirty": "3", "forty": "4", "fifty": "5",
    "sixty": "6", "seventy": "7", "eighty": "8", "ninety": "9",
}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3, "doppel": 2, "doppelte": 2, "dreifach": 3}
# Zero read as a letter only counts next to other digits: "oh, I see" is not a number.
_WEAK = frozenset({"oh", "o"})
_CJK_DIGITS = "零〇一二三四五六七八九幺两"
_TOKEN = re.compile(rf"\d+|[{_CJK_DIGITS}]|[^\W\d_{_CJK_DIGITS}]+", re.UNICODE)
# What may stand between two groups of one number: pauses written as spaces, commas, dashes,
# slashes, dots, brackets (phones), and the full-width commas of Chinese text.
# Hesitations inside a number ("four one one, uh, one") do not end it.
_FILLERS = frozenset({"uh", "um", "umm", "er", "erm", "äh", "ähm", "hmm"})
_SEP = r"[\s,\-\u2013\u2014/.()\uff0c\u3001]"
_FILLER = "(?:" + "|".join(sorted(_FILLERS)) + r")\b"
_GAP = re.compile(rf"(?:{_SEP}{{0,4}}{_FILLER})*{_SEP}{{0,4}}", re.I)
_CLOSED = re.compile(r"(?:[?!\u3002\uff1f\uff01]|(?<![0-9])\.)[\s\"'\u201d]*$")
_ADDRESSY = re.compile(r"@|\w[._+]\w|\d")
_TAIL = re.compile(rf"(?:{_SEP}|\+|{_FILLER})*", re.I)
# An email address still being said: "john dot smith at example dot" may end in "com" with the
# next delta, "john.smith at exa" in "example.com". Held from the start of its name while the
# text ends like one: a name joined by "dot"/"underscore" (or written "." and "_"), or any
# name followed by "dot", "at" and the domain so far. A one-word name is shown before the word
# after it says it is one.
_SAID_SEP = r"(?:dot|punkt|underscore|unterstrich)"
_NAME_PART = rf"(?:(?:[._]|\s+{_SAID_SEP}\s+)[\w-]+)"
_ADDRESS_TAIL = (
    rf"(?:\s+{_SAID_SEP}|\s+(?:at|ät)(?:\s+[\w-]+(?:(?:\.|\s+(?:dot|punkt)\s+)[\w-]+)*"
    rf"(?:\.|\s+(?:dot|punkt))?)?)"
)
_OPEN_ADDRESS = re.compile(
    rf"(?<![\w.-])[\w-]+(?:{_NAME_PART}*{_ADDRESS_TAIL}|{_NAME_PART}+)[\s,]*$", re.I
)
_ADDRESS_REACH = 200


@dataclass(frozen=True)
class Group:
    """One spoken or written group of a run: ``text[start:end]`` spells ``digits``."""

    start: int
    end: int
    digits: str


@dataclass(frozen=True)
class DigitRun:
    """A maximal stretch of digits and digit words in a text, positions in that text."""

    start: int
    end: int
    groups: tuple[Group, ...]

    @property
    def digits(self) -> str:
        """The digits the run spells, separators dropped."""
        return "".join(g.digits for g in self.groups)


def _groups(text: str) -> list[Group | None]:
    """Each token as a digit group, or None for a word that is not one."""
    tokens = list(_TOKEN.finditer(text))
    out: list[Group | None] = []
    repeat = 0
    for match in tokens:
        word = match.group()
        low = word.lower()
        if word.isdigit() and word.isascii():
            digits = word
        elif low in DIGIT_WORDS:
            digits = DIGIT_WORDS[low]
        elif low in _TEENS:
            digits = _TEENS[low]
        elif low in _TENS:
            digits = _TENS[low] + "0"
        elif low in _FILLERS:
            continue
        elif low in _REPEAT:
            repeat = _REPEAT[low]
            out.append(Group(match.start(), match.end(), ""))
            continue
        else:
            repeat = 0
            out.append(None)
            continue
        start = match.start()
        if repeat:
            # "double four" is one group "44" from "double" on
            digits, repeat = digits * repeat, 0
            start = out.pop().start  # type: ignore[union-attr]
        last = out[-1] if out else None
        if (
            last is not None
            and len(digits) == 1
            and digits != "0"
            and text[last.start : last.end].lower() in _TENS
            and re.fullmatch(r"[\s-]?", text[last.end : match.start()])
        ):
            # "twenty seven" is 27, not 207
            out[-1] = Group(last.start, match.end(), last.digits[0] + digits)
            continue
        out.append(Group(start, match.end(), digits))
    return out


def digit_runs(text: str) -> list[DigitRun]:
    """The runs of ``text`` in order, each with at least one digit."""
    runs: list[DigitRun] = []
    current: list[Group] = []

    def close() -> None:
        # A trailing "double" with nothing after it, and weak zeros at either end, are words.
        while current and (not current[-1].digits or _weak(text, current, -1)):
            current.pop()
        while current and (not current[0].digits or _weak(text, current, 0)):
            current.pop(0)
        if current:
            runs.append(DigitRun(current[0].start, current[-1].end, tuple(current)))
        current.clear()

    for group in _groups(text):
        if group is None:
            close()
            continue
        if current and not _GAP.fullmatch(text, current[-1].end, group.start):
            close()
        current.append(group)
    close()
    return runs


def _weak(text: str, run: list[Group], end: int) -> bool:
    """Whether the group at ``end`` (0 or -1) of ``run`` is a zero said as a word ("oh") that
    is not part of the number: alone, or set off from it by punctuation ("Oh, 4111 ...")."""
    group = run[end]
    if text[group.start : group.end].lower() not in _WEAK:
        return False
    if len(run) == 1:
        return True
    other = run[1] if end == 0 else run[-2]
    gap = text[group.end : other.start] if end == 0 else text[other.end : group.start]
    return not gap.isspace()


def opens_with_number(text: str, *, min_digits: int = 3) -> bool:
    """Whether ``text`` begins with a run of at least ``min_digits`` digits (separators and
    hesitations before it only): the second half of a number whose first half ended the
    previous request."""
    runs = digit_runs(text)
    if not runs or not _TAIL.fullmatch(text, 0, runs[0].start):
        return False
    return sum(len(group.digits) for group in runs[0].groups) >= min_digits


def open_tail(text: str) -> int:
    """Where the part of ``text`` that the next words may still change begins.

    That is the last run of digits (with the separators after it) when nothing else follows
    it, a last word that may be part of an address or a number ("john.smith@exa",
    "4111-11") until a space ends it, and an address being said ("john dot smith at example
    dot", "john.smith at exa") from its name on. ``len(text)`` when nothing is open, and when
    the text ends a sentence.
    """
    if _CLOSED.search(text):
        # A sentence ended: the recogniser does not put a full stop inside a number (a "."
        # right after digits may be a decimal point or a group separator, so that stays open).
        return len(text)
    # A trailing "double"/"oh" may begin or go on with a number: decide without it.
    words = list(_TOKEN.finditer(text))
    opener = words and words[-1].group().lower() in (_REPEAT.keys() | _WEAK)
    if opener and _TAIL.fullmatch(text, words[-1].end()):
        return open_tail(text[: words[-1].start()])
    cut = len(text)
    last = max(text.rfind(" "), text.rfind("\n")) + 1
    if _ADDRESSY.search(text, last):
        # An address being written ("john.smith@exa"): shown once a space ends it.
        cut = last
    address = _OPEN_ADDRESS.search(text, max(0, len(text) - _ADDRESS_REACH))
    if address:
        cut = min(cut, address.start())
    runs = digit_runs(text)
    if runs and _TAIL.fullmatch(text, runs[-1].end):
        cut = min(cut, runs[-1].start)
    return cut
