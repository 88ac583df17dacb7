"""Spoken personal data: labelled utterances synthesised into tests/data/pii_speech/.

Each :class:`Utterance` is a sentence a caller might say, the eSpeak NG voice and rate that say
it, and the entities in it (kind and value: the digits, or the address or IBAN as written).
Card numbers are well-known test PANs, the IBANs the standard examples, phone numbers from the
ranges kept for drama and examples; the negatives hold the numbers a contact centre hears all
day (prices, times, dates, counts, order numbers) and must stay.

The FLAC files and ``manifest.jsonl`` are committed, so the tests and benchmarks need no
synthesiser; only regenerating does (Debian: ``apt-get install espeak-ng``)::

    python -m tests.benchmarks.pii_speech --write

Digits are written as words: eSpeak reads "4111" as "four thousand one hundred eleven".
Voice and pace were chosen against Whisper base (what tests/benchmarks/bench_redaction.py
runs): 120 words a minute with 60 ms between words, where eSpeak's default runs digits
together. Long runs of one repeated digit ("eins eins eins ...") sent Whisper into a loop of
the word, so most cards are test PANs of mixed digits. eSpeak's German digits are hard for
Whisper base whatever the pace: expect the German clips to come back garbled ("not
recognised" in the benchmark). Mandarin was left out for the same reason.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import orjson

__all__ = ["PII_DIR", "Entity", "Utterance", "clips", "utterances", "write"]

PII_DIR = Path(__file__).resolve().parents[1] / "data" / "pii_speech"
RATE = 16_000


@dataclass(frozen=True)
class Entity:
    """A labelled entity: its kind and value (digits, or the address/IBAN as written)."""

    kind: str
    value: str


@dataclass(frozen=True)
class Utterance:
    """One clip: what is said, by which voice, and the entities in it (none: a negative)."""

    name: str
    language: str
    text: str
    entities: tuple[Entity, ...] = ()
    voice: str = ""
    speed: int = 120
    """eSpeak words per minute (its default, 175, is faster than anyone reads out a card)."""
    gap: int = 6
    """eSpeak's pause between words, in 10 ms: without it Whisper base runs digits together."""

    @property
    def file(self) -> str:
        """The clip's file name in :data:`PII_DIR`."""
        return f"{self.name}.flac"


def _e(kind: str, value: str) -> tuple[Entity, ...]:
    return (Entity(kind, value),)


_EN: list[Utterance] = [
    # Cards: digit groups, "double", "oh"
    Utterance(
        "en_card_visa_groups", "en",
        "My card number is four one one one, one one one one, one one one one, one one one one.",
        _e("card", "4111111111111111"),
    ),
    Utterance(
        "en_card_mastercard_double", "en",
        "The long number on the card is five five double oh, double oh double oh, "
        "double oh double oh, double oh oh four.",
        _e("card", "5500000000000004"),
    ),
    Utterance(
        "en_card_visa_digits", "en",
        "Sure, it's four five three nine, one four eight eight, zero three four three, "
        "six four six seven.",
        _e("card", "4539148803436467"),
    ),
    # The clip of tests/integration/test_pii_speech.py: at this pace Whisper base wrote the whole
    # card on every setting tried (beam 1 and 5, int8 and float32, 0 to 1 s of silence around).
    Utterance(
        "en_card_visa_slow", "en",
        "Sure, it's four five three nine, one four eight eight, zero three four three, "
        "six four six seven.",
        _e("card", "4539148803436467"),
        speed=110,
        gap=10,
    ),
    Utterance(
        "en_card_amex", "en",
        "It's an American Express, three seven eight two, eight two two four six three, "
        "one zero zero zero five.",
        _e("card", "378282246310005"),
    ),
    Utterance(
        "en_card_mastercard_gb_voice", "en",
        "Card number five four two five, two three three four, three oh one oh, "
        "nine nine oh three.",
        _e("card", "5425233430109903"),
        voice="en-gb",
    ),
    Utterance(
        "en_card_with_expiry_cvv", "en",
        "Four zero one two, eight eight eight eight, eight eight eight eight, one eight eight one, "
        "expiry date oh nine twenty seven, and the security code is seven three one.",
        (Entity("card", "4012888888881881"), Entity("expiry", "0927"), Entity("cvv", "731")),
    ),
    Utterance(
        "en_expiry", "en", "The expiry date is twelve slash twenty six.", _e("expiry", "1226")
    ),
    Utterance(
        "en_cvv", "en", "The three digits on the back are four five two.", _e("cvv", "452")
    ),
    # Phones
    Utterance(
        "en_phone_us", "en",
        "You can call me back on four one five, five five five, two six seven one.",
        _e("phone", "4155552671"),
    ),
    Utterance(
        "en_phone_gb", "en",
        "My phone number is oh two oh, seven nine four six, oh nine five eight.",
        _e("phone", "02079460958"),
        voice="en-gb",
    ),
    Utterance(
        "en_phone_international", "en",
        "Call me on plus four nine, one five one, two three four five six seven eight nine.",
        _e("phone", "4915123456789"),
    ),
    Utterance(
        "en_phone_us_second", "en",
        "The best number to reach me is two oh two, five five five, oh one four three.",
        _e("phone", "2025550143"),
    ),
    # Emails
    Utterance(
        "en_email", "en", "My email is john dot smith at example dot com.",
        _e("email", "john.smith@example.com"),
    ),
    Utterance(
        "en_email_underscore", "en", "Send it to anna underscore miller at example dot org please.",
        _e("email", "anna_miller@example.org"),
    ),
    # IBANs
    Utterance(
        "en_iban_de", "en",
        "My IBAN is D E eight nine, three seven oh four, oh oh four four, oh five three two, "
        "oh one three oh, oh oh.",
        _e("iban", "DE89370400440532013000"),
    ),
    Utterance(
        "en_iban_gb", "en",
        "The IBAN is G B eight two, W E S T, one two three four, five six nine eight, "
        "seven six five four, three two.",
        _e("iban", "GB82WEST12345698765432"),
        voice="en-gb",
    ),
    # Accounts and national ids
    Utterance(
        "en_account", "en",
        "My account number is three one nine two, six eight one nine.",
        _e("account", "31926819"),
    ),
    Utterance(
        "en_sort_code_account", "en",
        "The sort code is two oh, three two, five three, and the account number is "
        "seven three one five, four four oh nine.",
        (Entity("account", "203253"), Entity("account", "73154409")),
        voice="en-gb",
    ),
    Utterance(
        "en_ssn", "en",
        "My social security number is five three six, two two, eight seven four five.",
        _e("national_id", "536228745"),
    ),
    # Negatives
    Utterance("en_neg_price", "en", "The total comes to forty nine dollars and ninety nine cents."),
    Utterance(
        "en_neg_order", "en",
        "Your order number is eight four two nine one seven three and it ships on Monday.",
    ),
    Utterance(
        "en_neg_time_date", "en",
        "The engineer comes at three thirty on the twenty first of June twenty twenty five.",
    ),
    Utterance(
        "en_neg_counts", "en", "We have two hundred and fifty units in stock and twelve on order."
    ),
    Utterance(
        "en_neg_years", "en",
        "I have been a customer since nineteen ninety eight, so about twenty seven years.",
    ),
    Utterance(
        "en_neg_weight", "en",
        "The parcel weighs two point five kilograms and the delivery is eleven pounds fifty.",
    ),
    Utterance(
        "en_neg_queue", "en",
        "Please hold for about ten minutes, you are number three in the queue.",
    ),
    Utterance(
        "en_neg_flight", "en",
        "Flight two four six leaves from gate fifteen at ten forty five, seat thirty two A.",
    ),
]  # fmt: skip

_DE: list[Utterance] = [
    Utterance(
        "de_card_visa", "de",
        "Meine Kartennummer ist vier neun eins sieben, vier acht vier fünf, acht neun acht neun, "
        "sieben eins null sieben.",
        _e("card", "4917484589897107"),
    ),
    Utterance(
        "de_card_visa_digits", "de",
        "Die Nummer der Kreditkarte lautet vier fünf drei neun, eins vier acht acht, "
        "null drei vier drei, sechs vier sechs sieben.",
        _e("card", "4539148803436467"),
    ),
    Utterance(
        "de_expiry_cvv", "de",
        "Die Karte ist gültig bis null neun, siebenundzwanzig, und der Sicherheitscode ist "
        "sieben drei eins.",
        (Entity("expiry", "0927"), Entity("cvv", "731")),
    ),
    Utterance(
        "de_phone", "de",
        "Meine Telefonnummer ist null drei null, eins zwei drei vier fünf sechs sieben.",
        _e("phone", "0301234567"),
    ),
    Utterance(
        "de_email", "de", "Meine E-Mail-Adresse ist max punkt mustermann at beispiel punkt de.",
        _e("email", "max.mustermann@beispiel.de"),
    ),
    Utterance(
        "de_iban", "de",
        "Meine IBAN lautet D E acht neun, drei sieben null vier, null null vier vier, "
        "null fünf drei zwei, null eins drei null, null null.",
        _e("iban", "DE89370400440532013000"),
    ),
    Utterance(
        "de_account", "de",
        "Meine Kontonummer ist eins zwei drei vier, fünf sechs sieben acht, neun.",
        _e("account", "123456789"),
    ),
    Utterance(
        "de_tax_id", "de",
        "Meine Steuer-ID ist acht sechs null, neun fünf sieben, vier zwei sieben, eins neun.",
        _e("national_id", "86095742719"),
    ),
    # Negatives
    Utterance("de_neg_price", "de", "Das kostet neunundvierzig Euro neunundneunzig."),
    Utterance("de_neg_time", "de", "Der Termin ist am vierzehnten Mai um fünfzehn Uhr dreißig."),
    Utterance(
        "de_neg_order", "de", "Ihre Bestellnummer ist vier sieben eins eins, zwei null neun."
    ),
    Utterance(
        "de_neg_counts", "de",
        "Wir haben noch dreihundert Stück auf Lager, Lieferung in zwei Tagen.",
    ),
]  # fmt: skip


def utterances() -> list[Utterance]:
    """Every labelled utterance, English then German."""
    return [*_EN, *_DE]


def _voice(utterance: Utterance) -> str:
    return utterance.voice or {"en": "en-us", "de": "de", "zh": "cmn"}[utterance.language]


def _synthesise(utterance: Utterance, path: Path) -> None:
    """Speak ``utterance`` with eSpeak NG and write it to ``path`` as 16 kHz mono FLAC."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "espeak.wav"
        voice = _voice(utterance)
        command = ["espeak-ng", "-v", voice, "-s", str(utterance.speed), "-g", str(utterance.gap)]
        command += ["-w", str(wav)]
        subprocess.run([*command, utterance.text], check=True)
        with av.open(str(wav)) as source, av.open(str(path), "w", format="flac") as out:
            stream = out.add_stream("flac", rate=RATE, layout="mono")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            for frame in source.decode(audio=0):
                for piece in resampler.resample(frame):
                    out.mux(stream.encode(piece))
            for piece in resampler.resample(None):
                out.mux(stream.encode(piece))
            out.mux(stream.encode(None))


def write(directory: Path = PII_DIR) -> None:
    """Synthesise every utterance into ``directory`` and write its ``manifest.jsonl``."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for utterance in utterances():
        _synthesise(utterance, directory / utterance.file)
        record: dict[str, Any] = {
            "file": utterance.file,
            "language": utterance.language,
            "voice": _voice(utterance),
            "speed_wpm": utterance.speed,
            "word_gap_10ms": utterance.gap,
            "text": utterance.text,
            "entities": [{"kind": e.kind, "value": e.value} for e in utterance.entities],
        }
        lines.append(orjson.dumps(record).decode())
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def clips(directory: Path = PII_DIR) -> list[Utterance]:
    """The committed clips, from ``manifest.jsonl`` (no synthesiser needed)."""
    out = []
    for line in (directory / "manifest.jsonl").read_text().splitlines():
        record = orjson.loads(line)
        entities = tuple(Entity(e["kind"], e["value"]) for e in record["entities"])
        name = record["file"].removesuffix(".flac")
        out.append(
            Utterance(
                name,
                record["language"],
                record["text"],
                entities,
                record["voice"],
                record["speed_wpm"],
                record["word_gap_10ms"],
            )
        )
    return out


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    write()
    print(f"wrote {len(utterances())} clips to {PII_DIR}")
