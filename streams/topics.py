"""Create and check the service's topics explicitly: the broker never auto-creates them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)
from aiokafka.protocol.offset import OffsetRequest

from streams.config import Settings
from streams.idempotency import changelog_configs, changelog_topic
from streams.kafka_security import PLAINTEXT, KafkaSecurity

__all__ = ["TopicSpec", "TopicStatus", "ensure_service_topics", "ensure_topics", "topic_specs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """A topic the service needs, with the partitions and replication it should have."""

    name: str
    partitions: int
    replication: int
    configs: tuple[tuple[str, str], ...] = ()
    """Topic configs it is created with (existing topics are left as they are)."""


@dataclass(frozen=True)
class TopicStatus:
    """What ``ensure_topics`` found or did for one topic."""

    spec: TopicSpec
    partitions: int
    created: bool

    @property
    def ok(self) -> bool:
        """Whether the topic has at least the partitions it should have."""
        return self.partitions >= self.spec.partitions


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The four topics and the ``finalized`` table's changelog.

    Outputs get as many partitions as the input, keyed the same way. The changelog is
    co-partitioned with the input and compacted (streams/idempotency.py). It is created here,
    with the others and before faust starts, because faust creates it only as it starts, and
    its co-partitioning check counts a topic missing from the consumer's metadata as 0
    partitions: a first start with many partitions could stop on ``PartitionsMismatch``.
    """
    return [
        *(
            TopicSpec(name, settings.topic_partitions, settings.topic_replication)
            for name in (
                settings.topic_recordings,
                settings.topic_partial,
                settings.topic_final,
                settings.topic_failed,
            )
        ),
        TopicSpec(
            changelog_topic(settings.app_id),
            settings.topic_partitions,
            settings.topic_replication,
            tuple(changelog_configs(settings.finalized_retention_s).items()),
        ),
    ]


async def ensure_topics(
    bootstrap_servers: str,
    specs: list[TopicSpec],
    *,
    create: bool = True,
    timeout_s: float = 30.0,
    security: KafkaSecurity = PLAINTEXT,
) -> list[TopicStatus]:
    """Create the missing topics (when ``create``) and report each topic's partition count.

    Raises:
        TopicAuthorizationFailedError: the principal may not see or create some of them
            (on a cluster with ACLs an unauthorized topic looks missing; this says which).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=10_000,
        client_id="streams-topics",
        **security.client_kwargs(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing and create:
            response = await admin.create_topics(
                [
                    NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs))
                    for s in missing
                ]
            )
            for topic, code, *message in response.topic_errors:
                # Another worker may create it between our list and our create: fine.
                if code not in (0, TopicAlreadyExistsError.errno):
                    error = for_code(code)
                    raise error(f"cannot create topic {topic!r}: {error.__name__} {message}")
        return await _describe(
            admin, specs, {s.name for s in missing} if create else set(), timeout_s
        )
    finally:
        await admin.close()


async def ensure_service_topics(settings: Settings, *, create: bool = True) -> list[TopicStatus]:
    """:func:`ensure_topics` for the service's own topics (:func:`topic_specs`) on its Kafka."""
    return await ensure_topics(
        settings.kafka_bootstrap_servers,
        topic_specs(settings),
        create=create,
        security=settings.kafka_security,
    )


async def _describe(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], created: set[str], timeout_s: float
) -> list[TopicStatus]:
    # CreateTopics returns once the controller committed the topics; brokers' metadata
    # caches catch up a moment later, and until every partition has a leader clients see
    # NotLeaderForPartition or UnknownTopicOrPartition. Even then a leader named in the
    # metadata may not have opened its log yet (_serving), and clients log an ERROR or a
    # WARNING per retry: on a new topic every client would start with a screen of them.
    counts: dict[str, int] = {}
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                described = await admin.describe_topics([s.name for s in specs])
            except KafkaError:
                described = []
            counts = {}
            led = True
            denied = [
                t["topic"]
                for t in described
                if t.get("error_code") == TopicAuthorizationFailedError.errno
            ]
            if denied:
                raise TopicAuthorizationFailedError(
                    f"not authorized to describe topics {sorted(denied)} (no DESCRIBE ACL)"
                )
            for topic in described:
                if topic.get("error_code", 0) != 0:
                    continue
                partitions = topic.get("partitions") or []
                counts[topic["topic"]] = len(partitions)
                led = led and all(
                    p.get("error_code", 0) == 0 and p.get("leader", -1) >= 0 for p in partitions
                )
            if not created or (
                led
                and all(s.name in counts for s in specs)
                and await _serving(admin, [t for t in described if t["topic"] in created])
            ):
                break
            await asyncio.sleep(0.05)
    statuses = [TopicStatus(s, counts.get(s.name, 0), s.name in created) for s in specs]
    for status in statuses:
        if status.partitions and not status.ok:
            log.warning(
                "topic %s has %d partitions, fewer than the %d configured",
                status.spec.name,
                status.partitions,
                status.spec.partitions,
            )
    return statuses


async def _serving(admin: AIOKafkaAdminClient, described: list[dict[str, Any]]) -> bool:
    """Whether each partition's leader answers a ListOffsets request for it as leader.

    A broker publishes new metadata before its replica manager has made the partitions
    (KRaft's BrokerMetadataPublisher), so a leader in the metadata can still answer
    NOT_LEADER_OR_FOLLOWER; ListOffsets is the cheapest request that asks the replica itself.
    """
    by_leader: dict[int, dict[str, list[tuple[int, int]]]] = {}
    for topic in described:
        for partition in topic["partitions"]:
            # -1: the latest offset; any answer without an error will do.
            wanted = by_leader.setdefault(partition["leader"], {})
            wanted.setdefault(topic["topic"], []).append((partition["partition"], -1))
    for leader, topics in by_leader.items():
        # The admin client has no ListOffsets call; its own connection sends the request.
        request = OffsetRequest(-1, 0, list(topics.items()))
        try:
            response = await admin._client.send(leader, request)
        except KafkaError:
            return False
        for _topic, partitions in response.topics:
            if any(error_code != 0 for _partition, error_code, *_ in partitions):
                return False
    return True
