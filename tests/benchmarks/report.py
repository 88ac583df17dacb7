"""Tables of a benchmark run: printed, and as Markdown for ``docs/perf/latest.md``.

Every table is built once as rows of cells (:func:`tables`); :func:`text` and :func:`markdown`
only lay them out. Targets are those of the performance issue, judged on the run's figures.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from typing import Any

from streams.dev.kafka_download import KAFKA_VERSION
from tests.benchmarks.measure import CORES

__all__ = ["machine", "machine_line", "markdown", "table", "targets", "targets_table"]

_PACKAGES = ("faust-streaming", "aiokafka", "httpx", "httpx-aiohttp", "aiohttp", "dashscope", "av")
Table = tuple[str, list[str], list[list[str]]]


def machine() -> dict[str, Any]:
    """What the run ran on, and how busy the machine was."""
    model = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = next((ln.split()[1] for ln in _read("/proc/meminfo").splitlines() if "MemTotal" in ln), 0)
    return {
        "cpu": model or platform.processor(),
        "cores": CORES,
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": KAFKA_VERSION,
        "packages": {name: _version(name) for name in _PACKAGES},
        "commit": _commit(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _commit() -> str:
    """The checkout measured: short hash, ``-dirty`` when files differ from it."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "-"


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return ""


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def machine_line(m: dict[str, Any]) -> str:
    """One line: CPU, cores, memory, Python, Kafka and the load average at the time."""
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, Kafka {m['kafka']}, commit {m.get('commit', '-')}; "
        f"load average {m['loadavg'][0]:.2f} at {m['date']}"
    )


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pair(dist: dict[str, Any], digits: int = 0, scale: float = 1.0) -> str:
    if not dist or dist.get("p50") is None:
        return "-"
    return f"{_f(dist['p50'] * scale, digits)} / {_f(dist['p99'] * scale, digits)}"


def _client(s: dict[str, Any]) -> list[Table]:
    head = ["client", "streams", "CPU ms/request", "requests/s", "ceiling: latency / CPU"]
    rows = [
        [
            r["label"],
            str(r["concurrency"]),
            _f(r["cpu_ms_per_request"], 2),
            _f(r["requests_per_s"]),
            f"{_f(r['ceiling_latency_per_s'], 0)} / {_f(r['ceiling_cpu_per_s'], 0)}",
        ]
        for r in s["rows"]
    ]
    return [("Recognition client (scenario 1)", head, rows)]


def _e2e_row(name: str, f: dict[str, Any]) -> list[str]:
    return [
        name,
        str(f["recordings"]) + (f" ({f['failed']} failed)" if f["failed"] else ""),
        _f(f["recordings_per_s"], 2),
        _f(f["audio_h_per_h_per_worker"], 0),
        _f(f["cpu_s_per_audio_min"], 3),
        _pair(f["overhead_ms"]),
        _pair(f["overhead_ratio"], 1, 100),
        _pair(f["first_partial_lag_ms"]),
    ]


def _e2e(scenarios: dict[str, Any]) -> list[Table]:
    head = ["consumer", "recordings", "rec/s", "audio h/h", "CPU s/audio min"]
    head += ["overhead ms p50/p99", "overhead % p50/p99", "1st partial lag ms p50/p99"]
    rows = []
    if e2e := scenarios.get("e2e"):
        rows.append(_e2e_row("service, 1 worker, backlog", e2e["backlog"]["figures"]))
        rows.append(_e2e_row("service, 1 worker, paced at 50%", e2e["paced"]["figures"]))
    base = scenarios.get("baseline") or {}
    for key, label in (
        ("sequential", "hand-written loop"),
        ("threads", "hand-written, 32 threads"),
    ):
        if key in base:
            rows.append(_e2e_row(label, base[key]["figures"]))
    tables = [("End to end on Kafka (scenarios 2 and 5)", head, rows)] if rows else []
    if e2e:
        f = e2e["backlog"]["figures"]
        ceiling = min(f.get("ceiling_latency_per_s") or 1e9, f.get("ceiling_cpu_per_s") or 1e9)
        parts = e2e["paced"]["figures"].get("overhead_parts_ms") or {}
        achieved = f"{_f(f['recordings_per_s'], 2)} of {_f(f.get('ceiling_latency_per_s'), 2)}"
        achieved += f" / {_f(f.get('ceiling_cpu_per_s'), 2)}"
        achieved += f" ({_f(100 * f['recordings_per_s'] / ceiling, 0)}% of the lower)"
        per_recording = [_f(v / f["recordings"], 3) for v in f["cpu_s"].values()]
        split = [_f(parts.get(k), 0) for k in ("fetch", "decode", "request", "kafka")]
        rows = [
            ["backlog rec/s vs ceiling (latency / CPU)", achieved],
            ["backlog CPU s per recording: worker / server / broker", " / ".join(per_recording)],
            ["paced overhead, mean ms: fetch / decode / request / kafka", " / ".join(split)],
        ]
        tables.append(("Service against the limits (scenario 2)", ["", "figure"], rows))
    return tables


def _scaleout(s: dict[str, Any]) -> list[Table]:
    r = s["rebalance"]
    head = ["1 worker audio h/h", "2 workers audio h/h", "ratio", "join to assigned s"]
    head += ["no new request s", "nothing in flight s", "duplicate finals"]
    row = [
        _f(s["one_worker"]["audio_h_per_h"], 0),
        _f(s["two_workers"]["audio_h_per_h"], 0),
        _f(s["ratio"], 2),
        _f(r["join_to_assigned_s"]),
        _f(r["no_new_request_s"]),
        _f(r["nothing_in_flight_s"]),
        str(s["duplicate_finals"]),
    ]
    return [(f"Scale-out, {s['slots_per_worker']} slots per worker (scenario 3)", head, [row])]


def _memory(s: dict[str, Any]) -> list[Table]:
    head = ["recordings", "mean audio s", "max in flight", "RSS at rest MiB", "peak RSS MiB"]
    head += ["MiB per in-flight recording"]
    row = [
        str(s["recordings"]),
        _f(s["mean_audio_s"], 0),
        str(s["max_in_flight"]),
        _f(s["rest_rss_mib"], 0),
        _f(s["peak_rss_mib"], 0),
        _f(s["per_in_flight_mib"], 2),
    ]
    return [("Memory of one worker (scenario 4)", head, [row])]


def _economy_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            f"{x['layout']} {x['plan']}",
            str(x["requests"]),
            _f(x["requests_per_call"], 1),
            f"{x['floor']} / {x['floor_at_limit']} (+{_f(x['most_over_floor_per_channel'], 1)})",
            _f(x.get("words_s"), 0),
            _f(x["speech_s"], 0),
            _f(x["sent_s"], 0),
            f"{x['billed_s']:,}",
            _f(x["billed_s_per_call"], 0),
            _f(x["billed_over_speech"], 3),
            _f(x["billed_over_sent"], 3),
            _f(x["calls_per_hour"], 0),
        ]
        for x in summaries
    ]


def _economy(s: dict[str, Any]) -> list[Table]:
    limit = _f(s["corpus"][0]["max_request_s"], 0)
    floor = f"floor 300 s / {limit} s (most over per channel)"
    head = ["layout, plan", "requests", "per call", floor, "words s", "speech s"]
    head += ["sent s", "billed s", "billed s / call", "billed / speech", "billed / sent"]
    head += ["calls/h per account"]
    corpus = s["corpus"]
    title = f"Request economy: {corpus[0]['calls']} calls, {_f(corpus[0]['minutes'], 0)} minutes"
    out = [(title + " (scenario 6)", head, _economy_rows(corpus))]
    if s.get("named"):
        out.append((f"Request economy: {s['named_call']} alone", head, _economy_rows(s["named"])))
    if s.get("http"):
        rows = [
            [
                f"{h['layout']} {h['plan']}",
                f"{h['answered']} of {h['requests']}",
                str(h["billed_s_computed"]),
                str(h["billed_s_server"]),
                _f(h["seconds"], 1),
            ]
            for h in s["http"]
        ]
        http_head = ["layout, plan", "answered", "billed s computed", "usage.seconds", "wall s"]
        out.append((f"{s['named_call']} over HTTP (scripted server)", http_head, rows))
    return out


def tables(scenarios: dict[str, Any]) -> list[Table]:
    """Every table the scenarios that ran can fill."""
    out: list[Table] = []
    if "client" in scenarios:
        out += _client(scenarios["client"])
    if "e2e" in scenarios or "baseline" in scenarios:
        out += _e2e(scenarios)
    if "scaleout" in scenarios:
        out += _scaleout(scenarios["scaleout"])
    if "memory" in scenarios:
        out += _memory(scenarios["memory"])
    if "economy" in scenarios:
        out += _economy(scenarios["economy"])
    return out


def table(name: str, scenario: dict[str, Any]) -> str:
    """The printed table(s) of one scenario."""
    if scenario.get("skipped"):
        return f"skipped: {scenario['skipped']}"
    if "text" in scenario:  # a scenario that prints its own (markdown) tables
        return str(scenario["text"])
    return "\n\n".join(_text(t) for t in tables({name: scenario}))


def _text(t: Table) -> str:
    title, head, rows = t
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _md(t: Table) -> str:
    title, head, rows = t
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, and the comparisons it asks for, judged on this run."""
    out = []
    if client := s.get("client"):
        cpu = {(r["client"], r["concurrency"]): r["cpu_ms_per_request"] for r in client["rows"]}
        top = max(c for _, c in cpu)
        ratio = cpu[("project", top)] / cpu[("sdk", top)]
        out.append(
            _target(
                f"client CPU/request at {top} streams <= 1/3 of the SDK's",
                ratio,
                1 / 3,
                f"{ratio:.2f} of the SDK's",
            )
        )
        low = min(c for _, c in cpu)
        growth = cpu[("project", top)] / cpu[("project", low)]
        out.append(
            _target(
                f"client CPU/request flat: at {top} streams <= 1.25x at {low}",
                growth,
                1.25,
                f"{growth:.2f}x",
            )
        )
    if e2e := s.get("e2e"):
        paced = e2e["paced"]["figures"]
        ratio = paced["overhead_ratio"]
        shown = f"p50 {_f(100 * (ratio['p50'] or 0), 1)}%, p99 {_f(100 * (ratio['p99'] or 0), 1)}%"
        out.append(
            _target(
                "worker overhead < 5% of recognition time (paced, p50)", ratio["p50"], 0.05, shown
            )
        )
        lag = paced["first_partial_lag_ms"]
        out.append(
            _target(
                "first partial within 150 ms of first delta (p99)",
                lag["p99"],
                150,
                f"p99 {_f(lag['p99'], 0)} ms",
            )
        )
    if (scale := s.get("scaleout")) and scale.get("ratio") is not None:
        out.append(
            _target("two workers / one >= 1.8", -scale["ratio"], -1.8, f"{scale['ratio']:.2f}")
        )
    base = (s.get("baseline") or {}).get("threads")
    if e2e and base:
        mine, theirs = e2e["backlog"]["figures"], base["figures"]
        speed = mine["audio_h_per_h_per_worker"] / theirs["audio_h_per_h_per_worker"]
        out.append(
            _target(
                "faster than the hand-written loop with as many in flight",
                -speed,
                -1.0,
                f"{speed:.2f}x its audio h/h",
            )
        )
        cost = mine["cpu_s_per_audio_min"] / theirs["cpu_s_per_audio_min"]
        out.append(
            _target(
                "cheaper: worker CPU per audio minute below the loop's",
                cost,
                1.0,
                f"{cost:.2f}x its CPU",
            )
        )
    out += (s.get("economy") or {}).get("targets", [])
    return out


def _target(name: str, value: float | None, limit: float, shown: str) -> dict[str, Any]:
    met = None if value is None else value <= limit
    return {"target": name, "measured": shown, "met": met}


def targets_table(items: list[dict[str, Any]]) -> str:
    """The targets, printed."""
    rows = [[t["target"], t["measured"], _verdict(t["met"])] for t in items]
    return _text(("Targets", ["target", "measured", "met"], rows)) if rows else ""


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[met]


def markdown(results: dict[str, Any], pictures: list[str]) -> str:
    """``docs/perf/latest.md``: machine, tables, targets and charts of a full run."""
    m = results["machine"]
    parts = [
        "# Latest benchmark run",
        "",
        f"`make bench` on {machine_line(m)}; {results['duration_s'] / 60:.1f} minutes; load "
        f"average {results['load_after'][0]:.2f} at the end. Raw figures: "
        "`bench-results/results.json`.",
        "",
        *(_md(t) + "\n" for t in tables(results["scenarios"])),
        *(
            f"**{name}**\n\n{scenario['text']}\n"
            for name, scenario in results["scenarios"].items()
            if "text" in scenario
        ),
        _md(
            (
                "Targets",
                ["target", "measured", "met"],
                [[t["target"], t["measured"], _verdict(t["met"])] for t in results["targets"]],
            )
        ),
        "",
        *(f"![{name}]({name})" for name in pictures),
        "",
    ]
    return "\n".join(parts)
