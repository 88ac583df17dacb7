"""No recording skipped across a rebalance: faust's consumer, with two corrections.

The bug (faust-streaming 0.15.3 with aiokafka 0.14): records published while a rebalance
settles could be skipped by a worker on partitions with no committed offset yet (a new topic
or a new group), until the next rebalance, or for good once a later record of the partition
was processed and committed. How, in the installed sources:

1. aiokafka advances its position when it hands records over: ``Fetcher.fetched_records``
   (``aiokafka/consumer/fetcher.py``) waits for a pending reassignment and then drains the
   records of the *new* assignment of every partition in the set it was given. faust calls it
   from ``AIOKafkaConsumerThread._fetch_records`` (``faust/transport/drivers/aiokafka.py``)
   with the live set of active partitions, with a 1 s timeout, so a fetch in flight when the
   rebalance starts returns records of the new assignment.
2. faust drops records it fetched during a rebalance: ``Consumer.getmany``
   (``faust/transport/consumer.py``) discards the batch when its flow is stopped (the
   ``else`` branch after ``if self.flow_active``, "getmany called while flow not active") or
   the generation changed, and table recovery resumes the stream partitions *before* it seeks
   them (``faust/tables/recovery.py``, ``on_recovery_completed``: ``resume_partitions``, then
   ``perform_seek``), after which ``flow_control.resume()`` clears every stream buffer
   (``mode/utils/queues.py``, ``FlowControlEvent.resume``). Records delivered meanwhile are
   thrown away; a record delivered late also moves ``_read_offset`` past the ones fetched
   again, which ``Consumer._drain_messages`` then drops ("DROPPED MESSAGE ROFF").
3. Seeking back does not undo it for a partition never committed on: ``perform_seek`` calls
   aiokafka's ``AIOKafkaConsumer.seek_to_committed`` (``aiokafka/consumer/consumer.py``),
   which seeks only ``if offset and offset > 0``; a partition with no committed offset
   (``None``) stays past the dropped records. (aio-libs/aiokafka#1003 reports that the same
   test skips a committed 0; faust-streaming/faust#216 is a similar symptom, closed.)

The corrections, both in faust's aiokafka consumer thread:

- While the app is rebalancing (from the revocation until faust's "Worker ready"), aiokafka
  hands over no records of stream partitions: they stay in its buffer with the position
  before them, and are handed over once the streams run again. Changelog partitions are
  read as before (table recovery and standbys need them). This removes the drops of step 2.
- ``seek_to_committed`` moves a stream partition without a committed offset to where a new
  group starts, by ``consumer_auto_offset_reset`` (``earliest`` by default, and ours: the
  beginning; ``latest``: the end; ``none``: left alone), and a committed 0 to offset 0: the
  position aiokafka gives such a partition when it is assigned. Records read again that way
  were never committed, and the ``finalized`` table answers those that have a terminal event
  already (streams/idempotency.py).

A third hole remained, seen once in the suite's worker-SIGKILL case (4 of 100 recordings never
answered): records aiokafka handed over can still be lost inside faust after a restart (two
records per partition, taken from the stream buffer while recovery finished), and faust then
counts them as processed. ``Consumer._drain_messages`` treats any jump in offsets as a gap
(meant for compacted topics and transaction markers, whose offsets hold no record) and adds it
to the acknowledged offsets (``_add_gap``), so the commit moves past records no agent saw; its
guard against a gap at the head of the acknowledged offsets (``_new_offset``) is off by one
(it lets one missing record through). The third correction, in the consumer:

- Every offset aiokafka hands over of a stream partition is remembered (a bounded window). A
  gap whose offsets were handed over is a loss, not a gap: it is never acknowledged, a warning
  names the offsets, and the consumer rejoins its group, so faust's rebalance path seeks every
  partition back to its committed offset and the lost records are read again (records read
  twice are answered by the ``finalized`` table). A gap of offsets never handed over (no record
  there) is left to faust, as before.
- The commit of a stream partition never moves while the lowest acknowledged offset is above the
  committed one: a record in between was not processed.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["HandOver", "HandedOver", "RewindingTransport", "rewind", "rewind_uncommitted"]

log = logging.getLogger(__name__)


class HandOver:
    """The partitions aiokafka may hand records of, decided at the moment it hands them.

    aiokafka's ``fetched_records(partitions)`` asks whether the set is empty and whether a
    partition is in it, when it drains, so this stands in for faust's (live) set of active
    partitions: a partition is in it when faust has it active and, while the app is
    rebalancing, only if it belongs to a changelog topic.
    """

    def __init__(self, active: Collection[Any], app: faust.types.AppT) -> None:
        self._active = active
        self._app = app
        self._changelogs = app.tables.changelog_topics

    def __bool__(self) -> bool:
        return True  # never "no filter": an empty set would make aiokafka hand over everything

    def __contains__(self, tp: object) -> bool:
        if tp not in self._active:
            return False
        return not self._app.rebalancing or getattr(tp, "topic", None) in self._changelogs

    def __iter__(self) -> Iterator[Any]:
        return (tp for tp in list(self._active) if tp in self)


class HandedOver:
    """Which offsets of each partition aiokafka handed over lately (the last ``window`` batches).

    Written by the consumer thread when it hands records over, read by the app's thread when
    faust sees a jump in offsets: offsets handed over are records, so a jump over them means
    records were lost on the way to the agent.
    """

    def __init__(self, window: int = 256) -> None:
        self._lock = threading.Lock()
        self._batches: defaultdict[Any, deque[tuple[int, int, frozenset[int]]]] = defaultdict(
            lambda: deque(maxlen=window)
        )

    def add(self, tp: Any, offsets: list[int]) -> None:
        """Remember one batch of ``tp``'s records, by their offsets (ascending)."""
        if not offsets:
            return
        first, last = offsets[0], offsets[-1]
        holes = (
            frozenset(range(first, last + 1)) - frozenset(offsets)
            if (last - first + 1 != len(offsets))
            else frozenset()
        )
        with self._lock:
            self._batches[tp].append((first, last, holes))

    def among(self, tp: Any, start: int, end: int) -> list[int]:
        """The offsets in ``[start, end)`` that were handed over for ``tp``."""
        with self._lock:
            batches = list(self._batches.get(tp, ()))
        found: set[int] = set()
        for first, last, holes in batches:
            lo, hi = max(first, start), min(last + 1, end)
            found.update(o for o in range(lo, hi) if o not in holes)
        return sorted(found)


class _RewindingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, with the two corrections of this module."""

    async def _fetch_records(
        self,
        consumer: AIOKafkaConsumer,
        active_partitions: Any,
        timeout: float | None = None,  # noqa: ASYNC109 (faust's signature)
        max_records: int | None = None,
    ) -> Any:
        if active_partitions:  # None or empty: faust's own cases, left as they are
            active_partitions = HandOver(active_partitions, self.app)
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        handed: HandedOver = self.consumer.handed_over  # type: ignore[attr-defined]
        changelogs = self.app.tables.changelog_topics
        for tp, batch in (records or {}).items():
            if tp.topic not in changelogs:
                handed.add(tp, [record.offset for record in batch])
        return records

    async def request_rejoin(self) -> None:
        """Make the consumer rejoin its group (a rebalance: faust then seeks to committed)."""
        self._ensure_consumer()._coordinator.request_rejoin()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets; partitions with none go where the reset policy says."""
        committed: Mapping[TP, int] = await self.call_thread(self._seek_to_committed_or_reset)
        return committed

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
    skip_topics: Collection[str] = frozenset(),
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
    handed_over: HandedOver

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.handed_over = HandedOver()
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _RewindingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _is_stream(self, tp: TP) -> bool:
        return tp.topic not in self.app.tables.changelog_topics

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # faust calls this before delivering the record at ``offset_to``, when the last record
        # it delivered of ``tp`` was at ``offset_from - 1``.
        lost = self.handed_over.among(tp, offset_from, offset_to) if self._is_stream(tp) else []
        if not lost:
            await super()._add_gap(tp, offset_from, offset_to)
            return
        log.warning(
            "records %s of %s[%d] were fetched but never reached the agent: they are not "
            "counted as processed, and the consumer rejoins its group to read them again "
            "from the committed offset",
            lost,
            tp.topic,
            tp.partition,
        )
        await self._thread.call_thread(self._thread.request_rejoin)  # type: ignore[attr-defined]

    def _new_offset(self, tp: TP) -> int | None:
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if committed is not None and acked and self._is_stream(tp):
            gaps = self._gap[tp]
            head = min(min(acked), gaps.begin()) if gaps else min(acked)
            if head > committed:
                return None  # the record at ``committed`` was not processed yet
        new: int | None = super()._new_offset(tp)
        return new


class RewindingTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport, whose consumer has the corrections of this module."""

    Consumer = _RewindingConsumer


def rewind_uncommitted(app: faust.App) -> None:
    """Give ``app`` the consumer transport of this module (see the module docstring).

    Call it right after creating the app, before topics and agents are declared (they touch
    the transport). Raises ValueError when the broker URL names a driver other than aiokafka.
    """
    url = app.conf.broker_consumer[0]
    if url.scheme not in ("kafka", "aiokafka"):
        raise ValueError(f"offset rewinding is written for faust's aiokafka driver, not {url}")
    app.transport = RewindingTransport(app.conf.broker_consumer, app)
