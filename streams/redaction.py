"""Find personal data in transcript text and replace it, reporting what was replaced, never how.

:func:`find` returns :class:`Span` s on the text it was given; :func:`apply` replaces them and
returns :class:`Redacted` text whose :class:`Finding` s give kind and position **in the redacted
text** (where the replacement stands), never a value. :func:`redact` does both.

Checks come from libraries: Luhn, IBAN and national ids from python-stdnum, phone numbering
plans from phonenumbers. What is ours: digit words and odd grouping (streams/redaction_digits.py),
and the context words that make 3 or 4 digits a security code or an expiry date.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from stdnum import iban, luhn
from stdnum.cn import ric
from stdnum.de import idnr
from stdnum.us import ssn

from streams.redaction_digits import DigitRun, digit_runs

__all__ = [
    "DEFAULT_KINDS",
    "KINDS",
    "Finding",
    "Kind",
    "Redacted",
    "RedactionPolicy",
    "Span",
    "Style",
    "apply",
    "find",
    "redact",
    "redact_pieces",
]

Kind = Literal["card", "expiry", "cvv", "phone", "email", "iban", "account", "national_id"]
Style = Literal["label", "hash", "mask"]
KINDS: tuple[Kind, ...] = (
    "card", "expiry", "cvv", "phone", "email", "iban", "account", "national_id",
)  # fmt: skip
# Payment data is what a contact centre must never keep (PCI DSS): on unless a deployment says
# otherwise. The others are on too: a transcript is rarely better for a phone number in it.
DEFAULT_KINDS: tuple[Kind, ...] = KINDS
_LABELS: dict[Kind, str] = {
    "card": "CARD", "expiry": "EXPIRY", "cvv": "CVV", "phone": "PHONE", "email": "EMAIL",
    "iban": "IBAN", "account": "ACCOUNT", "national_id": "NATIONAL_ID",
}  # fmt: skip
# Kinds whose last four digits `mask` keeps (as receipts do); a code or a date keeps nothing.
_MASKABLE = frozenset({"card", "phone", "iban", "account"})


@dataclass(frozen=True)
class RedactionPolicy:
    """What to redact and how: one per deployment, overridable per recording event."""

    kinds: frozenset[Kind] = frozenset(DEFAULT_KINDS)
    style: Style = "label"
    hash_key: bytes = b""
    """Key of the ``hash`` style: without one a hash of a card number can be brute-forced."""
    regions: tuple[str, ...] = ("US", "GB", "DE", "CN")
    """Numbering plans a phone number without a country code is checked against."""

    def replace(self, kind: Kind, value: str, *, keep_tail: bool = True) -> str:
        """The replacement of ``value`` (the entity's digits, or its text) found as ``kind``."""
        label = _LABELS[kind]
        if self.style == "hash":
            digest = hashlib.blake2b(value.encode(), key=self.hash_key[:64], digest_size=6)
            return f"[{label}:{digest.hexdigest()}]"
        if self.style == "mask" and keep_tail and kind in _MASKABLE and len(value) > 6:
            return f"[{label} ****{value[-4:]}]"
        return f"[{label}]"


@dataclass(frozen=True)
class Span:
    """Where ``kind`` was found in the searched text; ``value`` is for the replacement only."""

    kind: Kind
    start: int
    end: int
    value: str


@dataclass(frozen=True)
class Finding:
    """A replacement in redacted text: its kind and position there, never the value."""

    kind: Kind
    start: int
    end: int


@dataclass(frozen=True)
class Redacted:
    """Redacted text and what was replaced in it."""

    text: str
    findings: tuple[Finding, ...] = ()


_CVV_CONTEXT = re.compile(
    r"security code|cvv|cvc|csc|card verification|three digits|3 digits|digits on the back|"
    r"sicherheits(?:code|kode|nummer|zahl|ziffer)|prüfnummer|prüfziffer|kartenprüf|安全码|验证码|背面",
    re.I)  # fmt: skip
_EXPIRY_CONTEXT = re.compile(
    r"expir|valid (?:until|thru|through)|good thru|ablauf|gültig bis|läuft .{0,12}ab|有效期|到期",
    re.I,
)
_ACCOUNT_CONTEXT = re.compile(
    r"account number|account no|acct|sort code|routing number|kontonummer|konto|bankleitzahl|"
    r"blz|账号|账户|卡号以外",
    re.I,
)
# A card number the recogniser wrote with a digit lost, added or misheard fails the Luhn check
# but still holds most of the number: after card words it is redacted as a card all the same.
_CARD_CONTEXT = re.compile(
    r"card|credit|debit|visa|master|amex|american express|karte|kreditkarte|信用卡|卡号|银行卡",
    re.I,
)
_GARBLED_CARD_DIGITS = range(12, 23)
_SSN_CONTEXT = re.compile(r"social security|ssn|steuer.?id|identifikationsnummer|身份证", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
_TLD = r"(?:com|net|org|de|co\.uk|uk|cn|io|info|edu|gov|eu|at|ch)"
# Between the words of a spoken address's name: said ("dot", "underscore") or, as the
# recogniser often writes the name itself ("john.smith at example dot com"), written.
_NAME_SEP = r"(?:[._]|\s+(?:dot|punkt|underscore|unterstrich)\s+)"
_SAID_DOT = r"\s+(?:dot|punkt)\s+"
_SPOKEN_EMAIL = re.compile(
    rf"\b[\w-]+(?:{_NAME_SEP}[\w-]+)*\s+(?:at|ät)\s+[\w-]+"
    rf"(?:{_SAID_DOT}[\w-]+)*{_SAID_DOT}{_TLD}\b",
    re.I,
)
# Only "at" said, the rest written: "john.smith at example.com". A site said after "at" ("find
# us at example.com") is no address, so the name before "at" needs a dot or underscore.
_HALF_SPOKEN_EMAIL = re.compile(
    rf"\b[\w-]+(?:{_NAME_SEP}[\w-]+)+\s+(?:at|ät)\s+[\w-]+(?:\.[\w-]+)*\.{_TLD}\b", re.I
)
# Groups of up to four, apart or not, by spaces, dashes or commas; the recogniser may write the
# letters of a bank code as a word ("GB82 West 1234 ..."). The greedy match may run into the
# words after the IBAN: shorter ends are tried until one is valid (_ibans).
_IBAN_SEP = r"(?:,?\s|-)?"
_WRITTEN_IBAN = re.compile(rf"\b[A-Z]{{2}}\d{{2}}(?:{_IBAN_SEP}[A-Za-z0-9]{{1,4}}){{3,8}}\b")
_IBAN_GROUP = re.compile(rf"{_IBAN_SEP}[A-Za-z0-9]{{1,4}}")
_COUNTRY_BEFORE = re.compile(r"([A-Za-z])\s*\.?\s*([A-Za-z])\s*$")
_CONTEXT_REACH = 60
# Seven to nine digits make many a local phone number, and as many order and ticket numbers:
# without a country code they are a phone only when the words around ask for one.
_PHONE_CONTEXT = re.compile(
    r"call|phone|mobile|cell|reach|dial|telefon|handy|rufnummer|anruf|电话|手机", re.I
)
_PHONE_PREFIX = re.compile(r"(?:\+|plus\s*|00)$", re.I)


def find(text: str, policy: RedactionPolicy) -> list[Span]:
    """The entities of ``policy.kinds`` in ``text``, in order, none overlapping."""
    spans: list[Span] = []
    runs = digit_runs(text)
    kinds = policy.kinds
    if "email" in kinds:
        spans += [Span("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text)]
        for said in (_SPOKEN_EMAIL, _HALF_SPOKEN_EMAIL):
            spans += [Span("email", m.start(), m.end(), m.group()) for m in said.finditer(text)]
    if "iban" in kinds:
        spans += _ibans(text, runs)
    for run in runs:
        spans += _classify(text, run, policy)
    return _without_overlaps(spans)


def _classify(text: str, run: DigitRun, policy: RedactionPolicy) -> Iterator[Span]:
    """The entities in one digit run, most specific first (overlaps resolved later)."""
    kinds, digits = policy.kinds, run.digits
    before = text[max(0, run.start - _CONTEXT_REACH) : run.start]
    if "card" in kinds:
        cards = list(_cards(run))
        yield from cards
        if not cards and len(digits) in _GARBLED_CARD_DIGITS and _CARD_CONTEXT.search(before):
            yield Span("card", run.start, run.end, digits)
    if "national_id" in kinds and _is_national_id(digits, before):
        yield Span("national_id", run.start, run.end, digits)
    # A Chinese resident id whose check character is X
    x_id = len(digits) == 17 and text[run.end : run.end + 1] in ("X", "x")
    if "national_id" in kinds and x_id and ric.is_valid(digits + "X"):
        yield Span("national_id", run.start, run.end + 1, digits + "X")
    if "phone" in kinds and 7 <= len(digits) <= 15 and _is_phone(text, run, policy):
        # "(415) 555-2671", "+49 30 ...": the bracket or plus goes with the number
        start = run.start - (run.start > 0 and text[run.start - 1] in "(+")
        yield Span("phone", start, run.end, digits)
    if "account" in kinds and 6 <= len(digits) <= 18 and _ACCOUNT_CONTEXT.search(before):
        yield Span("account", run.start, run.end, digits)
    month = int(digits[:-2] if len(digits) in (3, 4) else digits[:2] or "0")
    dated = 3 <= len(digits) <= 6 and 1 <= month <= 12
    # "expiry 09/27, CVV 731": both words are within reach of 731; the nearer one says what it is.
    expiry_at = _last(_EXPIRY_CONTEXT, before) if "expiry" in kinds and dated else -1
    cvv_at = _last(_CVV_CONTEXT, before) if "cvv" in kinds and len(digits) in (3, 4) else -1
    if expiry_at >= 0 and expiry_at > cvv_at:
        yield Span("expiry", run.start, run.end, digits)
    if cvv_at >= 0 and cvv_at > expiry_at:
        yield Span("cvv", run.start, run.end, digits)


def _last(context: re.Pattern[str], before: str) -> int:
    """Where the last match of ``context`` in ``before`` ends; -1 when there is none."""
    return max((m.end() for m in context.finditer(before)), default=-1)


def _is_national_id(digits: str, before: str) -> bool:
    # German tax id and Chinese resident id carry check digits; a US SSN has none, so it needs
    # the words that ask for it.
    if len(digits) == 11:
        return bool(idnr.is_valid(digits))
    if len(digits) == 18:
        return bool(ric.is_valid(digits))
    return len(digits) == 9 and bool(_SSN_CONTEXT.search(before)) and bool(ssn.is_valid(digits))


def _cards(run: DigitRun) -> Iterator[Span]:
    """The longest card number in a run: the whole run, else a window of whole groups (a stray
    "oh" or a count said just before the number must not hide it)."""
    groups = run.groups
    best: Span | None = None
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += groups[j].digits
            if len(digits) > 19:
                break
            longer = best is None or len(digits) > len(best.value)
            if longer and len(digits) >= 13 and digits[0] in "23456" and luhn.is_valid(digits):
                best = Span("card", groups[i].start, groups[j].end, digits)
    if best is not None:
        yield best


def _is_phone(text: str, run: DigitRun, policy: RedactionPolicy) -> bool:
    digits = run.digits
    prefix = _PHONE_PREFIX.search(text, max(0, run.start - 6), run.start)
    candidates = [f"+{digits}"] if prefix or digits.startswith("00") else []
    if digits.startswith("00"):
        candidates = [f"+{digits[2:]}"]
    regions = policy.regions
    if (
        len(digits) < 10
        and not candidates
        and not _PHONE_CONTEXT.search(text, max(0, run.start - _CONTEXT_REACH), run.start)
    ):
        regions = ()
    for number, region in [(c, None) for c in candidates] + [(digits, r) for r in regions]:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(number, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def _ibans(text: str, runs: Iterable[DigitRun]) -> Iterator[Span]:
    for m in _WRITTEN_IBAN.finditer(text):
        ends = [m.start() + g.end() for g in _IBAN_GROUP.finditer(m.group(), 4)]
        for end in reversed(ends):
            if end < len(text) and text[end].isalnum():
                continue
            candidate = re.sub(r"[\s,-]", "", text[m.start() : end]).upper()
            if iban.is_valid(candidate):
                yield Span("iban", m.start(), end, candidate)
                break
    for run in runs:
        # Spoken: "D E eight nine three seven ..." — a country code, then only digits (DE, AT,
        # CH with numeric accounts; the written form above covers the rest).
        letters = _COUNTRY_BEFORE.search(text, max(0, run.start - 8), run.start)
        if letters and len(run.digits) >= 12:
            candidate = (letters.group(1) + letters.group(2)).upper() + run.digits
            if iban.is_valid(candidate):
                yield Span("iban", letters.start(), run.end, candidate)


def _without_overlaps(spans: list[Span]) -> list[Span]:
    # Earlier-listed kinds win a tie at the same start: they are the more specific checks.
    order = {kind: i for i, kind in enumerate(("iban", "card", "national_id", "email", "account"))}
    spans.sort(key=lambda s: (s.start, order.get(s.kind, 9), -(s.end - s.start)))
    kept: list[Span] = []
    for span in spans:
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return kept


def apply(text: str, spans: Iterable[Span], policy: RedactionPolicy) -> Redacted:
    """``text`` with each span replaced, and where the replacements stand in the result."""
    out: list[str] = []
    findings: list[Finding] = []
    at = length = 0
    for span in sorted(spans, key=lambda s: s.start):
        start, end = max(span.start, at), min(span.end, len(text))
        if start >= end:
            continue
        out.append(text[at:start])
        length += start - at
        replacement = policy.replace(span.kind, span.value, keep_tail=end == span.end)
        out.append(replacement)
        findings.append(Finding(span.kind, length, length + len(replacement)))
        length += len(replacement)
        at = end
    out.append(text[at:])
    return Redacted("".join(out), tuple(findings))


def redact(text: str, policy: RedactionPolicy) -> Redacted:
    """``text`` with every entity of ``policy`` replaced as it says."""
    return apply(text, find(text, policy), policy)


def redact_pieces(pieces: list[str], policy: RedactionPolicy) -> list[Redacted]:
    """Redact texts that were said one after the other (a channel's segments) as one text.

    A card number read across two segments is found in the joined text and replaced in both;
    ``mask`` keeps last digits only in the piece where the number ends.
    """
    joined = " ".join(pieces)
    spans = find(joined, policy)
    out: list[Redacted] = []
    offset = 0
    for piece in pieces:
        mine = [
            Span(s.kind, s.start - offset, s.end - offset, s.value)
            for s in spans
            if s.start < offset + len(piece) and s.end > offset
        ]
        out.append(apply(piece, mine, policy))
        offset += len(piece) + 1
    return out
