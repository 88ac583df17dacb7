"""The project's local Apache Kafka behaves like the single-node broker the pipeline relies on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError
from aiokafka.structs import OffsetAndMetadata

from streams.dev.localkafka import LocalKafka
from tests.fixtures.kafka import make_topics

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, *values: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"call-1")
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    """Read ``count`` records as ``group`` from its committed offset (or the start), no commit."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            return [(await consumer.getone()).value or b"" for _ in range(count)]
    finally:
        await consumer.stop()


async def test_round_trip(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    create_topics: Callable[..., Awaitable[None]],
) -> None:
    """A record produced to a new topic is consumed back with its key and value."""
    topic, group = unique_name("topic"), unique_name("group")
    await create_topics([topic], 2)
    await _produce(kafka_bootstrap, topic, b"hello")

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"call-1", b"hello")


async def test_unknown_topic_is_not_auto_created(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    """Producing to an unknown topic fails and leaves no such topic behind."""
    topic = unique_name("missing")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=2000)
    await producer.start()
    try:
        with pytest.raises(UnknownTopicOrPartitionError):
            await producer.send_and_wait(topic, b"lost")
    finally:
        await producer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()


@pytest.fixture
def restartable_kafka(local_kafka: LocalKafka | None) -> Iterator[LocalKafka]:
    """The session broker, or a private one when the session uses an external broker."""
    if local_kafka is not None:
        yield local_kafka
        return
    with LocalKafka() as broker:
        yield broker


async def test_restart_keeps_committed_data(
    restartable_kafka: LocalKafka, unique_name: Callable[[str], str]
) -> None:
    """Records and a group's committed offset written before restart() are there after it."""
    broker = restartable_kafka
    bootstrap = broker.bootstrap
    topic, group = unique_name("topic"), unique_name("group")
    await make_topics(bootstrap, [topic])
    await _produce(bootstrap, topic, b"first", b"second")
    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "")})
    finally:
        await committer.stop()

    # Blocking for several seconds: off the event loop, as LocalKafka's docstring asks.
    await asyncio.to_thread(broker.restart)

    assert broker.bootstrap == bootstrap
    assert await _consume(bootstrap, topic, unique_name("fresh"), 2) == [b"first", b"second"]
    assert await _consume(bootstrap, topic, group, 1) == [b"second"]
