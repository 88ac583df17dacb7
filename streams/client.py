"""The Kafka side of ``streams publish`` and ``streams tail``: recordings in, transcripts out.

Publishing turns sources (files, directories, URLs) into recording events and sends them keyed
by recording id; following assigns every partition of the transcript topics and hands on each
event. Both get their Kafka clients from :class:`Connection`, which carries the security
settings (``Settings.kafka_security``). Nothing here prints; the CLI does.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError

import schemas
from streams.config import Settings
from streams.events import Layout, recording_event
from streams.kafka_security import PLAINTEXT, KafkaSecurity
from streams.topics import TopicSpec, ensure_topics

__all__ = [
    "MEDIA_SUFFIXES",
    "ClientError",
    "Connection",
    "Follower",
    "SourceError",
    "expand",
    "follow",
    "recording_events",
    "send",
    "validate",
]

# What a directory source yields: the containers and codecs the decode stage reads.
MEDIA_SUFFIXES = frozenset(
    (
        *(".3gp", ".aac", ".aif", ".aiff", ".amr", ".au", ".avi", ".caf", ".flac", ".flv"),
        *(".gsm", ".m4a", ".mka", ".mkv", ".mov", ".mp2", ".mp3", ".mp4", ".mpeg", ".mpg"),
        *(".oga", ".ogg", ".opus", ".wav", ".webm", ".wma", ".wmv"),
    )
)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class ClientError(Exception):
    """A publish or a follow cannot go on; the message says why, for a person."""


class SourceError(ClientError):
    """A source names nothing to publish, or the event made from it breaks the schema."""


@dataclass(frozen=True)
class Connection:
    """Where the clients connect and how they authenticate, the same for all of them."""

    bootstrap: str
    security: KafkaSecurity = PLAINTEXT

    @classmethod
    def from_settings(cls, settings: Settings) -> Connection:
        """The brokers and security settings of ``settings`` (the environment)."""
        return cls(settings.kafka_bootstrap_servers, settings.kafka_security)

    def producer(self, **options: Any) -> Any:
        """A new, unstarted ``AIOKafkaProducer``."""
        kwargs = self.security.client_kwargs()
        return AIOKafkaProducer(bootstrap_servers=self.bootstrap, **kwargs, **options)

    def consumer(self, *topics: str, **options: Any) -> Any:
        """A new, unstarted ``AIOKafkaConsumer`` (subscribed to ``topics`` if any)."""
        kwargs = self.security.client_kwargs()
        return AIOKafkaConsumer(*topics, bootstrap_servers=self.bootstrap, **kwargs, **options)


def expand(source: str, recursive: bool = False) -> list[str]:
    """The URLs of a source: a URL itself, a file's ``file://`` URL, a directory's media files.

    Raises:
        SourceError: the path does not exist, or the directory holds no media file.
    """
    if _URL.match(source):
        return [source]
    path = Path(source).resolve()
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        files = sorted(p for p in found if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        if not files:
            raise SourceError(f"no audio or video files in {source!r}")
        return [p.as_uri() for p in files]
    if not path.exists():
        raise SourceError(f"no such file or directory: {source!r}")
    return [path.as_uri()]


def _stem(url: str) -> str:
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "recording"


def recording_events(
    sources: Iterable[str],
    *,
    recursive: bool = False,
    id_prefix: str = "",
    layout: Layout | None = None,
    roles: list[str] | None = None,
    language: str | None = None,
    context: str | None = None,
    hotwords: list[str] | None = None,
    enable_itn: bool | None = None,
    call: dict[str, Any] | None = None,
    backend: Literal["dashscope", "openai", "filetrans"] | None = None,
) -> list[dict[str, Any]]:
    """One recording event per URL of each source, all with the same options.

    Recording ids are the file's name, made safe, with a random suffix: publishing the same
    file again transcribes it again instead of being taken for a redelivery.
    """
    return [
        recording_event(
            f"{id_prefix}{_stem(url)}-{uuid.uuid4().hex[:8]}",
            url,
            layout=layout,
            roles=roles,
            language=language,
            context=context,
            hotwords=hotwords,
            enable_itn=enable_itn,
            call=call,
            backend=backend,
        )
        for source in sources
        for url in expand(source, recursive)
    ]


def validate(events: Iterable[dict[str, Any]]) -> None:
    """Hold each event to the recording schema before anything is sent.

    Raises:
        SourceError: naming the event's URL and every rule it breaks.
    """
    check = schemas.validator("recording")
    for event in events:
        if errors := [e.message for e in check.iter_errors(event)]:
            raise SourceError(f"{event['audio_url']}: {'; '.join(errors)}")


async def send(
    connection: Connection,
    topic: str,
    events: Iterable[dict[str, Any]],
    on_sent: Callable[[dict[str, Any]], object] = lambda event: None,
) -> None:
    """Send each event keyed by its recording id; ``on_sent`` once the broker has it."""
    producer = connection.producer()
    await producer.start()
    try:
        for event in events:
            key = event["recording_id"].encode()
            await producer.send_and_wait(topic, orjson.dumps(event), key=key)
            on_sent(event)
    finally:
        await producer.stop()


class Follower:
    """Reads every partition of ``topics``, with no consumer group, from their end or start.

    ``async with Follower(...) as follower`` returns once every partition is positioned, so
    whatever is published afterwards is read; ``poll`` returns the events that came meanwhile.
    """

    def __init__(
        self, connection: Connection, topics: list[str], *, from_beginning: bool = False
    ) -> None:
        self.connection = connection
        self.topics = topics
        self.from_beginning = from_beginning
        self._consumer: Any = None

    async def __aenter__(self) -> Follower:
        self._consumer = self.connection.consumer(group_id=None, enable_auto_commit=False)
        await self._consumer.start()
        try:
            await self._assign()
        except BaseException:
            await self._consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._consumer.stop()

    async def _assign(self) -> None:
        # Assigned and positioned explicitly, so "following" is true once this returns.
        try:
            found = await ensure_topics(
                self.connection.bootstrap,
                [TopicSpec(name, 1, 1) for name in self.topics],
                create=False,
                security=self.connection.security,
            )
        except TopicAuthorizationFailedError as exc:
            raise ClientError(str(exc)) from None
        if missing := [s.spec.name for s in found if not s.partitions]:
            raise ClientError(f"no such topics: {missing} (see `streams topics`)")
        partitions = [TopicPartition(s.spec.name, p) for s in found for p in range(s.partitions)]
        self._consumer.assign(partitions)
        if self.from_beginning:
            await self._consumer.seek_to_beginning(*partitions)
        else:
            await self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self._consumer.position(tp)

    async def poll(self, timeout_s: float = 0.25) -> list[tuple[dict[str, Any], bytes]]:
        """The events that arrived, decoded and raw; waits up to ``timeout_s`` for the first."""
        try:
            batch = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000))
        except TopicAuthorizationFailedError as exc:
            # Seeing a topic (DESCRIBE) is not reading it (READ): an ACL may allow one only.
            topics = ", ".join(map(str, exc.args)) or "the transcript topics"
            who = self.connection.security.describe()
            raise ClientError(f"not authorized to read {topics} as {who} (no READ ACL)") from None
        return [
            (orjson.loads(record.value), record.value)
            for records in batch.values()
            for record in records
        ]


async def follow(
    connection: Connection,
    topics: list[str],
    *,
    from_beginning: bool = False,
    count: int | None = None,
    timeout_s: float | None = None,
    on_event: Callable[[dict[str, Any], bytes], None],
    on_ready: Callable[[], object] = lambda: None,
) -> bool:
    """Pass every event of ``topics`` to ``on_event`` until ``count`` outcomes or ``timeout_s``.

    Returns True once ``count`` final or failed events were seen.
    """
    seen = 0
    async with Follower(connection, topics, from_beginning=from_beginning) as follower:
        on_ready()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while count is None or seen < count:
            if deadline is not None and time.monotonic() > deadline:
                break
            for event, raw in await follower.poll():
                on_event(event, raw)
                if event.get("type") in ("final", "failed"):
                    seen += 1
    return count is not None and seen >= count
