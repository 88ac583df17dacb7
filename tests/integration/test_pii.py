"""A card number read out in a call never reaches a topic, on the real broker and worker.

The scripted recogniser says a card number as digit words and sends it one word per delta, so
deltas end inside the number; the worker's partial and final events, and the finals its ledger
keeps in the table's changelog topic, are read to their ends after the worker stopped, and none
of them spells four consecutive digits of the card (nor its digit words). A second recording
asks for the ``mask`` style in its own ``redaction`` object and gets it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.redaction_digits import digit_runs
from tests.audio import asset
from tests.fixtures.asr_server import run_scripted_server
from tests.fixtures.worker import (
    Message,
    Stack,
    new_stack,
    stop_and_drain,
    stopping_workers,
    validate,
)

pytestmark = pytest.mark.integration

CARD = "4539148803436467"
SAID = (
    "my card number is four five three nine, one four double eight, oh three four three, "
    "six four six seven and you can call me on (415) 555-2671 thanks"
)
SPEECH = "en_speechbrain_harvard_birch_canoe.wav"


def _leaks(text: str, digits: str) -> list[str]:
    """The runs of four consecutive digits of ``digits`` that ``text`` spells."""
    spelled = "".join(r.digits for r in digit_runs(text))
    return [digits[i : i + 4] for i in range(len(digits) - 3) if digits[i : i + 4] in spelled]


def _texts(event: dict[str, Any]) -> Iterator[str]:
    """Every transcript text of a partial or final event."""
    for key in ("text", "delta"):
        if key in event:
            yield event[key]
    for part in (*event.get("segments", ()), *event.get("turns", ())):
        yield part["text"]


@pytest.fixture
def stack_saying_a_card(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[Stack]:
    """A stack whose recogniser says :data:`SAID`, one word per delta."""
    args = ("--transcript", SAID, "--words-per-delta", "1")
    with run_scripted_server(tmp_path / "asr.log", *args) as server:
        stack = new_stack(unique_name("pii"), kafka_bootstrap, server, tmp_path)
        with stopping_workers(stack):
            yield stack


async def _changelog(stack: Stack) -> list[dict[str, Any]]:
    """Every entry of the worker's ledger changelog, read to its end offsets."""
    topic = f"{stack.app_id}-finalized-changelog"
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await producer.partitions_for(topic)]
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    entries: list[dict[str, Any]] = []
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=1000)
            entries += [orjson.loads(r.value) for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    return entries


async def test_a_card_read_out_never_reaches_a_topic(
    stack_saying_a_card: Stack, create_topics: Callable[..., Any]
) -> None:
    """Partials hold the number back while it is being said, then show [CARD]; finals carry
    [CARD] (or the masked form the event asked for) and a summary; nothing spells the card."""
    stack = stack_saying_a_card
    await create_topics(stack.topic_names(), partitions=4)
    source = stack.tmp / "call.wav"
    shutil.copy(asset(SPEECH), source)
    event = {"schema_version": 3, "audio_url": source.as_uri()}
    await stack.publish(
        [
            {**event, "recording_id": "pii-label"},
            {**event, "recording_id": "pii-mask", "redaction": {"style": "mask"}},
        ]
    )
    stack.start_worker()
    await stack.collect(lambda messages: len(stack.terminal(messages)) >= 2)
    messages: list[Message] = await stop_and_drain(stack)

    for message in messages:
        validate(message)
    finals = {m.value["recording_id"]: m.value for m in messages if m.topic == stack.final}
    assert set(finals) == {"pii-label", "pii-mask"}
    label, mask = finals["pii-label"], finals["pii-mask"]
    assert label["text"].startswith("my card number is [CARD] and you can call me on [PHONE]")
    assert label["redactions"]["counts"]["card"] >= 1
    assert label["redactions"]["counts"]["phone"] >= 1
    assert "[CARD ****6467]" in mask["text"]

    partials = [m.value for m in messages if m.topic == stack.partial]
    assert partials
    # The number was cut across deltas, and the partials said they held it back.
    assert any(p["held_back_chars"] > 0 for p in partials)
    assert any("[CARD" in p["text"] for p in partials)
    kept = [entry["event"] for entry in await _changelog(stack) if entry.get("event")]
    assert kept, "the ledger kept no final"
    for value in [m.value for m in messages] + kept:
        # The masked recording shows the last four by request: check the digits before them.
        digits = CARD[:12] if value.get("recording_id") == "pii-mask" else CARD
        for text in _texts(value):
            assert not _leaks(text, digits), (value.get("type"), text)
        raw = orjson.dumps(value).decode()
        assert "four five three nine" not in raw
        assert CARD not in raw
