"""The scripted engine's journal: the server's own times, for benchmarks to subtract."""

from __future__ import annotations

import numpy as np

from streams.asr_server.app import RequestOutcome
from streams.asr_server.engine import RecognitionRequest
from streams.asr_server.scripted import ScriptedConfig, ScriptedEngine


async def test_journal_times_the_start_the_first_delta_and_the_end() -> None:
    """started_at <= first_delta_at <= finished_at, all Unix times, once the reply is over."""
    engine = ScriptedEngine(ScriptedConfig(first_delta_s=0.01, delta_interval_s=0.0))
    pcm = np.zeros(16_000, np.int16)
    request = RecognitionRequest(pcm=pcm, sample_rate=16_000, request_id="r1")
    pieces = [piece async for piece in engine.recognize(request)]
    engine.record(RequestOutcome("r1", "native", text="".join(p.text for p in pieces)))
    (entry,) = engine.journal()
    assert 0 < entry["started_at"] <= entry["first_delta_at"] <= entry["finished_at"]
    assert entry["first_delta_at"] - entry["started_at"] >= 0.01
