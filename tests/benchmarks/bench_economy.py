"""Request economy: how many requests and billed seconds a call costs under each plan.

The cloud bills each request's audio rounded up to a whole second and lets an account send
100 requests a minute, so a plan that sends the same speech in fewer requests is both cheaper
and lets more calls through an account. This scenario runs every call of the call corpus
(calls.py: two-party stereo calls with turns, backchannels, pauses and hold music) through
the worker's own stages, decode (streams.decode), VAD per channel (streams.vad) and planning
(streams.chunking.plan_requests), for each layout and plan the worker offers:

- ``split``: one channel per party, under ``stretches`` (a request per speech stretch, the old
  behaviour), ``turns`` (a request per turn) and ``packed`` (a channel's stretches packed up
  to the per-request limits);
- ``mix``: both parties mixed to one channel, under ``stretches`` and ``packed``.

Per call it counts requests, speech (what the VAD called speech inside the requests), sent and
billed seconds, and the floor: the fewest requests the speech could go in, ``ceil(speech of a
channel / 300 s)`` summed over the channels. No Kafka and no recogniser are needed for these
figures: ``python -m tests.benchmarks.bench_economy`` prints them in a few seconds.

``--http`` also sends the named 6-minute call through the local scripted ASR server over real
HTTP with the worker's client (streams.transcribe.DashScopeBackend), once per layout and
plan, and puts the seconds the server billed (``usage.seconds``) next to the computed ones.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streams.api_limits import (
    ACCOUNT_REQUESTS_PER_MINUTE,
    MAX_DATA_URI_BYTES,
    MAX_REQUEST_S,
    billed_seconds,
)
from streams.chunking import ChunkPolicy, Plan, Request, SpeechMap, max_chunk_seconds, plan_requests
from streams.config import Settings
from streams.decode import SAMPLE_RATE, decode_sync
from streams.vad import SpeechDetector
from tests.benchmarks.calls import NAMED_CALL, ROLES, Call, build_calls

__all__ = ["PLANS", "CallFigures", "economy", "main", "run"]

Layout = Literal["split", "mix"]
PLANS: tuple[tuple[Layout, Plan], ...] = (
    ("split", "stretches"),
    ("split", "turns"),
    ("split", "packed"),
    ("mix", "stretches"),
    ("mix", "packed"),
)
"""Every layout and plan measured, the old behaviour of each layout first."""
CALLS_PER_HOUR = ACCOUNT_REQUESTS_PER_MINUTE * 60
"""Requests an account may send in an hour; divided by requests per call, calls per hour."""
PACKED_BILLED_OVER_SENT = 1.02
TURNS_BILLED_OVER_SPEECH = 1.10


def policy() -> ChunkPolicy:
    """The worker's defaults, with the longest request both per-request limits allow."""
    settings = Settings()
    return ChunkPolicy(
        silence_s=settings.silence_threshold_s,
        pad_s=settings.speech_pad_s,
        max_chunk_s=max_chunk_seconds(MAX_REQUEST_S, MAX_DATA_URI_BYTES, SAMPLE_RATE),
    )


@dataclass(frozen=True)
class CallFigures:
    """What one call costs under one layout and plan."""

    call: str
    layout: Layout
    plan: Plan
    channels: int
    requests: int
    speech_s: float
    """Sum of :attr:`Request.speech_s`: what the VAD called speech, in the requests."""
    sent_s: float
    billed_s: int
    floor: int
    """Fewest requests possible: ``ceil(speech of a channel / 300 s)`` summed over channels."""
    floor_at_limit: int
    """The same with the policy's longest request (the 10 MB data URI bounds it below 300 s)."""
    true_speech_s: float
    """Seconds of words the generator placed (both channels)."""
    duration_s: float

    @property
    def over_floor(self) -> int:
        """Requests beyond the floor."""
        return self.requests - self.floor

    @property
    def calls_per_hour(self) -> float:
        """Calls of this kind one account can transcribe in an hour at 100 requests a minute."""
        return CALLS_PER_HOUR / self.requests if self.requests else math.inf


def speech_maps(path: Path, layout: Layout) -> list[SpeechMap]:
    """Decode as the worker does and run the VAD over each channel in one-second blocks."""
    audio = decode_sync(path, layout=layout)
    aggressiveness = Settings().vad_aggressiveness
    maps = []
    for pcm in audio.channels:
        detector = SpeechDetector(aggressiveness)
        for start in range(0, len(pcm), SAMPLE_RATE):
            detector.feed(pcm[start : start + SAMPLE_RATE])
        maps.append(detector.finish())
    return maps


def plan(maps: list[SpeechMap], layout: Layout, which: Plan) -> list[Request]:
    """The requests of a call under ``which``; a mixed call has one speaker-less channel."""
    roles = ROLES[: len(maps)] if layout == "split" else (None,) * len(maps)
    return plan_requests(maps, roles, policy(), plan=which, sample_rate=SAMPLE_RATE)


def figures(call: Call, layout: Layout, which: Plan, requests: list[Request]) -> CallFigures:
    """The economy of one call's requests."""
    channels = 2 if layout == "split" else 1
    speech = [sum(r.speech_s for r in requests if r.channel == c) for c in range(channels)]
    return CallFigures(
        call=call.spec.name,
        layout=layout,
        plan=which,
        channels=channels,
        requests=len(requests),
        speech_s=sum(speech),
        sent_s=sum(r.duration_s for r in requests),
        billed_s=sum(billed_seconds(r.duration_s) for r in requests),
        floor=sum(math.ceil(s / MAX_REQUEST_S - 1e-9) for s in speech),
        floor_at_limit=sum(math.ceil(s / policy().max_chunk_s - 1e-9) for s in speech),
        true_speech_s=call.truth.speech_s(0) + call.truth.speech_s(1),
        duration_s=call.truth.duration_s,
    )


def economy(calls: list[Call]) -> list[CallFigures]:
    """Every call under every layout and plan."""
    out = []
    for call in calls:
        for layout in ("split", "mix"):
            maps = speech_maps(call.path, layout)
            for which in (p for lay, p in PLANS if lay == layout):
                out.append(figures(call, layout, which, plan(maps, layout, which)))
    return out


# --- summaries ------------------------------------------------------------------------------


def _summary(rows: list[CallFigures]) -> dict[str, Any]:
    """Totals and per-call means of one layout and plan over some calls."""
    n = len(rows)
    requests = sum(r.requests for r in rows)
    speech = sum(r.speech_s for r in rows)
    sent = sum(r.sent_s for r in rows)
    billed = sum(r.billed_s for r in rows)
    return {
        "layout": rows[0].layout,
        "plan": rows[0].plan,
        "calls": n,
        "minutes": sum(r.duration_s for r in rows) / 60,
        "requests": requests,
        "requests_per_call": requests / n,
        "floor": sum(r.floor for r in rows),
        "floor_at_limit": sum(r.floor_at_limit for r in rows),
        "max_request_s": policy().max_chunk_s,
        "most_over_floor_per_channel": max(r.over_floor / r.channels for r in rows),
        "speech_s": round(speech, 1),
        "words_s": round(sum(r.true_speech_s for r in rows), 1),
        "sent_s": round(sent, 1),
        "billed_s": billed,
        "billed_s_per_call": billed / n,
        "billed_over_speech": billed / speech if speech else None,
        "billed_over_sent": billed / sent if sent else None,
        "calls_per_hour": CALLS_PER_HOUR * n / requests if requests else None,
    }


def summarise(rows: list[CallFigures]) -> dict[str, Any]:
    """Per layout and plan: the corpus, and the named call alone; and the targets."""
    corpus, named = [], []
    for layout, which in PLANS:
        mine = [r for r in rows if (r.layout, r.plan) == (layout, which)]
        corpus.append(_summary(mine))
        one = [r for r in mine if r.call == NAMED_CALL]
        if one:
            named.append(_summary(one))
    return {
        "corpus": corpus,
        "named": named,
        "named_call": NAMED_CALL,
        "calls": [{**asdict(r), "over_floor": r.over_floor} for r in rows],
        "targets": _targets(corpus, named),
    }


def _targets(corpus: list[dict[str, Any]], named: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Packed plans: at most one request per channel over the floor in every call, and billed
    within 2 % of the audio sent; turns: billed within 10 % of the speech."""
    out = []
    for scope, summaries in (("corpus", corpus), (NAMED_CALL, named)):
        for s in summaries:
            name = f"{s['layout']} {s['plan']}"
            if s["plan"] == "packed":
                excess = s["most_over_floor_per_channel"]
                out.append(
                    _target(
                        f"economy {name} ({scope}): requests <= floor + 1 per channel, every call",
                        excess,
                        1.0,
                        f"{s['requests']} requests, floor {s['floor']}, "
                        f"most {excess:.1f} over per channel",
                    )
                )
                ratio = s["billed_over_sent"]
                out.append(
                    _target(
                        f"economy {name} ({scope}): billed <= {PACKED_BILLED_OVER_SENT} x sent",
                        ratio,
                        PACKED_BILLED_OVER_SENT,
                        f"{ratio:.3f} x sent, {s['billed_over_speech']:.3f} x speech",
                    )
                )
            elif s["plan"] == "turns":
                ratio = s["billed_over_speech"]
                out.append(
                    _target(
                        f"economy {name} ({scope}): billed <= {TURNS_BILLED_OVER_SPEECH} x speech",
                        ratio,
                        TURNS_BILLED_OVER_SPEECH,
                        f"{ratio:.3f} x speech, {s['billed_over_sent']:.3f} x sent",
                    )
                )
    return out


def _target(name: str, value: float | None, limit: float, shown: str) -> dict[str, Any]:
    return {"target": name, "measured": shown, "met": None if value is None else value <= limit}


# --- over HTTP ------------------------------------------------------------------------------


async def _send(url: str, audio: Any, requests: list[Request]) -> list[int]:
    """Send each request's audio to the server the worker's way; the seconds it billed."""
    from streams.encode import encode_data_uri
    from streams.transcribe import DashScopeBackend, RecognitionOptions, Result, asr_client

    options = RecognitionOptions(model="qwen3-asr-flash")
    billed = []
    client = asr_client("httpx", connect_timeout_s=10, read_timeout_s=60, concurrency=4)
    async with client:
        backend = DashScopeBackend(client, url, api_key=None)
        for request in requests:
            channel = audio.channels[request.channel]
            pcm = np.concatenate([channel[a:b] for a, b in request.stretches])
            async for item in backend.stream(encode_data_uri(pcm, SAMPLE_RATE), options):
                if isinstance(item, Result):
                    billed.append(item.billed_seconds)
    return billed


def over_http(call: Call, logs: Path) -> list[dict[str, Any]]:
    """The named call through the scripted ASR server per layout and plan: billed seconds as
    the server counted them (``usage.seconds``) next to the computed ones."""
    from tests.benchmarks.harness import Profile, ScriptedServer

    rows = []
    profile = Profile(first_delta_s=0.0, delta_interval_s=0.0, transcript="ok")
    with ScriptedServer(profile, logs, "economy") as server:
        for layout in ("split", "mix"):
            audio = decode_sync(call.path, layout=layout)
            maps = speech_maps(call.path, layout)
            for which in (p for lay, p in PLANS if lay == layout):
                requests = plan(maps, layout, which)
                started = time.perf_counter()
                served = asyncio.run(_send(server.url, audio, requests))
                rows.append(
                    {
                        "layout": layout,
                        "plan": which,
                        "requests": len(requests),
                        "answered": len(served),
                        "billed_s_computed": sum(billed_seconds(r.duration_s) for r in requests),
                        "billed_s_server": sum(served),
                        "seconds": round(time.perf_counter() - started, 2),
                    }
                )
    return rows


# --- entry points ---------------------------------------------------------------------------


def run(bench: Any) -> dict[str, Any]:
    """The scenario of ``python -m tests.benchmarks``: the corpus (its first four calls when
    quick) and, on a full run, the named call over HTTP."""
    calls = build_calls()
    if bench.quick:
        calls = calls[:4]
    result = summarise(economy(calls))
    if not bench.quick:
        named = next(c for c in calls if c.spec.name == NAMED_CALL)
        result["http"] = over_http(named, bench.logs)
    return result


def main(argv: list[str] | None = None) -> int:
    """Print the economy tables (and the HTTP check with ``--http``)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_economy", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--http", action="store_true", help="also send the named call over HTTP")
    parser.add_argument("--quick", action="store_true", help="the first four calls only")
    args = parser.parse_args(argv)
    from tests.benchmarks import report

    started = time.perf_counter()
    calls = build_calls()
    if args.quick:
        calls = calls[:4]
    result = summarise(economy(calls))
    if args.http:
        import tempfile

        named = next(c for c in calls if c.spec.name == NAMED_CALL)
        result["http"] = over_http(named, Path(tempfile.mkdtemp(prefix="bench-economy-")))
    print(report.table("economy", result))
    print("\n" + report.targets_table(result["targets"]))
    print(f"\n{len(calls)} calls in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
