"""Topics that ensure_topics created are ready for clients the moment it returns."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 8


async def test_clients_of_new_topics_log_no_leader_errors(
    kafka_bootstrap: str, unique_name: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """Producing to and reading offsets of just-created topics logs no error and no retry.

    The leader in the metadata may not serve its partitions yet; clients then log an ERROR
    or WARNING per retry (NotLeaderForPartition), which `make demo` used to show on start.
    """
    names = [unique_name("topic") for _ in range(3)]
    statuses = await ensure_topics(
        kafka_bootstrap, [TopicSpec(name, PARTITIONS, 1) for name in names]
    )
    assert all(s.created and s.partitions == PARTITIONS for s in statuses)
    partitions = [TopicPartition(n, p) for n in names for p in range(PARTITIONS)]
    caplog.set_level(logging.WARNING, logger="aiokafka")

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        for tp in partitions:
            await producer.send_and_wait(tp.topic, b"first", partition=tp.partition)
        ends = await consumer.end_offsets(partitions)
    finally:
        await producer.stop()
        await consumer.stop()

    assert all(offset == 1 for offset in ends.values())
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")]
    assert not noise, "\n".join(noise)
