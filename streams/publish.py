"""Turn transcript progress into events and hand them to a sender.

The sender is the faust topic in production and anything with the same ``send`` in tests.
Partial events are fire-and-forget (ordered per key by the producer); terminal events are
awaited until the broker acknowledged them, because the recording's offset is committed
only after its terminal event is safely published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from streams.event_types import FailedEvent, FinalEvent
from streams.events import dumps, partial_event

__all__ = ["EventPublisher", "Publisher", "Sender", "TopicNames"]


class Sender(Protocol):
    """Publishes one message; with ``wait`` it returns only once the broker has it."""

    async def send(self, topic: str, key: bytes, value: bytes, *, wait: bool) -> None:
        """Send ``value`` under ``key`` to ``topic``."""
        ...


class EventPublisher(Protocol):
    """Where the pipeline's events go: :class:`Publisher` and the wrappers around it."""

    async def partial(
        self,
        recording_id: str,
        *,
        run: int,
        attempt: int,
        sequence: int,
        channel: int,
        role: str | None,
        chunk_index: int,
        chunk_start_s: float,
        delta: str,
        text: str,
        redacted: bool | None = None,
        held_back_chars: int = 0,
    ) -> None:
        """Publish one delta, without waiting for the broker.

        ``redacted`` and ``held_back_chars``: set by redaction (streams/redaction_publish.py).
        """
        ...

    async def final(self, event: FinalEvent, *, source: str = "") -> None:
        """Publish a final event and wait for the broker.

        ``source`` is ``topic[partition]@offset`` of the recording event it answers (empty
        outside the agent); the ledger keeps it with the event (streams/idempotency.py).
        """
        ...

    async def failed(self, event: FailedEvent) -> None:
        """Publish a failed event and wait for the broker."""
        ...


@dataclass(frozen=True)
class TopicNames:
    """The three outbound topics."""

    partial: str
    final: str
    failed: str


class Publisher:
    """Publishes the events of the recordings a worker processes."""

    def __init__(self, sender: Sender, topics: TopicNames) -> None:
        self._sender = sender
        self._topics = topics

    async def partial(
        self,
        recording_id: str,
        *,
        run: int,
        attempt: int,
        sequence: int,
        channel: int,
        role: str | None,
        chunk_index: int,
        chunk_start_s: float,
        delta: str,
        text: str,
        redacted: bool | None = None,
        held_back_chars: int = 0,
    ) -> None:
        """Publish one delta of one chunk, without waiting for the broker."""
        event = partial_event(
            recording_id,
            run=run,
            attempt=attempt,
            sequence=sequence,
            channel=channel,
            role=role,
            chunk_index=chunk_index,
            chunk_start_s=chunk_start_s,
            delta=delta,
            text=text,
        )
        if redacted is not None:  # redaction is on (streams/redaction_publish.py)
            event["redacted"] = redacted
            event["held_back_chars"] = held_back_chars
        await self._sender.send(
            self._topics.partial, recording_id.encode(), dumps(event), wait=False
        )

    async def final(self, event: FinalEvent, *, source: str = "") -> None:
        """Publish a final event and wait until the broker has it (``source``: unused here)."""
        await self._sender.send(
            self._topics.final, event["recording_id"].encode(), dumps(event), wait=True
        )

    async def failed(self, event: FailedEvent) -> None:
        """Publish a failed event and wait until the broker has it."""
        key = (event["recording_id"] or event["event_id"]).encode()
        await self._sender.send(self._topics.failed, key, dumps(event), wait=True)
