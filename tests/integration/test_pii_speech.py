"""A card number spoken in a recording never reaches a topic: real speech, the real recogniser.

tests/integration/test_pii.py has the scripted engine *say* a card number as text; here a worker
on the session's broker sends a spoken clip (tests/data/pii_speech/en_card_visa_slow.flac,
eSpeak NG reading 4539 1488 0343 6467 as digit groups) to the whisper server (base, int8,
beam 1), and its partial and final events and the finals its ledger keeps in the changelog
topic are read to their ends after the worker stopped.

What Whisper writes differs by CPU (CTranslate2's int8 kernels), so nothing here expects one
transcript: no text may spell four consecutive digits of the card, and the final must report a
``card`` redaction. The clip was picked for this: at its pace (110 words a minute, 100 ms between
words) Whisper base wrote the whole card, in whichever form ("4-5-3-9-...", "4.539-1488-..."),
with beam 1 and 5, int8 and float32, and with 0 to 1 s of silence around it; the same sentence
at eSpeak's default pace lost a digit with beam 1 once silence was added, and a number that
lost a digit is no card (Luhn) and cannot be reported as one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.benchmarks.bench_whisper_server import WhisperServer, run_whisper_server
from tests.benchmarks.pii_speech import PII_DIR
from tests.fixtures.worker import (
    Message,
    Stack,
    new_stack,
    stop_and_drain,
    stopping_workers,
    validate,
)
from tests.integration.test_pii import _changelog, _leaks, _texts

pytestmark = pytest.mark.integration

CLIP = "en_card_visa_slow.flac"
CARD = "4539148803436467"


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhisperServer]:
    log = tmp_path_factory.mktemp("whisper-pii") / "server.log"
    flags = ["--model", "base", "--beam-size", "1", "--workers", "1"]
    with run_whisper_server(log, *flags) as server:
        yield server


@pytest.fixture
def speech_stack(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    whisper: WhisperServer,
) -> Iterator[Stack]:
    """Own topics and consumer group, the worker recognising with the whisper server."""
    stack = new_stack(unique_name("pii-speech"), kafka_bootstrap, whisper, tmp_path)
    with stopping_workers(stack):
        yield stack


async def test_a_spoken_card_never_reaches_a_topic(
    speech_stack: Stack, create_topics: Callable[..., Any], whisper: WhisperServer
) -> None:
    stack = speech_stack
    await create_topics(stack.topic_names(), partitions=4)
    source = stack.tmp / CLIP
    shutil.copy(PII_DIR / CLIP, source)
    await stack.publish(
        [
            {
                "schema_version": 3,
                "recording_id": "pii-spoken-card",
                "audio_url": source.as_uri(),
                "recognition": {"language": "en"},
            }
        ]
    )
    stack.start_worker()
    await stack.collect(lambda messages: len(stack.terminal(messages)) >= 1, timeout_s=100)
    messages: list[Message] = await stop_and_drain(stack)

    for message in messages:
        validate(message)
    finals = [m.value for m in messages if m.topic == stack.final]
    assert len(finals) == 1, [m.value for m in messages if m.topic == stack.failed]
    final = finals[0]
    kinds = [item["kind"] for item in final["redactions"]["items"]]
    assert "card" in kinds, (final["text"], whisper.log_tail())
    assert final["redactions"]["counts"].get("card", 0) >= 1
    assert "[CARD]" in final["text"]

    kept = [entry["event"] for entry in await _changelog(stack) if entry.get("event")]
    assert kept, "the ledger kept no final"
    for value in [m.value for m in messages] + kept:
        for text in _texts(value):
            assert not _leaks(text, CARD), (value.get("type"), text)
        assert CARD not in orjson.dumps(value).decode()
