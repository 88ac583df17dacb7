"""After a rebalance, a partition the group never committed on starts where the reset policy says.

The bug this works around (faust-streaming 0.15.3 with aiokafka 0.14): records published while
a rebalance settles could be skipped by the worker that gave up partitions, on any partition
of the group that had no committed offset yet (a new topic or a new group).

1. The worker's fetch is in flight when the rebalance starts: faust's fetcher waits in
   aiokafka's ``Fetcher.fetched_records`` (faust ``transport/drivers/aiokafka.py``,
   ``AIOKafkaConsumerThread._fetch_records``, timeout 1 s), which waits for the new
   assignment and then returns records of it, moving aiokafka's position past them
   (``aiokafka/consumer/fetcher.py``, ``fetched_records``).
2. faust's flow is stopped during the rebalance, so ``Consumer.getmany`` drops those records
   (``faust/transport/consumer.py``, the ``else`` branch after ``if self.flow_active``) and
   calls ``perform_seek``, as table recovery does again before "Worker ready"
   (``faust/tables/recovery.py``, ``on_recovery_completed`` and ``_resume_streams``):
   "Seek stream partitions to committed offsets".
3. ``perform_seek`` calls aiokafka's ``AIOKafkaConsumer.seek_to_committed``
   (``aiokafka/consumer/consumer.py``), which seeks only ``if offset and offset > 0``: a
   partition without a committed offset (``None``) stays where the dropped records left it.

The dropped records were then not read again until the next rebalance, and never once a later
record of the partition was processed and its offset committed: no terminal event, against
the delivery rule. A partition with a committed offset was not affected, which is why only new
topics and groups saw it (aio-libs/aiokafka#1003 reports the sibling case: a committed offset
of 0 is skipped by the same test; faust-streaming/faust#216 is a similar symptom without
tables, closed).

The fix: the worker's consumer seeks to the committed offsets as before, then moves every
stream partition that has none to where a new group starts, by ``consumer_auto_offset_reset``
(``earliest`` by default, ours: the beginning of the partition; ``latest``: its end; ``none``:
left alone), and a committed 0 to offset 0. That is the position aiokafka itself gives such a
partition when it is assigned, so nothing is read that a fresh assignment would not read.
Records read again this way were never committed; the ``finalized`` table answers those that
have a terminal event already (streams/idempotency.py). Changelog partitions are left alone:
table recovery positions them itself, and their offsets are never committed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["RewindingTransport", "rewind_uncommitted"]

log = logging.getLogger(__name__)


class _RewindingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread; ``seek_to_committed`` also handles "no commit yet"."""

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets; partitions with none go where the reset policy says."""
        return await self.call_thread(self._seek_to_committed_or_reset)

    async def _seek_to_committed_or_reset(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed: Mapping[TP, int] = await consumer.seek_to_committed()
        await rewind(
            consumer,
            committed,
            policy=self.app.conf.consumer_auto_offset_reset,
            skip_topics=self.app.tables.changelog_topics,
        )
        return committed


async def rewind(
    consumer: AIOKafkaConsumer,
    committed: Mapping[Any, int | None],
    *,
    policy: str,
    skip_topics: set[str] | frozenset[str] = frozenset(),
) -> list[Any]:
    """Position the partitions that ``seek_to_committed`` left alone; return them.

    ``committed`` is what ``seek_to_committed`` returned (the committed offset of each assigned
    partition, None for none). Partitions of ``skip_topics``, and any no longer assigned (a
    new rebalance began meanwhile), are left alone.
    """
    assigned = consumer.assignment()
    moved = [
        tp
        for tp, offset in committed.items()
        if not offset and tp in assigned and tp.topic not in skip_topics
    ]
    for tp in moved:
        if committed[tp] == 0:
            consumer.seek(tp, 0)  # aiokafka skips a committed 0 (aio-libs/aiokafka#1003)
    uncommitted = [tp for tp in moved if committed[tp] is None]
    if uncommitted and policy == "earliest":
        await consumer.seek_to_beginning(*uncommitted)
    elif uncommitted and policy == "latest":
        await consumer.seek_to_end(*uncommitted)
    if moved:
        log.info(
            "nothing committed on %s yet: positioned by auto_offset_reset=%s",
            sorted(f"{tp.topic}[{tp.partition}]" for tp in moved),
            policy,
        )
    return moved


class _RewindingConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _RewindingConsumerThread(self, loop=self.loop, beacon=self.beacon)


class RewindingTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport, with a consumer that rewinds never-committed partitions."""

    Consumer = _RewindingConsumer


def rewind_uncommitted(app: faust.App) -> None:
    """Give ``app`` a consumer transport whose seeks to committed offsets handle "none yet".

    Call it right after creating the app, before topics and agents are declared (they touch
    the transport). Raises ValueError when the broker URL names a driver other than aiokafka.
    """
    url = app.conf.broker_consumer[0]
    if url.scheme not in ("kafka", "aiokafka"):
        raise ValueError(f"offset rewinding is written for faust's aiokafka driver, not {url}")
    app.transport = RewindingTransport(app.conf.broker_consumer, app)
