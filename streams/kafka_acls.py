"""The ACLs a worker's principal needs, and writing ACLs to a broker with Kafka's Admin API.

On a cluster with an authorizer a principal may do only what an ACL allows. :func:`worker_acls`
is the least the worker needs, no more: read the recordings topic, write the three transcript
topics (and create all four, for ``STREAMS_CREATE_TOPICS``), everything on faust's own topics
(``<app id>-…``: the ledger's changelog), and its consumer group. The secured local Kafka grants
exactly these, so the tests prove the list is complete.

aiokafka's admin client has no ACL calls and its protocol module only has CreateAcls v0/v1,
which Kafka 4.0 removed (KIP-896); :class:`CreateAclsRequest` is v2/v3, the flexible encoding
of the same fields (Kafka's ``CreateAclsRequest.json``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeAlias

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

if TYPE_CHECKING:
    from streams.config import Settings
    from streams.kafka_security import KafkaSecurity

__all__ = [
    "AclBinding",
    "Operation",
    "PatternType",
    "ResourceType",
    "create_acls",
    "worker_acls",
]


class ResourceType(enum.IntEnum):
    """Kafka's ``ResourceType`` codes."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class PatternType(enum.IntEnum):
    """Kafka's ``PatternType`` codes: a literal name or a name prefix."""

    LITERAL = 3
    PREFIXED = 4


class Operation(enum.IntEnum):
    """Kafka's ``AclOperation`` codes."""

    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    DESCRIBE_CONFIGS = 10
    IDEMPOTENT_WRITE = 12


_ALLOW = 3  # AclPermissionType.ALLOW; nothing here writes DENY rules


@dataclass(frozen=True)
class AclBinding:
    """Allow ``principal`` (``User:name``) ``operation`` on a resource, from any host."""

    principal: str
    resource: ResourceType
    name: str
    operation: Operation
    pattern: PatternType = PatternType.LITERAL

    def __str__(self) -> str:
        kind = "prefix" if self.pattern is PatternType.PREFIXED else "name"
        return (
            f"{self.principal} may {self.operation.name} {self.resource.name} {kind} {self.name!r}"
        )


def worker_acls(settings: Settings, principal: str) -> list[AclBinding]:
    """What a worker running with ``settings`` as ``principal`` must be allowed, and no more."""
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    bindings = [
        AclBinding(principal, topic, settings.topic_recordings, op)
        for op in (Operation.READ, Operation.DESCRIBE, Operation.CREATE)
    ]
    for name in (settings.topic_partial, settings.topic_final, settings.topic_failed):
        bindings += [
            AclBinding(principal, topic, name, op)
            for op in (Operation.WRITE, Operation.DESCRIBE, Operation.CREATE)
        ]
    # faust names its internal topics "<app id>-<table>-changelog" and creates them itself.
    bindings.append(
        AclBinding(principal, topic, f"{settings.app_id}-", Operation.ALL, PatternType.PREFIXED)
    )
    bindings += [
        AclBinding(principal, group, settings.app_id, op)
        for op in (Operation.READ, Operation.DESCRIBE)
    ]
    return bindings


# aiokafka ships no types, so its protocol classes are ``Any`` to mypy; the ignores below are
# for subclassing them and nothing else.
class _CreateAclsResponse_v2(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 30
    API_VERSION = 2
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _CreateAclsResponse_v3(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 30
    API_VERSION = 3
    SCHEMA = _CreateAclsResponse_v2.SCHEMA


class _CreateAclsRequest_v2(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    FLEXIBLE_VERSION: ClassVar[bool] = True
    API_KEY = 30
    API_VERSION = 2
    RESPONSE_TYPE = _CreateAclsResponse_v2
    SCHEMA = Schema(
        (
            "creations",
            CompactArray(
                ("resource_type", Int8),
                ("resource_name", CompactString("utf-8")),
                ("resource_pattern_type", Int8),
                ("principal", CompactString("utf-8")),
                ("host", CompactString("utf-8")),
                ("operation", Int8),
                ("permission_type", Int8),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _CreateAclsRequest_v3(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    FLEXIBLE_VERSION: ClassVar[bool] = True
    API_KEY = 30
    API_VERSION = 3
    RESPONSE_TYPE = _CreateAclsResponse_v3
    SCHEMA = _CreateAclsRequest_v2.SCHEMA


_CreateAclsStruct: TypeAlias = _CreateAclsRequest_v2 | _CreateAclsRequest_v3


class CreateAclsRequest(Request[_CreateAclsStruct]):  # type: ignore[misc]  # aiokafka is untyped
    """CreateAcls v2/v3 for the ``bindings`` (the broker picks; Kafka 4.x serves both)."""

    API_KEY = 30

    def __init__(self, bindings: Iterable[AclBinding]) -> None:
        self._creations: list[tuple[object, ...]] = [
            (b.resource, b.name, b.pattern, b.principal, "*", b.operation, _ALLOW, {})
            for b in bindings
        ]

    def build(self, request_struct_class: type[_CreateAclsStruct]) -> _CreateAclsStruct:
        """The request in the version the broker and we both speak."""
        return request_struct_class(self._creations, {})


async def create_acls(
    bootstrap_servers: str,
    security: KafkaSecurity,
    bindings: list[AclBinding],
    *,
    timeout_s: float = 30.0,
) -> None:
    """Write ``bindings`` to the cluster as a principal allowed to ALTER it (a super user).

    Raises:
        KafkaError: the broker refused one of them; the message names it and the reason.
    """
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        client_id="streams-acls",
        request_timeout_ms=int(timeout_s * 1000),
        **security.client_kwargs(),
    )
    await client.bootstrap()
    try:
        response = await client.send(client.get_random_node(), CreateAclsRequest(bindings))
    finally:
        await client.close()
    if len(response.results) != len(bindings):
        raise KafkaError(f"{len(bindings)} ACLs sent, {len(response.results)} results back")
    for binding, (code, message, _tags) in zip(bindings, response.results, strict=True):
        if code:
            raise for_code(code)(f"cannot create ACL «{binding}»: {message or 'no reason given'}")
