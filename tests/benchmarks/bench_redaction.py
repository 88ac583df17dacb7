"""Recall per kind and precision of PII redaction: on the labelled text set, then on what a
real recogniser writes for spoken PII.

    python -m tests.benchmarks.bench_redaction [--misses] [--text-only] [--beam-size N]

**Text set** (tests/benchmarks/pii_set.py): an entity counts as found when a span of its kind
covers it; a span counts as right when it overlaps an entity of its kind. Targets (issue 11):
recall >= 0.99 for cards, >= 0.95 for the other kinds, precision >= 0.95.

**Recogniser transcripts**: the local whisper server (base, int8, ``--beam-size``) transcribes
each spoken clip of tests/data/pii_speech (language given per clip), and each transcript is
redacted as the worker does (default policy). An entity is *caught* when no run of four of its
digits (for an email: no word of its local part) survives in the redacted text and a
redaction of a plausible kind covers it. A missed entity whose value the recogniser did not
write intact (a digit dropped or misheard: a Luhn-invalid number is no card any more) is
counted apart as *not recognised* ("left": four of its digits still show); recall is over the
recognised ones. Precision counts the redactions that are of no labelled entity (a redaction
of a garbled entity's kind is taken for it), on the PII clips and on whisper transcripts of
the real speech in tests/data/speech (no PII in it). Recognition differs by CPU (CTranslate2
int8), and faster-whisper's temperature fallback samples when greedy decoding repeats itself
(as it does on eSpeak's digits), so a few transcripts differ from run to run. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from streams.redaction import KINDS, RedactionPolicy, Span, apply, find
from streams.redaction_digits import digit_runs
from tests.audio import asset, manifest
from tests.benchmarks.bench_whisper_server import native_body, run_whisper_server, stream_native
from tests.benchmarks.pii_set import Case, cases
from tests.benchmarks.pii_speech import PII_DIR, Entity, clips


def _covers(span_start: int, span_end: int, start: int, end: int) -> bool:
    return span_start <= start and span_end >= end


def text_set(show_misses: bool) -> None:
    """Run the labelled text set once and print the table."""
    policy = RedactionPolicy()
    found: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_language: Counter[str] = Counter()
    misses: list[tuple[Case, str]] = []
    right = predicted = 0
    false_positives: list[tuple[Case, str]] = []
    data = cases()
    started = time.perf_counter()
    for case in data:
        spans = find(case.text, policy)
        for entity in case.entities:
            total[entity.kind] += 1
            hit = any(
                s.kind == entity.kind and _covers(s.start, s.end, entity.start, entity.end)
                for s in spans
            )
            found[entity.kind] += hit
            by_language[case.language] += hit
            if not hit:
                misses.append((case, entity.kind))
        for span in spans:
            predicted += 1
            ok = any(
                e.kind == span.kind and span.start < e.end and e.start < span.end
                for e in case.entities
            )
            right += ok
            if not ok:
                false_positives.append((case, span.kind))
    elapsed = time.perf_counter() - started
    print(f"{'kind':<12} {'entities':>8} {'found':>6} {'recall':>7}")
    for kind in KINDS:
        if total[kind]:
            recall = found[kind] / total[kind]
            print(f"{kind:<12} {total[kind]:>8} {found[kind]:>6} {recall:>7.3f}")
    negatives = sum(1 for c in data if not c.entities)
    all_found, all_total = sum(found.values()), sum(total.values())
    print(f"{'all':<12} {all_total:>8} {all_found:>6} {all_found / all_total:>7.3f}")
    print(
        f"precision {right / predicted:.3f} ({right} of {predicted} spans; {negatives} negatives)"
    )
    print(
        f"{len(data)} snippets in {elapsed * 1000:.0f} ms ({elapsed / len(data) * 1e6:.0f} µs each)"
    )
    if show_misses:
        for case, missed in misses:
            print(f"MISSED {missed}: {case.text}")
        for case, wrong in false_positives:
            print(f"WRONG {wrong}: {case.text}")


# A redaction of another kind still hides the value: an IBAN taken for an account number is
# as good. A card taken for a phone number is not (the payment data is reported as a phone).
_PLAUSIBLE: dict[str, frozenset[str]] = {
    "card": frozenset({"card"}),
    "expiry": frozenset({"expiry"}),
    "cvv": frozenset({"cvv"}),
    "phone": frozenset({"phone"}),
    "email": frozenset({"email"}),
    "iban": frozenset({"iban", "account"}),
    "account": frozenset({"account", "iban"}),
    "national_id": frozenset({"national_id"}),
}


@dataclass(frozen=True)
class Transcript:
    """A clip, what the recogniser wrote for it, and its labelled entities."""

    name: str
    language: str
    text: str
    entities: tuple[Entity, ...]


@dataclass
class Scored:
    """One transcript redacted: the result per entity and the unlabelled redactions."""

    redacted: str
    outcomes: list[tuple[Entity, str]]
    """(entity, "caught" | "missed" | "not recognised" | "not recognised, left"): left when
    four of its digits (a word of its name) still show though the recogniser garbled it."""
    wrong: list[Span]
    spans: int


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def _windows(value: str) -> list[str]:
    """The runs of four digits of ``value`` (all its digits when fewer)."""
    digits = _digits(value)
    if len(digits) < 4:
        return [digits]
    return [digits[i : i + 4] for i in range(len(digits) - 3)]


def _local_words(address: str) -> list[str]:
    return [w for w in re.split(r"[._+-]", address.split("@")[0].lower()) if len(w) >= 3]


def _alnum(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def _spelled(text: str) -> list[str]:
    return [run.digits for run in digit_runs(text)]


def _leaks(entity: Entity, text: str) -> bool:
    if entity.kind == "email":
        words = set(re.findall(r"\w+", text.lower()))
        return any(w in words for w in _local_words(entity.value))
    runs = _spelled(text)
    return any(w in run for w in _windows(entity.value) for run in runs)


def _overlaps(span: Span, entity: Entity) -> bool:
    if entity.kind == "email":
        return any(w in _alnum(span.value) for w in _local_words(entity.value))
    return any(w in _digits(span.value) for w in _windows(entity.value))


def _recognised(entity: Entity, transcript: str) -> bool:
    """Whether the recogniser wrote the value intact (else it is no longer the entity)."""
    if entity.kind == "email":
        return _alnum(entity.value.split("@")[0]) in _alnum(transcript)
    if entity.kind == "iban":
        return _alnum(entity.value) in _alnum(transcript.replace(" ", ""))
    # Spelled by whole groups: "41111111111111111" holds the card's digits, but it is a
    # 17-digit number, not the card.
    value = _digits(entity.value)
    for run in digit_runs(transcript):
        groups = [g.digits for g in run.groups]
        for i in range(len(groups)):
            spelled = ""
            for group in groups[i:]:
                spelled += group
                if spelled == value:
                    return True
                if len(spelled) >= len(value):
                    break
    return False


def score(transcript: Transcript, policy: RedactionPolicy) -> Scored:
    """Redact ``transcript`` as the worker does and judge each entity and redaction."""
    spans = find(transcript.text, policy)
    redacted = apply(transcript.text, spans, policy).text
    outcomes: list[tuple[Entity, str]] = []
    for entity in transcript.entities:
        covered = any(s.kind in _PLAUSIBLE[entity.kind] and _overlaps(s, entity) for s in spans)
        if covered and not _leaks(entity, redacted):
            outcomes.append((entity, "caught"))
        elif _recognised(entity, transcript.text):
            outcomes.append((entity, "missed"))
        elif _leaks(entity, redacted):
            outcomes.append((entity, "not recognised, left"))
        else:
            outcomes.append((entity, "not recognised"))
    # A garbled entity has no value left to compare: a redaction of its kind is taken for it.
    garbled = {e.kind for e, outcome in outcomes if outcome.startswith("not recognised")}
    wrong = [
        s
        for s in spans
        if not any(_overlaps(s, e) for e in transcript.entities)
        and not any(s.kind in _PLAUSIBLE[kind] for kind in garbled)
    ]
    return Scored(redacted, outcomes, wrong, len(spans))


def transcribe(beam_size: int, workdir: Path) -> list[Transcript]:
    """Transcripts of the spoken PII clips and of the real speech, from the whisper server."""
    flags = ["--model", "base", "--beam-size", str(beam_size), "--workers", "1"]
    jobs: list[tuple[str, str, Path, tuple[Entity, ...]]] = [
        (c.name, c.language, PII_DIR / c.file, c.entities) for c in clips()
    ]
    jobs += [(n, str(e["language"]), asset(n), ()) for n, e in manifest().items()]
    out = []
    with run_whisper_server(workdir / "whisper_server.log", *flags) as server:
        for name, language, path, entities in jobs:
            mime = "audio/flac" if path.suffix == ".flac" else "audio/wav"
            body = native_body(path.read_bytes(), mime, language=language)
            text = str(stream_native(server.base_url, body)["text"])
            out.append(Transcript(name, language, text, entities))
    return out


def recogniser_set(beam_size: int) -> None:
    """Transcribe the clips, redact the transcripts and print the table."""
    policy = RedactionPolicy()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        transcripts = transcribe(beam_size, Path(tmp))
    elapsed = time.perf_counter() - started
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    right = predicted = 0
    shown: list[tuple[Transcript, Scored]] = []
    for transcript in transcripts:
        scored = score(transcript, policy)
        for entity, outcome in scored.outcomes:
            counts[entity.kind][outcome] += 1
        predicted += scored.spans
        right += scored.spans - len(scored.wrong)
        if scored.wrong or any(o != "caught" for _, o in scored.outcomes):
            shown.append((transcript, scored))
    speech = sum(1 for t in transcripts if not t.entities)
    print(
        f"\nRecogniser transcripts: whisper base int8, beam {beam_size}, {len(transcripts)} clips"
    )
    head = (
        f"{'kind':<12} {'entities':>8} {'not rec.':>8} {'(left)':>6} {'caught':>6} {'missed':>6} "
        f"{'recall':>7}"
    )
    print(head)
    total: Counter[str] = Counter()
    for kind in KINDS:
        c = counts[kind]
        if c.total():
            total += c
            print(_row(kind, c))
    print(_row("all", total))
    precision = right / predicted if predicted else 1.0
    print(
        f"precision {precision:.3f} ({right} of {predicted} redactions are of a labelled entity;"
        f" {speech} real-speech clips with no PII among the {len(transcripts)})"
    )
    print(f"transcribed and redacted in {elapsed:.0f} s")
    for transcript, scored in shown:
        print(f"\n{transcript.name} [{transcript.language}]: {transcript.text}")
        print(f"  redacted: {scored.redacted}")
        for entity, outcome in scored.outcomes:
            if outcome != "caught":
                print(f"  {outcome.upper()} {entity.kind} {entity.value}")
        for span in scored.wrong:
            print(f"  WRONG {span.kind}: {transcript.text[span.start : span.end]!r}")


def _row(kind: str, c: Counter[str]) -> str:
    recognised = c["caught"] + c["missed"]
    recall = f"{c['caught'] / recognised:.3f}" if recognised else "-"
    garbled = c["not recognised"] + c["not recognised, left"]
    return (
        f"{kind:<12} {c.total():>8} {garbled:>8} {c['not recognised, left']:>6} "
        f"{c['caught']:>6} {c['missed']:>6} {recall:>7}"
    )


def main(argv: list[str]) -> None:
    """Print the text set's table, then (unless ``--text-only``) the recogniser's."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_redaction")
    parser.add_argument("--misses", action="store_true", help="list the text set's misses")
    parser.add_argument("--text-only", action="store_true", help="skip the recogniser part")
    parser.add_argument("--beam-size", type=int, default=1, help="whisper beam size")
    args = parser.parse_args(argv)
    text_set(args.misses)
    if not args.text_only:
        recogniser_set(args.beam_size)


if __name__ == "__main__":
    main(sys.argv[1:])
