"""Recall per kind and precision of PII redaction on the labelled set (tests/benchmarks/pii_set.py).

    python -m tests.benchmarks.bench_redaction [--misses]

An entity counts as found when a span of its kind covers it; a span counts as right when it
overlaps an entity of its kind. Targets (issue 11): recall >= 0.99 for cards, >= 0.95 for the
other kinds, precision >= 0.95. Prints figures; asserts nothing.
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from streams.redaction import KINDS, RedactionPolicy, find
from tests.benchmarks.pii_set import Case, cases


def _covers(span_start: int, span_end: int, start: int, end: int) -> bool:
    return span_start <= start and span_end >= end


def main(argv: list[str]) -> None:
    """Run the set once and print the table."""
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
    if "--misses" in argv:
        for case, kind in misses:
            print(f"MISSED {kind}: {case.text}")
        for case, kind in false_positives:
            print(f"WRONG {kind}: {case.text}")


if __name__ == "__main__":
    main(sys.argv[1:])
