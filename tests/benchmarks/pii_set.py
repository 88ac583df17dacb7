"""A labelled set of transcript snippets with personal data, in the forms the recogniser writes.

Each :class:`Case` is a snippet and the entities in it (kind and character range). Numbers are
made up but valid (Luhn, IBAN and national-id check digits, numbering plans), drawn with a fixed
seed; they are written as digits (ITN on), grouped oddly, or as digit words (ITN off) in English,
German and Chinese. Negatives are the numbers a contact centre hears all day (prices, times,
counts, quantities, order numbers) and must stay.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn
from stdnum.cn import ric
from stdnum.de import idnr
from stdnum.iso7064 import mod_11_10

__all__ = ["Case", "Entity", "cases"]

_EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DE = ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]
_ZH = "零一二三四五六七八九"


@dataclass(frozen=True)
class Entity:
    """A labelled entity: kind and where it is in the snippet."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Case:
    """A snippet, its language and its entities (none for a negative)."""

    text: str
    language: str
    entities: tuple[Entity, ...] = ()


def _case(template: str, language: str, kind: str, value: str) -> Case:
    start = template.index("{}")
    return Case(template.format(value), language, (Entity(kind, start, start + len(value)),))


def _groups(digits: str, sizes: list[int]) -> list[str]:
    out, at = [], 0
    for size in sizes:
        out.append(digits[at : at + size])
        at += size
    if at < len(digits):
        out.append(digits[at:])
    return [g for g in out if g]


def _words(digits: str, words: list[str] | str, sep: str = " ") -> str:
    return sep.join(words[int(d)] for d in digits)


def _spoken_en(rng: random.Random, digits: str, sizes: list[int]) -> str:
    """English digit words by group, with "double" and "oh" as people say them."""
    parts = []
    for group in _groups(digits, sizes):
        words: list[str] = []
        i = 0
        while i < len(group):
            word = "oh" if group[i] == "0" and rng.random() < 0.5 else _EN[int(group[i])]
            if i + 1 < len(group) and group[i + 1] == group[i] and rng.random() < 0.5:
                words.append(f"double {word}")
                i += 2
            else:
                words.append(word)
                i += 1
        parts.append(" ".join(words))
    return rng.choice([", ", " ", " - "]).join(parts)


def _forms(rng: random.Random, digits: str, sizes: list[int]) -> Iterator[tuple[str, str]]:
    """(language, written form) of a number as the recogniser may write it."""
    groups = _groups(digits, sizes)
    yield "en", digits
    yield "en", " ".join(groups)
    yield "en", "-".join(groups)
    odd = _groups(digits, [3, 5, 2, 6, 3])
    yield "en", ", ".join(odd)
    yield "en", _spoken_en(rng, digits, sizes)
    yield "en", _spoken_en(rng, digits, [2, 3, 3, 2, 4, 4])
    yield "de", ", ".join(_words(g, _DE) for g in groups)
    yield "zh", _words(digits, _ZH, "")


def _card(rng: random.Random) -> tuple[str, list[int]]:
    prefix, length, sizes = rng.choice(
        [("4", 16, [4, 4, 4, 4]), ("5", 16, [4, 4, 4, 4]), ("37", 15, [4, 6, 5]),
         ("6011", 16, [4, 4, 4, 4]), ("2221", 16, [4, 4, 4, 4])]
    )  # fmt: skip
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body), sizes


def _phone(rng: random.Random) -> tuple[str, list[int]]:
    while True:
        region, digits, sizes = rng.choice(
            [("US", f"{rng.choice(['415', '212', '617', '303'])}{rng.randint(2, 9)}"
              f"{rng.randint(0, 99):02}{rng.randint(0, 9999):04}", [3, 3, 4]),
             ("GB", f"020794{rng.randint(0, 99999):05}", [3, 4, 4]),
             ("DE", f"030{rng.randint(10000000, 99999999)}", [3, 4, 4]),
             ("CN", f"13{rng.randint(0, 9)}{rng.randint(0, 99999999):08}", [3, 4, 4])]
        )  # fmt: skip
        if phonenumbers.is_valid_number(phonenumbers.parse(digits, region)):
            return digits, sizes


def _de_iban(rng: random.Random) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))
    return "DE" + iban.calc_check_digits("DE00" + bban) + bban


def _idnr(rng: random.Random) -> str:
    while True:
        body = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(9))
        number = body + mod_11_10.calc_check_digit(body)
        if idnr.is_valid(number):
            return number


def _ric(rng: random.Random) -> str:
    while True:
        body = f"110101{rng.randint(1950, 2005)}{rng.randint(1, 12):02}{rng.randint(1, 28):02}"
        body += f"{rng.randint(0, 999):03}"
        number = body + ric.calc_check_digit(body)
        if number[-1] != "X" and ric.is_valid(number):
            return number


_TEMPLATES: dict[str, dict[str, list[str]]] = {
    "card": {
        "en": ["my card number is {} thanks", "sure, it's {}.", "okay {} and that's it"],
        "de": ["Die Kartennummer ist {}, danke."],
        "zh": ["我的卡号是{}。"],
    },
    "phone": {
        "en": ["you can call me on {} any time", "my number is {}."],
        "de": ["Meine Telefonnummer ist {}."],
        "zh": ["我的电话是{}。"],
    },
    "account": {
        "en": ["my account number is {} please"],
        "de": ["Meine Kontonummer ist {}."],
        "zh": ["我的账号是{}。"],
    },
    "national_id": {
        "en": ["my tax id is {} ok"],
        "de": ["Meine Steuer-ID ist {}."],
        "zh": ["我的身份证号是{}。"],
    },
}


def _numbers(rng: random.Random) -> Iterator[Case]:
    makers: dict[str, Callable[[], tuple[str, list[int]]]] = {
        "card": lambda: _card(rng),
        "phone": lambda: _phone(rng),
        "account": lambda: (str(rng.randint(10_000_000, 99_999_999)), [4, 4]),
        "national_id": lambda: rng.choice([(_idnr(rng), [2, 3, 3, 3]), (_ric(rng), [6, 8, 4])]),
    }
    for kind, make in makers.items():
        for _ in range(12):
            digits, sizes = make()
            for language, form in _forms(rng, digits, sizes):
                templates = _TEMPLATES[kind].get(language) or _TEMPLATES[kind]["en"]
                yield _case(rng.choice(templates), language, kind, form)


def _others(rng: random.Random) -> Iterator[Case]:
    names = ["john.smith", "anna_meier", "li.wei88", "k.oconnor", "maria"]
    domains = ["example.com", "mail.de", "company.co.uk", "163.com"]
    for name in names:
        for domain in domains:
            yield _case("email me at {} please", "en", "email", f"{name}@{domain}")
            spoken = f"{name.replace('.', ' dot ')} at {domain.replace('.', ' dot ')}"
            yield _case("it's {} thanks", "en", "email", spoken)
    for _ in range(20):
        number = _de_iban(rng)
        yield _case("my IBAN is {} thanks", "en", "iban", iban.format(number))
        yield _case("Meine IBAN lautet {}.", "de", "iban", number)
        words = f"D E {_words(number[2:], _DE)}"
        yield _case("Meine IBAN ist {}.", "de", "iban", words)
    for month, year in [(4, 27), (12, 26), (1, 30), (9, 28), (11, 29)]:
        yield _case("the expiry date is {} okay", "en", "expiry", f"{month:02}/{year}")
        yield _case("it expires {}", "en", "expiry", f"{_words(f'{month:02}', _EN)} {year}")
        yield _case("valid until {} yes", "en", "expiry", f"{month:02} {year}")
        yield _case("Gültig bis {}.", "de", "expiry", f"{month:02}/{year}")
        yield _case("有效期{}。", "zh", "expiry", _words(f"{month:02}{year}", _ZH, ""))
    for code in ["123", "907", "4412", "550", "381"]:
        yield _case("the security code is {} thanks", "en", "cvv", code)
        yield _case("the three digits on the back are {}", "en", "cvv", _words(code, _EN))
        yield _case("CVV {}", "en", "cvv", code)
        yield _case("Der Sicherheitscode ist {}.", "de", "cvv", _words(code, _DE))
        yield _case("背面的安全码是{}。", "zh", "cvv", _words(code, _ZH, ""))
    ssn = f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    yield _case("my social security number is {} ok", "en", "national_id", ssn)


_NEGATIVES = [
    ("en", "that comes to $1,299.99 including tax"),
    ("en", "I called at 10:45 and again at 3:30"),
    ("en", "I ordered 3 items, 250 units in total"),
    ("en", "the order number is 58213"),
    ("en", "order 4421 8830 was shipped on March 3rd 2024"),
    ("en", "one two three, can you hear me"),
    ("en", "I need two of them, the one I bought last year"),
    ("en", "it was twenty dollars, maybe twenty five"),
    ("en", "flight 447 leaves from gate 12"),
    ("en", "we have 12 seats and 48 chairs for 2025"),
    ("en", "version 3.14.2 of the app crashed 5 times"),
    ("en", "oh, I see, that's fine"),
    ("en", "call me back in 15 minutes, around 9 30"),
    ("en", "the package weighs 2.5 kg and costs 19.99"),
    ("en", "room 1204 on floor 12"),
    ("en", "I'd like four hundred and fifty megabits"),
    ("en", "my postcode is 10115"),
    ("en", "the invoice from 12/03/2024 shows 1,450 euros"),
    ("en", "double check the total of 3,210"),
    ("en", "ticket number 2024 0513 is still open"),
    ("en", "the security code is wrong, it didn't work"),
    ("en", "the account was opened in 2019"),
    ("de", "Das kostet 49,90 Euro im Monat"),
    ("de", "Ich rufe um 14:30 Uhr wieder an"),
    ("de", "Bestellung über drei Router und zwei Kabel"),
    ("de", "eins, zwei, drei, hören Sie mich"),
    ("de", "die Rechnung vom 12.03.2024 über 1.450 Euro"),
    ("de", "Postleitzahl 10115 Berlin"),
    ("zh", "一共三个\uff0c价格是九十九元"),
    ("zh", "我下午三点再打过来"),
    ("zh", "订单号是58213"),
    ("zh", "一二三\uff0c能听到吗"),
]


def _generated_negatives(rng: random.Random) -> Iterator[Case]:
    """Everyday numbers with fresh values: prices, times, quantities, dates, order numbers."""
    for _ in range(40):
        price = f"{rng.randint(1, 2999)}.{rng.randint(0, 99):02}"
        yield Case(f"the total is ${price} for {rng.randint(2, 40)} items", "en")
        yield Case(f"call me back at {rng.randint(1, 12)}:{rng.randint(0, 59):02} please", "en")
        order = str(rng.randint(10_000, 9_999_999))
        yield Case(f"my order number is {order}", "en")
        yield Case(f"it's order {_words(order[:5], _EN)} from last week", "en")
        day = f"{rng.randint(1, 28):02}.{rng.randint(1, 12):02}.{rng.randint(2019, 2026)}"
        yield Case(f"Die Rechnung vom {day} über {rng.randint(10, 999)} Euro", "de")
        count = _words(str(rng.randint(2, 99)), _ZH, "")
        yield Case(f"我订了{count}个, {rng.randint(2, 9)}点到", "zh")


def cases(seed: int = 11) -> list[Case]:
    """The whole set: entities of every kind in every form, then the negatives."""
    rng = random.Random(seed)  # noqa: S311 (made-up numbers, repeatable)
    out = list(_numbers(rng)) + list(_others(rng))
    out += [Case(text, language) for language, text in _NEGATIVES]
    out += list(_generated_negatives(rng))
    return out
