"""Kafka for the benchmarks: one scenario's topics, publishing recordings, reading events back.

Topics are created with ``message.timestamp.type=LogAppendTime``: every timestamp read back is
the broker's clock at the moment the message became readable, the same machine clock the
scripted server writes into its journal.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.topics import TopicSpec, ensure_topics
from tests.audio import AUDIO_DIR

__all__ = ["Record", "Topics", "collect", "end_offsets", "publish", "read_all"]


@dataclass
class Topics:
    """One benchmark's four topics and consumer group on the shared broker."""

    bootstrap: str
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")

    @property
    def recordings(self) -> str:
        return f"{self.prefix}.recordings"

    @property
    def outputs(self) -> dict[str, str]:
        """Output topic names by event type."""
        return {kind: f"{self.prefix}.{kind}" for kind in ("partial", "final", "failed")}

    async def create(self, partitions: int, output_partitions: int | None = None) -> None:
        """Create the topics with broker timestamps; return once every partition has a leader."""
        outputs = output_partitions or partitions
        specs = [TopicSpec(self.recordings, partitions, 1)]
        specs += [TopicSpec(name, outputs, 1) for name in self.outputs.values()]
        # The worker's table changelog too, as an operator who manages topics would: left to
        # faust, a busy broker sometimes has no metadata for it yet at the first assignment
        # of a 256-partition group, and the worker stops on PartitionsMismatch.
        changelog = TopicSpec(f"{self.app_id}-finalized-changelog", partitions, 1)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            config = {"message.timestamp.type": "LogAppendTime"}
            new = [NewTopic(s.name, s.partitions, 1, topic_configs=config) for s in specs]
            compact = {"cleanup.policy": "compact,delete"}
            new.append(NewTopic(changelog.name, partitions, 1, topic_configs=compact))
            await admin.create_topics(new)
        finally:
            await admin.close()
        await ensure_topics(self.bootstrap, [*specs, changelog], create=False, timeout_s=60)

    @property
    def app_id(self) -> str:
        """The workers' faust app id, which is also their consumer group."""
        return f"{self.prefix}-worker"

    def worker_env(
        self, asr_url: str, partitions: int, concurrency: int, audio_root: Path
    ) -> dict[str, str]:
        """Environment of a worker on these topics, talking to the scripted server."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STREAMS_APP_ID": self.app_id,
            "STREAMS_TOPIC_RECORDINGS": self.recordings,
            "STREAMS_TOPIC_PARTIAL": self.outputs["partial"],
            "STREAMS_TOPIC_FINAL": self.outputs["final"],
            "STREAMS_TOPIC_FAILED": self.outputs["failed"],
            "STREAMS_TOPIC_PARTITIONS": str(partitions),
            "STREAMS_CREATE_TOPICS": "false",
            "STREAMS_ASR_BASE_URL": asr_url,
            "STREAMS_ASR_CONCURRENCY": str(concurrency),
            # The scripted server has no account quota; the cloud's 100/min would be the
            # whole benchmark's bottleneck.
            "STREAMS_ASR_REQUESTS_PER_MINUTE": "1000000",
            "STREAMS_WEB_ENABLED": "false",
            "STREAMS_FILE_ROOTS": f"{AUDIO_DIR},{audio_root.resolve()}",
        }


@dataclass(frozen=True)
class Record:
    """One message read back, with the broker's append time in seconds."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    value: dict[str, Any]


async def publish(
    bootstrap: str, topic: str, events: list[dict[str, Any]], *, partitions: int | None = None
) -> dict[str, Record]:
    """Publish events keyed by recording id; return each one's broker record by recording id.

    With ``partitions`` the events go round-robin to explicit partitions instead of by key.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                orjson.dumps(event),
                key=str(event["recording_id"]).encode(),
                partition=None if partitions is None else i % partitions,
            )
            for i, event in enumerate(events)
        ]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {
        str(event["recording_id"]): Record(
            topic, meta.partition, meta.offset, meta.timestamp / 1000, event
        )
        for event, meta in zip(events, sent, strict=True)
    }


async def collect(
    bootstrap: str,
    topics: list[str],
    until: Callable[[list[Record]], bool],
    *,
    timeout_s: float,
    check: Callable[[], None] = lambda: None,
) -> list[Record]:
    """Read ``topics`` from the start until ``until(records)`` holds; ``check`` raises to stop."""
    consumer = _consumer(bootstrap, topics)
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(records)} records after {timeout_s:.0f} s")
            check()
            records += _records(await consumer.getmany(timeout_ms=500, max_records=5000))
    finally:
        await consumer.stop()
    return records


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The next offset of every partition of ``topic``."""
    consumer = _consumer(bootstrap, [])
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(parts)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    keep: Callable[[dict[str, Any]], bool] = lambda value: True,
    *,
    since: dict[int, int] | None = None,
) -> list[Record]:
    """Every message now in ``topic`` (from the offsets ``since``) whose value passes ``keep``."""
    consumer = _consumer(bootstrap, [])
    await consumer.start()
    records: list[Record] = []
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        for tp in parts:
            if since and tp.partition in since:
                consumer.seek(tp, since[tp.partition])
        ends = await consumer.end_offsets(parts)
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500, max_records=10000)
            records += [r for r in _records(batch) if keep(r.value)]
    finally:
        await consumer.stop()
    return records


def _consumer(bootstrap: str, topics: list[str]) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )


def _records(batch: dict[TopicPartition, list[Any]]) -> list[Record]:
    return [
        Record(tp.topic, tp.partition, m.offset, m.timestamp / 1000, orjson.loads(m.value))
        for tp, messages in batch.items()
        for m in messages
    ]
