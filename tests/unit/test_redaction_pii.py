"""PII redaction: each kind in the forms the recogniser writes, the styles, partial deltas that
end inside a number, and final events (streams/redaction.py, streams/redaction_publish.py)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

import schemas
from streams.config import Settings
from streams.event_types import FailedEvent, FinalEvent
from streams.publish import Publisher, TopicNames
from streams.redaction import RedactionPolicy, redact, redact_pieces
from streams.redaction_digits import DIGIT_WORDS, digit_runs
from streams.redaction_publish import RedactingPublisher, policy_from_event
from streams.runtime import redaction_policy
from tests.benchmarks.pii_set import cases

CARD = "4539148803436467"
CARD_WORDS = "four five three nine, one four double eight, oh three four three, six four six seven"
POLICY = RedactionPolicy()


def _leaks(text: str, digits: str, run: int = 4) -> list[str]:
    """Runs of ``run`` consecutive digits of ``digits`` that ``text`` spells (digits or words)."""
    spelled = "".join(r.digits for r in digit_runs(text))
    return [
        digits[i : i + run] for i in range(len(digits) - run + 1) if digits[i : i + run] in spelled
    ]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param(f"my card is {CARD} thanks", "card", id="card-digits"),
        pytest.param("it's 4539 1488-0343 6467.", "card", id="card-grouped"),
        pytest.param("4539148, 80343, 6467 ok", "card", id="card-odd-groups"),
        pytest.param(f"my card is {CARD_WORDS} thanks", "card", id="card-words-en"),
        pytest.param(
            "Karte vier fünf drei neun, eins vier acht acht, null drei vier drei, sechs vier "
            "sechs sieben, danke",
            "card",
            id="card-words-de",
        ),
        pytest.param("卡号是四五三九一四八八零三四三六四六七。", "card", id="card-words-zh"),
        pytest.param("Oh, 4539 1488 0343 6467", "card", id="card-after-oh"),
        pytest.param(
            "four five three nine, uh, one four eight eight, um oh three four three six four six "
            "seven",
            "card",
            id="card-with-hesitations",
        ),
        pytest.param("it expires oh four twenty seven", "expiry", id="expiry-words"),
        pytest.param("the expiry date is 04/27", "expiry", id="expiry-digits"),
        pytest.param("the security code is one two three", "cvv", id="cvv-words"),
        pytest.param("Der Sicherheitscode ist neun null sieben.", "cvv", id="cvv-de"),
        pytest.param("call me on (415) 555-2671 please", "phone", id="phone-us"),
        pytest.param(
            "my number is oh two oh, seven nine four six, oh nine five eight",
            "phone",
            id="phone-uk-words",
        ),
        pytest.param("ring +49 30 12345678 please", "phone", id="phone-plus"),
        pytest.param("mail john.smith@example.com now", "email", id="email"),
        pytest.param("it's john dot smith at example dot com", "email", id="email-spoken"),
        pytest.param("IBAN DE89 3704 0044 0532 0130 00", "iban", id="iban"),
        pytest.param(
            "D E acht neun drei sieben null vier null null vier vier null fünf drei "
            "zwei null eins drei null null null",
            "iban",
            id="iban-words",
        ),
        pytest.param("my account number is 7485 9727", "account", id="account"),
        pytest.param("my social security number is 536-90-4399", "national_id", id="ssn"),
        pytest.param("Steuer-ID 86095742719", "national_id", id="de-idnr"),
        pytest.param("身份证号11010519491231002X。", "national_id", id="cn-ric-x"),
    ],
)
def test_each_kind_is_replaced_in_the_forms_asr_writes(text: str, kind: str) -> None:
    """The entity goes, its label stands in its place, and no four digits of it remain."""
    result = redact(text, POLICY)
    assert [f.kind for f in result.findings] == [kind]
    finding = result.findings[0]
    assert result.text[finding.start : finding.end] == f"[{kind.upper()}]"
    assert not re.search(r"\d{4}|[(+]\[", result.text)


@pytest.mark.parametrize(
    "text",
    [
        "that comes to $1,299.99 including tax",
        "I called at 10:45 and again at 3:30",
        "I ordered 3 items, 250 units in total",
        "order 4421 8830 was shipped on March 3rd 2024",
        "one two three, can you hear me",
        "oh, I see, the one I bought for twenty dollars",
        "Das kostet 49,90 Euro, ich rufe um 14:30 Uhr an",
        "一共三个, 订单号是58213",
        "the security code is wrong",
        "4539148803436468 fails the Luhn check",
    ],
)
def test_ordinary_numbers_stay(text: str) -> None:
    """Prices, times, counts and numbers that fail their checks are not redacted."""
    assert redact(text, POLICY).text == text


def test_the_labelled_set_meets_the_targets() -> None:
    """Every entity of the benchmark set is found and no negative is touched (its figures:
    python -m tests.benchmarks.bench_redaction)."""
    for case in cases():
        result = redact(case.text, POLICY)
        assert len(result.findings) == len(case.entities), case.text


def test_styles_never_show_the_value() -> None:
    """label names the kind, hash is keyed and repeatable, mask keeps only the last four."""
    text = f"card {CARD}"
    assert redact(text, RedactionPolicy(style="label")).text == "card [CARD]"
    hashed = redact(text, RedactionPolicy(style="hash", hash_key=b"k1")).text
    assert hashed == redact(text, RedactionPolicy(style="hash", hash_key=b"k1")).text
    assert hashed != redact(text, RedactionPolicy(style="hash", hash_key=b"k2")).text
    assert re.fullmatch(r"card \[CARD:[0-9a-f]{12}\]", hashed)
    assert redact(text, RedactionPolicy(style="mask")).text == "card [CARD ****6467]"
    assert redact("security code 123", RedactionPolicy(style="mask")).text.endswith("[CVV]")


def test_only_the_chosen_kinds_are_redacted() -> None:
    """A policy without phones leaves phone numbers; an empty one changes nothing."""
    text = f"card {CARD}, call (415) 555-2671"
    only_cards = redact(text, RedactionPolicy(kinds=frozenset({"card"})))
    assert only_cards.text == "card [CARD], call (415) 555-2671"
    assert redact(text, RedactionPolicy(kinds=frozenset())).text == text


def test_a_number_read_across_two_segments_is_redacted_in_both() -> None:
    """Pieces are searched as one text; mask keeps digits only where the number ends."""
    first, second = redact_pieces(
        ["my card is four five three nine one four eight eight", "oh three four three six four "
         "six seven thanks"], RedactionPolicy(style="mask"),
    )  # fmt: skip
    assert first.text == "my card is [CARD]"
    assert second.text == "[CARD ****6467] thanks"


def test_digit_words_cover_three_languages() -> None:
    """English, German and Chinese digit words all spell digits."""
    assert {DIGIT_WORDS[w] for w in ("nine", "neun", "九")} == {"9"}
    assert digit_runs("double four, oh seven")[0].digits == "4407"


class _Inner:
    """Records what reaches the real publisher."""

    def __init__(self) -> None:
        self.partials: list[dict[str, Any]] = []
        self.finals: list[FinalEvent] = []

    async def partial(self, recording_id: str, **fields: Any) -> None:
        self.partials.append(fields)

    async def final(self, event: FinalEvent, *, source: str = "") -> None:
        self.finals.append(event)

    async def failed(self, event: FailedEvent) -> None:
        raise AssertionError("no failure expected")


async def _stream(
    deltas: list[str],
    policy: RedactionPolicy = POLICY,
    *,
    publisher: RedactingPublisher | None = None,
    chunk_index: int = 0,
) -> list[dict[str, Any]]:
    inner = _Inner()
    publisher = publisher or RedactingPublisher(inner, policy)
    publisher._inner = inner  # each call records its own partials
    text = ""
    for sequence, delta in enumerate(deltas):
        text += delta
        await publisher.partial(
            "rec-1", run=1, attempt=1, sequence=sequence, channel=0, role=None,
            chunk_index=chunk_index, chunk_start_s=0.0, delta=delta, text=text,
        )  # fmt: skip
    return inner.partials


@pytest.mark.parametrize("size", [1, 2, 3, 5])
async def test_a_card_split_across_deltas_never_shows_in_a_partial(size: int) -> None:
    """Whatever word the deltas break at, no partial's text or delta spells four of the card's
    digits; the partials say what they held back; the text grows by its deltas."""
    words = re.findall(r"\S+\s*", f"my card number is {CARD_WORDS} and the code is fine")
    deltas = ["".join(words[i : i + size]) for i in range(0, len(words), size)]
    partials = await _stream(deltas)
    shown = ""
    for event in partials:
        assert not _leaks(event["text"], CARD)
        assert not _leaks(event["delta"], CARD)
        shown += event["delta"]
        assert event["text"] == shown
    assert any(p["held_back_chars"] > 0 for p in partials)
    assert partials[-1]["text"] == "my card number is [CARD] and the code is fine"
    assert partials[-1]["redacted"] is True


async def test_digits_split_inside_a_group_are_held_too() -> None:
    """ITN-on digits cut mid-group ("4539 14" + "88 0343 ...") are held until the run ends."""
    partials = await _stream(["card 4539 14", "88 0343 64", "67 thanks ", "bye"])
    texts = ["card ", "card ", "card [CARD] thanks ", "card [CARD] thanks bye"]
    assert [p["text"] for p in partials] == texts
    assert [p["held_back_chars"] for p in partials] == [7, 17, 0, 0]


async def test_a_card_split_across_two_requests_never_shows_in_a_partial() -> None:
    """A pause longer than the silence threshold put the card's halves in two requests of one
    channel: the first holds its trailing half, the second (which opens with digits) shows
    nothing until the final; a later request that opens with words is shown as usual."""
    publisher = RedactingPublisher(_Inner(), POLICY)
    first = await _stream(["my card is ", "4111 1111"], publisher=publisher)
    second = await _stream(["1111 1111 ", "thanks"], publisher=publisher, chunk_index=1)
    for event in [*first, *second]:
        assert not _leaks(event["text"], "4111111111111111")
    assert [p["text"] for p in first] == ["my card is ", "my card is "]
    assert [(p["text"], p["held_back_chars"]) for p in second] == [("", 10), ("", 16)]
    third = await _stream(["at 3 pm ", f"{CARD} ", "ok"], publisher=publisher, chunk_index=2)
    assert third[-1]["text"] == "at 3 pm [CARD] ok"
    opening = await _stream([f"{CARD} ", "is it"], publisher=publisher)
    assert opening[-1]["text"] == "[CARD] is it"  # the first request of a channel starts anew


async def test_partials_pass_through_when_redaction_is_off() -> None:
    """An empty policy publishes deltas untouched and without redaction fields."""
    partials = await _stream([f"card {CARD}"], RedactionPolicy(kinds=frozenset()))
    assert partials[0]["text"] == f"card {CARD}"
    assert "redacted" not in partials[0]


def _final(segments: list[tuple[int, str]]) -> FinalEvent:
    segs = [
        {"channel": ch, "role": None, "start_s": float(i), "end_s": i + 0.5, "text": text,
         "language": "en", "emotion": None}
        for i, (ch, text) in enumerate(segments)
    ]  # fmt: skip
    event: dict[str, Any] = {
        "recording_id": "rec-1",
        "text": " ".join(t for _, t in segments),
        "segments": segs,
        "turns": [],
    }
    return event  # type: ignore[return-value]


async def test_a_final_reports_kinds_counts_and_positions_never_values() -> None:
    """text and segments are redacted; the summary counts kinds in text and points at every
    replacement by field and offsets in the redacted text."""
    inner = _Inner()
    publisher = RedactingPublisher(inner, POLICY)
    first = "my card is four five three nine one four eight eight"
    await publisher.final(
        _final([(0, first), (0, "oh three four three six four six seven, mail a@b.com")])
    )
    event = inner.finals[0]
    assert event["text"] == "my card is [CARD], mail [EMAIL]"
    assert [s["text"] for s in event["segments"]] == ["my card is [CARD]", "[CARD], mail [EMAIL]"]
    summary = event["redactions"]
    assert summary["counts"] == {"card": 1, "email": 1}
    for item in summary["items"]:
        field = event["text"] if item["field"] == "/text" else None
        if item["field"].startswith("/segments/"):
            field = event["segments"][int(item["field"].split("/")[2])]["text"]
        assert field is not None
        assert field[item["start"] : item["end"]].startswith("[")
    assert CARD not in str(event)
    assert "a@b.com" not in str(event)
    # A final replayed from the ledger is already redacted: it goes out as it is.
    await publisher.final(event)
    assert inner.finals[1] is event


def test_an_event_overrides_kinds_and_style() -> None:
    """The recording's ``redaction`` object replaces the worker's kinds and style."""
    base = RedactionPolicy()
    assert policy_from_event(base, None) is base
    changed = policy_from_event(base, {"kinds": ["email"], "style": "mask"})
    assert changed.kinds == frozenset({"email"})
    assert changed.style == "mask"
    assert policy_from_event(base, {"kinds": []}).kinds == frozenset()


def test_settings_choose_kinds_and_style(monkeypatch: pytest.MonkeyPatch) -> None:
    """STREAMS_REDACT takes a comma list or none; every kind is on by default."""
    assert redaction_policy(Settings()).kinds == POLICY.kinds
    monkeypatch.setenv("STREAMS_REDACT", "card, phone")
    monkeypatch.setenv("STREAMS_REDACT_STYLE", "mask")
    policy = redaction_policy(Settings())
    assert policy.kinds == frozenset({"card", "phone"})
    assert policy.style == "mask"
    monkeypatch.setenv("STREAMS_REDACT", "none")
    assert redaction_policy(Settings()).kinds == frozenset()


class _Sender:
    def __init__(self) -> None:
        self.values: list[dict[str, Any]] = []

    async def send(self, topic: str, key: bytes, value: bytes, *, wait: bool) -> None:
        self.values.append(orjson.loads(value))


async def test_partial_events_carry_the_redaction_fields_their_schema_allows() -> None:
    """Through the real publisher, a redacted partial says so and still meets its schema."""
    sender = _Sender()
    topics = TopicNames(partial="p", final="f", failed="x")
    publisher = RedactingPublisher(Publisher(sender, topics), POLICY)
    for sequence, text in enumerate([f"card {CARD[:8]}", f"card {CARD} ok"]):
        await publisher.partial(
            "rec-1", run=1, attempt=1, sequence=sequence, channel=0, role=None, chunk_index=0,
            chunk_start_s=0.0, delta="", text=text,
        )  # fmt: skip
    first, second = sender.values
    assert (first["text"], first["redacted"], first["held_back_chars"]) == ("card ", False, 8)
    assert (second["text"], second["delta"], second["redacted"]) == (
        "card [CARD] ok",
        "[CARD] ok",
        True,
    )
    for value in sender.values:
        assert not list(schemas.validator("partial").iter_errors(value))
