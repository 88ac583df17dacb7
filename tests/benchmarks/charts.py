"""Charts of a benchmark run (matplotlib, PNG, small enough to commit under ``docs/perf/``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["draw"]

_DPI = 80


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw every chart the run's scenarios can fill; return the files written."""
    scenarios = results["scenarios"]
    charts: dict[str, tuple[Callable[[dict[str, Any]], Figure], bool]] = {
        "client.png": (_client, "client" in scenarios),
        "e2e.png": (_e2e, "e2e" in scenarios),
        "latency.png": (_latency, "e2e" in scenarios),
        "scaleout.png": (_scaleout, "scaleout" in scenarios),
        "memory.png": (_memory, "memory" in scenarios),
    }
    written = []
    for name, (make, possible) in charts.items():
        if not possible:
            continue
        figure = make(scenarios)
        figure.tight_layout()
        figure.savefig(out / name, dpi=_DPI)
        plt.close(figure)
        written.append(out / name)
    return written


def _client(s: dict[str, Any]) -> Figure:
    figure, (cpu, rate) = plt.subplots(1, 2, figsize=(9, 3.4))
    rows = s["client"]["rows"]
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        streams = [r["concurrency"] for r in mine]
        cpu.plot(streams, [r["cpu_ms_per_request"] for r in mine], marker="o", label=label)
        rate.plot(streams, [r["requests_per_s"] for r in mine], marker="o", label=label)
    project = [r for r in rows if r["client"] == "project"]
    streams = [r["concurrency"] for r in project]
    rate.plot(streams, [r["ceiling_cpu_per_s"] for r in project], "k--", lw=1, label="CPU ceiling")
    cpu.set(title="CPU per streamed request", xlabel="concurrent streams", ylabel="ms")
    rate.set(title="Requests per second", xlabel="concurrent streams", ylabel="req/s")
    cpu.set_ylim(bottom=0)
    rate.set_ylim(bottom=0)
    cpu.legend(fontsize=7)
    rate.legend(fontsize=7)
    return figure


def _e2e_rows(s: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [("service\nbacklog", s["e2e"]["backlog"]["figures"])]
    base = s.get("baseline") or {}
    if "threads" in base:
        rows.append(("loop,\n32 threads", base["threads"]["figures"]))
    if "sequential" in base:
        rows.append(("loop,\nsequential", base["sequential"]["figures"]))
    return rows


def _e2e(s: dict[str, Any]) -> Figure:
    figure, (speed, cost) = plt.subplots(1, 2, figsize=(9, 3.4))
    rows = _e2e_rows(s)
    names = [name for name, _ in rows]
    _bars(speed, names, [f["audio_h_per_h_per_worker"] for _, f in rows], "audio hours per hour")
    _bars(cost, names, [f["cpu_s_per_audio_min"] for _, f in rows], "CPU s per audio minute")
    return figure


def _bars(axes: Axes, names: list[str], values: list[float], title: str) -> None:
    bars = axes.bar(names, values, color=["#3b75af", "#c44e52", "#dd8452"][: len(names)])
    axes.bar_label(bars, fmt="%.3g", fontsize=8)
    axes.set_title(title)
    axes.tick_params(axis="x", labelsize=8)


def _cdf(axes: Axes, values: list[float], label: str) -> None:
    data = sorted(values)
    if data:
        axes.plot(data, [(i + 1) / len(data) for i in range(len(data))], label=label)


def _latency(s: dict[str, Any]) -> Figure:
    figure, (overhead, lag) = plt.subplots(1, 2, figsize=(9, 3.4))
    series = [("service, paced", s["e2e"]["paced"]["rows"], "published")]
    base = s.get("baseline") or {}
    series += [
        (f"loop, {k}", base[k]["rows"], "started_at")
        for k in ("sequential", "threads")
        if k in base
    ]
    for label, rows, clock in series:
        done = [r for r in rows if r.get("server_s") and r.get(clock)]
        ratios = [100 * (r["terminal"] - r[clock] - r["server_s"]) / r["server_s"] for r in done]
        _cdf(overhead, ratios, label)
        lags = [
            1000 * (r["first_partial"] - r["server_first_delta"])
            for r in done
            if r.get("first_partial") and r.get("server_first_delta")
        ]
        _cdf(lag, lags, label)
    overhead.axvline(5, color="k", ls="--", lw=1, label="target 5%")
    lag.axvline(150, color="k", ls="--", lw=1, label="target 150 ms")
    overhead.set(title="Overhead, % of recognition time", xlabel="%", ylabel="share of recordings")
    lag.set(title="First partial event after first delta", xlabel="ms", xscale="symlog")
    overhead.legend(fontsize=7)
    lag.legend(fontsize=7)
    return figure


def _scaleout(s: dict[str, Any]) -> Figure:
    scale = s["scaleout"]
    figure, axes = plt.subplots(figsize=(9, 3.2))
    t, n = zip(*scale["in_flight"], strict=True) if scale["in_flight"] else ((), ())
    axes.plot(t, n, drawstyle="steps-post", lw=1)
    marks = scale["marks"]
    for key, label in (("joining", " B asks to join"), ("ready", " B assigned")):
        axes.axvline(marks[key], color="k", ls=":", lw=1)
        axes.text(marks[key], 0.5, label, fontsize=8, rotation=90, va="bottom")
    axes.set(xlabel="s since the backlog was published", ylabel="requests at the server")
    axes.set_title(
        f"One worker, then two ({scale['slots_per_worker']} slots each): ratio "
        f"{scale['ratio'] or 0:.2f}, B waited {scale['rebalance']['join_to_assigned_s']:.0f} s",
        fontsize=10,
    )
    return figure


def _memory(s: dict[str, Any]) -> Figure:
    memory = s["memory"]
    figure, rss = plt.subplots(figsize=(9, 3.2))
    t, kib, flight = zip(*memory["samples"], strict=True)
    rss.plot(t, [k / 1024 for k in kib], color="#3b75af", label="worker RSS (MiB)")
    rss.set(xlabel="s since publishing", ylabel="MiB")
    other = rss.twinx()
    other.plot(t, flight, color="#c44e52", lw=1, label="requests at the server")
    other.set_ylabel("in flight")
    lines = rss.get_lines() + other.get_lines()
    rss.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left")
    rss.set_title(
        f"Peak {memory['peak_rss_mib']:.0f} MiB with {memory['max_in_flight']} in flight: "
        f"{memory['per_in_flight_mib']:.1f} MiB each ({memory['mean_audio_s']:.0f} s of audio)",
        fontsize=10,
    )
    return figure
