"""PII in the forms Whisper wrote for spoken PII (tests/benchmarks/bench_redaction.py runs the
spoken clips of tests/data/pii_speech through it): what the recogniser does with a spoken
address, IBAN or card, context words of two kinds close together, and an address in partials.

Each case is a form, not one transcript: the recogniser may write any of them.
"""

from __future__ import annotations

import re

import pytest

from streams.redaction import RedactionPolicy, find, redact
from streams.redaction_digits import digit_runs
from tests.unit.test_redaction_pii import _stream

POLICY = RedactionPolicy()


def _kinds(text: str) -> list[str]:
    return [span.kind for span in find(text, POLICY)]


def _spelled(text: str) -> str:
    return " ".join(run.digits for run in digit_runs(text))


def _assert_one_card_and_no_digits_left(text: str) -> None:
    redacted = redact(text, POLICY)
    assert [f.kind for f in redacted.findings] == ["card"]
    assert not any(len(run) >= 4 for run in _spelled(redacted.text).split())


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("My card number is 4111-1111-1111-1111.", id="dashes"),
        pytest.param("My card number is 4111 1111 1111 1111.", id="full-stop-after"),
        pytest.param("Sure, it's 4.539-1488-0343-6467.", id="leading-dot"),
        pytest.param("It's $4,111,111,111,111,111.", id="dollar-thousands"),
        pytest.param("4, 5, 3, 9, 1, 4, 8, 8, 0, 3, 4, 3, 6, 4, 6, 7.", id="digit-by-digit"),
        pytest.param(
            "Die Nummer lautet vier, fünf, drei, neun, 1488, 0343, sechs vier sechs sieben.",
            id="de-words-and-digits",
        ),
    ],
)
def test_a_card_in_the_forms_whisper_writes_is_replaced(text: str) -> None:
    _assert_one_card_and_no_digits_left(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("My email is john.smith at example.com.", id="written-name-and-domain"),
        pytest.param("My email is john.smith at example dot com.", id="written-name"),
        pytest.param("Send it to anna_miller at example.org please.", id="underscore"),
        pytest.param("Meine E-Mail ist max.mustermann at beispiel.de.", id="de"),
    ],
)
def test_an_address_with_only_at_said_is_replaced_whole(text: str) -> None:
    redacted = redact(text, POLICY)
    assert [f.kind for f in redacted.findings] == ["email"]
    for word in ("john", "smith", "anna", "miller", "mustermann", "example", "beispiel"):
        assert word not in redacted.text


@pytest.mark.parametrize(
    "text",
    [
        "You can find us at example.com.",
        "Have a look at example.com for the details.",
        "We are at shop.example.com.",
    ],
)
def test_a_site_said_after_at_stays(text: str) -> None:
    assert _kinds(text) == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("The IBAN is GB82 West 1234 5698 7654 32.", id="bank-code-as-word"),
        pytest.param("The IBAN is GB82-WEST-1234-5698-7654-32.", id="dashes"),
        pytest.param("My IBAN is DE89-3704-0044-0532-0130-00.", id="de-dashes"),
        pytest.param("My IBAN is DE89, 3704, 0044, 0532, 0130, 00.", id="commas"),
        pytest.param(
            "The IBAN is GB82 WEST 1234 5698 7654 32 and the name is Smith.", id="then-words"
        ),
    ],
)
def test_a_written_iban_with_words_or_dashes_is_replaced(text: str) -> None:
    redacted = redact(text, POLICY)
    assert [f.kind for f in redacted.findings] == ["iban"]
    assert "1234" not in redacted.text
    assert "3704" not in redacted.text
    # What follows the IBAN stays as it was said.
    assert redacted.text.endswith((".", "Smith."))


def test_a_word_that_follows_an_invalid_iban_does_not_make_it_one() -> None:
    assert _kinds("The code is GB82 West 1234 5698 7654 33 and more.") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "Card 4539 1488 0343 6467, expiry 09/27, CVV 731.",
            ["card", "expiry", "cvv"],
            id="expiry-then-cvv",
        ),
        pytest.param(
            "The security code is 731 and the expiry date is 09/27.",
            ["cvv", "expiry"],
            id="cvv-then-expiry",
        ),
        pytest.param(
            "Die Karte ist gültig bis 09/27, der Sicherheitscode ist 7-3-1.",
            ["expiry", "cvv"],
            id="de",
        ),
    ],
)
def test_the_nearer_context_word_says_expiry_or_cvv(text: str, expected: list[str]) -> None:
    assert _kinds(text) == expected


@pytest.mark.parametrize("word", ["Sicherheitsnummer", "Sicherheitszahl", "Sicherheitskode"])
def test_german_words_for_the_security_code(word: str) -> None:
    assert _kinds(f"Die {word} ist 7, 3, 1.") == ["cvv"]


@pytest.mark.parametrize(
    ("said", "hidden"),
    [
        pytest.param(
            "My email is john.smith at example.com and that's it",
            ("john", "smith", "example"),
            id="only-at-said",
        ),
        pytest.param(
            "My email is john dot smith at example dot com and that's it",
            ("smith", "example"),
            id="spoken",
        ),
        pytest.param(
            "Meine Adresse ist max punkt mustermann at beispiel punkt de danke",
            ("mustermann", "beispiel"),
            id="de",
        ),
    ],
)
@pytest.mark.parametrize("size", [1, 2, 3])
async def test_an_address_being_said_never_shows_in_a_partial(
    said: str, hidden: tuple[str, ...], size: int
) -> None:
    """Whatever word the deltas break at, no partial shows the address once a word says it is
    one: a written name ("john.smith") at once, a spoken one from "dot" on (its first word may
    show before); the last partial shows it redacted."""
    words = re.findall(r"\S+\s*", said)
    deltas = ["".join(words[i : i + size]) for i in range(0, len(words), size)]
    partials = await _stream(deltas)
    for event in partials:
        for word in hidden:
            assert word not in event["text"], event["text"]
    assert "[EMAIL]" in partials[-1]["text"]


async def test_at_that_starts_no_address_is_shown_once_the_next_words_come() -> None:
    partials = await _stream(["please look at ", "the bill ", "now"])
    assert partials[-1]["text"] == "please look at the bill now"
    assert partials[-1]["held_back_chars"] == 0


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("My card number is 41111111111111111", id="a-digit-added"),
        pytest.param("My card number is 411111111111111", id="a-digit-lost"),
        pytest.param("A long number of cards is 550000000000000000004", id="doubles-run-on"),
        pytest.param("Meine Kartennummer ist 4917 4845 8989 7108.", id="de-misheard"),
    ],
)
def test_a_card_the_recogniser_garbled_is_still_replaced_after_card_words(text: str) -> None:
    """A digit lost, added or misheard: no longer a card by Luhn, still most of one."""
    _assert_one_card_and_no_digits_left(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Your order number is 41111111111111111.", id="no-card-words"),
        pytest.param("The card costs 19 dollars and ships on 2024 11 27.", id="short-runs"),
    ],
)
def test_long_numbers_without_card_words_are_not_taken_for_a_garbled_card(text: str) -> None:
    assert "card" not in _kinds(text)
