"""When the broker refuses a terminal event: a failed event instead, or stop and redeliver.

An exception must never leave the agent's loop, because faust acknowledges the current event
when its stream generator closes: the recording would be committed with no terminal event.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.audio import asset
from tests.fixtures.asr_server import ScriptedServer
from tests.fixtures.worker import Stack, stop_and_drain, validate

pytestmark = pytest.mark.integration

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588


async def _max_message_bytes(stack: Stack, limits: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": str(limit)}
                )
                for topic, limit in limits.items()
            ]
        )
    finally:
        await admin.close()


def _events(stack: Stack, count: int) -> list[dict[str, object] | bytes]:
    source = stack.tmp / "call.wav"
    shutil.copy(asset("en_speechbrain_harvard_birch_canoe.wav"), source)
    # The context tags this test's requests in the session-wide server's journal.
    return [
        {
            "schema_version": 1,
            "recording_id": f"pub-{i}",
            "audio_url": source.as_uri(),
            "recognition": {"context": f"#{stack.app_id}"},
        }
        for i in range(count)
    ]


def _requests(stack: Stack, server: ScriptedServer) -> int:
    """Recognition requests this test's worker made."""
    return sum(f"#{stack.app_id}" in (e.get("context") or "") for e in server.journal())


async def test_a_final_the_broker_refuses_becomes_a_failed_event(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """Finals bigger than the topic allows end as internal_error failures, once each."""
    await _max_message_bytes(stack, {stack.final: 600})
    events = _events(stack, 3)
    stack.start_worker()
    await stack.publish(events)
    await stack.collect(lambda ms: len(stack.terminal(ms)) >= len(events))
    # Duplicates are counted once the worker has stopped and every topic is read to its end.
    terminal = stack.terminal(await stop_and_drain(stack))
    assert sorted(m.value["recording_id"] for m in terminal) == ["pub-0", "pub-1", "pub-2"]
    for message in terminal:
        validate(message)
        assert message.topic == stack.failed
        assert message.value["error"]["code"] == "internal_error"
        assert message.value["error"]["stage"] == "publish"
        assert "MessageSizeTooLarge" in message.value["error"]["message"]


async def test_nothing_publishable_stops_the_worker_and_the_recording_comes_back(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """With neither a final nor a failed event accepted the worker exits without committing;
    restarted once the topics accept them, it publishes the kept final, without a request."""
    await _max_message_bytes(stack, {stack.final: 200, stack.failed: 200})
    worker = stack.start_worker()
    await stack.publish(_events(stack, 1))
    assert worker.proc is not None
    code = await asyncio.to_thread(worker.proc.wait, 120)
    assert code == 75, worker.log_tail()
    assert "no terminal event can be published" in worker.log_tail()
    assert _requests(stack, scripted_server) == 1

    limit = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    await _max_message_bytes(stack, {stack.final: limit, stack.failed: limit})
    worker.start()
    await stack.collect(lambda ms: len(stack.terminal(ms)) >= 1)
    messages = await stop_and_drain(stack)
    assert [m.topic for m in stack.terminal(messages)] == [stack.final]
    for message in messages:
        validate(message)
    assert _requests(stack, scripted_server) == 1  # the kept final, not a second transcription
    assert "publishing final" in worker.log_path.read_text(errors="replace")
