"""The benchmark suite: ``python -m tests.benchmarks`` (``make bench``); figures, never assertions.

Runs the scenarios in order (``--only`` picks some), prints their tables, and writes the raw
figures (``results.json``) and charts (PNG) into ``bench-results/``. A full run (all scenarios,
not ``--quick``) also refreshes ``docs/perf/`` (the table and charts the README shows).

    python -m tests.benchmarks                    # everything, about 12 minutes on 2 cores
    python -m tests.benchmarks --quick            # a smoke run of everything, about 3 minutes
    python -m tests.benchmarks --only client,e2e  # some scenarios
    python -m tests.benchmarks --only economy     # request economy alone: no Kafka, ~1 minute
    python -m tests.benchmarks --profile          # also py-spy the worker of e2e (and baseline)

Scenarios: ``client`` (1, recognition client vs the official SDK), ``e2e`` (2, one worker on
Kafka), ``scaleout`` (3, one vs two workers, rebalance pause), ``memory`` (4, peak RSS with 256
recordings in flight), ``baseline`` (5, the loop you would write yourself, and PyAV vs the
ffmpeg CLI), ``economy`` (6, requests and billed seconds per call under each layout and plan
on the call corpus of calls.py; no Kafka), ``filetrans`` (7, the long-file backend beside the
streaming one: requests, billed seconds and time to final per call, and 200 calls on 8
partitions with a fixed task delay), ``music`` (8, hold music and tones: words lost and music
seconds sent and billed, every hold sound at 16 and 8 kHz), ``analytics`` (9, the call
analytics against the corpus's truth), ``redaction`` (10, recall and precision of the PII
redaction on the labelled text set and on whisper's transcripts of spoken PII; the text set
alone when quick). Each runs its own processes: a Kafka broker for the
whole run, and per scenario the scripted ASR server and the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from streams.dev.kafka_download import default_cache_dir, ensure_jars
from streams.dev.localkafka import LocalKafka
from tests.benchmarks import (
    bench_analytics,
    bench_baseline,
    bench_client,
    bench_e2e,
    bench_economy,
    bench_filetrans,
    bench_memory,
    bench_music,
    bench_redaction,
    bench_scaleout,
    charts,
    report,
)
from tests.benchmarks.corpus import build_corpus
from tests.benchmarks.harness import Bench, pid_of


def _music(bench: Bench) -> dict[str, Any]:
    rows = bench_music.run(["plucked notes (corpus)", "dtmf"] if bench.quick else None)
    return {"rows": [dataclasses.asdict(r) for r in rows], "text": bench_music.markdown(rows)}


def _analytics(bench: Bench) -> dict[str, Any]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench_analytics.main(["--quick"] if bench.quick else [])
    return {"text": printed.getvalue().strip()}


def _redaction(bench: Bench) -> dict[str, Any]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench_redaction.main(["--text-only"] if bench.quick else [])
    return {"text": printed.getvalue().strip()}


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "client": bench_client.run,
    "e2e": bench_e2e.run,
    "scaleout": bench_scaleout.run,
    "memory": bench_memory.run,
    "baseline": bench_baseline.run,
    "economy": bench_economy.run,
    "filetrans": bench_filetrans.run,
    "music": _music,
    "analytics": _analytics,
    "redaction": _redaction,
}
_NEEDS_KAFKA = {"e2e", "scaleout", "memory", "baseline"}
ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _broker(needed: bool) -> Iterator[LocalKafka | None]:
    if not needed:
        yield None
        return
    broker = LocalKafka(ensure_jars(default_cache_dir(ROOT)))
    try:
        broker.start(timeout_s=120)
        yield broker
    finally:
        broker.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--profile", action="store_true", help="py-spy the workers (needs root)")
    args = parser.parse_args(argv)
    args.selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.selected) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios, print the tables, write JSON and charts."""
    args = _parse(argv)
    began = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = report.machine()
    print(report.machine_line(machine), flush=True)
    results: dict[str, Any] = {
        "machine": machine,
        "quick": args.quick,
        "started_at": began,
        "scenarios": {},
    }
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    failed: list[str] = []
    with _broker(bool(_NEEDS_KAFKA & set(args.selected))) as broker:
        corpus = build_corpus(ROOT / ".cache", 12 if args.quick else 24)
        bench = Bench(
            bootstrap=broker.bootstrap if broker else "",
            broker_pid=pid_of(str(broker.run_dir)) if broker else None,
            corpus=corpus,
            audio_root=corpus[0].path.parent,
            results=args.out,
            logs=logs,
            quick=args.quick,
            profile=args.profile,
        )
        for name in args.selected:
            print(f"\n== {name} ==", flush=True)
            t = time.time()
            try:
                scenario = SCENARIOS[name](bench)
            except Exception as exc:  # noqa: BLE001  # one broken scenario must not lose the rest
                failed.append(name)
                traceback.print_exc()
                scenario = {"error": f"{type(exc).__name__}: {exc}"}
            scenario["duration_s"] = round(time.time() - t, 1)
            results["scenarios"][name] = scenario
            if "error" not in scenario:
                print(report.table(name, scenario), flush=True)
            print(f"({name}: {scenario['duration_s']:.0f} s)", flush=True)
    results["duration_s"] = round(time.time() - began, 1)
    results["load_after"] = report.machine()["loadavg"]
    done = {k: v for k, v in results["scenarios"].items() if not {"error", "skipped"} & v.keys()}
    results["targets"] = report.targets(done)
    (args.out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    pictures = charts.draw({**results, "scenarios": done}, args.out)
    print("\n" + report.targets_table(results["targets"]))
    full = not args.quick and set(done) == set(SCENARIOS)
    if full:
        docs = ROOT / "docs" / "perf"
        docs.mkdir(parents=True, exist_ok=True)
        for picture in pictures:
            shutil.copy(picture, docs / picture.name)
        (docs / "latest.md").write_text(
            report.markdown({**results, "scenarios": done}, [p.name for p in pictures])
        )
    written = ", ".join(p.name for p in pictures)
    print(f"\n{results['duration_s']:.0f} s in all; results.json and {written} in {args.out}")
    if full:
        print("docs/perf/ refreshed")
    print(f"process logs: {logs}")
    if failed:
        print(f"FAILED: {', '.join(failed)} (tracebacks above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
