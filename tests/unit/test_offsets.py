"""Partitions ``seek_to_committed`` leaves alone are positioned by the reset policy."""

from __future__ import annotations

import inspect
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.offsets import (
    HandedOver,
    HandOver,
    RewindingTransport,
    rewind,
    rewind_uncommitted,
)

REC = "recordings"
LOG = "app-finalized-changelog"


class FakeConsumer:
    """The calls ``rewind`` makes on an AIOKafkaConsumer, recorded."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.calls: list[tuple[str, Any]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.calls.append(("seek", (tp, offset)))

    async def seek_to_beginning(self, *tps: TopicPartition) -> bool:
        self.calls.append(("beginning", set(tps)))
        return True

    async def seek_to_end(self, *tps: TopicPartition) -> bool:
        self.calls.append(("end", set(tps)))
        return True


def _tp(topic: str, partition: int) -> TopicPartition:
    return TopicPartition(topic, partition)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("earliest", "beginning"), ("latest", "end"), ("none", None)],
)
async def test_partitions_without_a_commit_go_where_the_policy_says(
    policy: str, expected: str | None
) -> None:
    committed = {_tp(REC, 0): 7, _tp(REC, 1): None, _tp(REC, 2): None, _tp(LOG, 1): None}
    consumer = FakeConsumer(set(committed))
    moved = await rewind(consumer, committed, policy=policy, skip_topics={LOG})  # type: ignore[arg-type]
    assert set(moved) == {_tp(REC, 1), _tp(REC, 2)}
    if expected is None:
        assert consumer.calls == []
    else:
        assert consumer.calls == [(expected, {_tp(REC, 1), _tp(REC, 2)})]


async def test_a_committed_zero_is_sought_and_unassigned_partitions_are_left_alone() -> None:
    committed = {_tp(REC, 0): 0, _tp(REC, 1): None, _tp(REC, 2): 3}
    consumer = FakeConsumer({_tp(REC, 0), _tp(REC, 2)})  # partition 1 went in a new rebalance
    moved = await rewind(consumer, committed, policy="earliest")  # type: ignore[arg-type]
    assert moved == [_tp(REC, 0)]
    assert consumer.calls == [("seek", (_tp(REC, 0), 0))]


def test_the_app_gets_the_rewinding_transport() -> None:
    app = faust.App("offsets-unit", broker="kafka://127.0.0.1:9")
    rewind_uncommitted(app)
    assert isinstance(app.transport, RewindingTransport)


def test_another_driver_is_refused() -> None:
    app = faust.App("offsets-unit", broker="confluent://127.0.0.1:9")
    with pytest.raises(ValueError, match="aiokafka"):
        rewind_uncommitted(app)


class FakeApp:
    """What HandOver reads of the app."""

    def __init__(self) -> None:
        self.rebalancing = False
        self.tables = type("Tables", (), {"changelog_topics": {LOG}})()


def test_stream_records_are_held_back_while_the_app_rebalances() -> None:
    app = FakeApp()
    active = {_tp(REC, 4), _tp(LOG, 4)}
    hand_over = HandOver(active, app)  # type: ignore[arg-type]
    assert hand_over  # never the empty "no filter" set
    assert _tp(REC, 4) in hand_over
    assert _tp(LOG, 4) in hand_over
    assert _tp(REC, 5) not in hand_over  # not active
    assert set(hand_over) == active
    app.rebalancing = True
    assert _tp(REC, 4) not in hand_over  # decided when aiokafka asks, not when created
    assert _tp(LOG, 4) in hand_over  # table recovery reads its changelog meanwhile
    assert set(hand_over) == {_tp(LOG, 4)}
    active.discard(_tp(LOG, 4))  # faust's live set: a paused partition
    assert _tp(LOG, 4) not in hand_over
    app.rebalancing = False
    assert _tp(REC, 4) in hand_over


def test_the_overridden_faust_methods_still_exist() -> None:
    """A faust upgrade that renames them would silently drop the corrections."""
    base = faust_aiokafka.AIOKafkaConsumerThread
    params = list(inspect.signature(base._fetch_records).parameters)
    assert params == ["self", "consumer", "active_partitions", "timeout", "max_records"]
    assert "seek_to_committed" in vars(base)
    assert "_new_consumer_thread" in vars(faust_aiokafka.Consumer)
    core = faust_aiokafka.Consumer.__mro__[1:]
    assert any("_add_gap" in vars(c) for c in core)
    assert any("_new_offset" in vars(c) for c in core)


def test_handed_over_offsets_are_found_by_range_with_holes_left_out() -> None:
    handed = HandedOver(window=4)
    tp = _tp(REC, 0)
    handed.add(tp, [10, 11, 12])
    handed.add(tp, [13, 15, 16])  # 14: a transaction marker, never handed over
    assert handed.among(tp, 11, 15) == [11, 12, 13]
    assert handed.among(tp, 14, 15) == []
    assert handed.among(_tp(REC, 1), 0, 100) == []
    for first in range(20, 60, 10):  # the window keeps the last 4 batches only
        handed.add(tp, [first])
    assert handed.among(tp, 0, 20) == []


class RecordingThread:
    """Stands in for faust's consumer thread (which needs a broker): records the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def request_rejoin(self) -> None:
        self.calls.append("rejoin")

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


def _consumer() -> Any:
    app = faust.App("offsets-unit", broker="kafka://127.0.0.1:9")
    rewind_uncommitted(app)
    consumer = app.consumer  # built by the transport; nothing connects until it starts
    consumer._thread = RecordingThread()
    return consumer


async def test_records_lost_on_the_way_to_the_agent_are_not_acknowledged_but_read_again() -> None:
    """faust would count a jump over fetched records as processed; they are read again."""
    consumer = _consumer()
    tp = faust.types.TP(REC, 2)
    consumer.handed_over.add(tp, list(range(15, 29)))
    await consumer._add_gap(tp, 17, 19)  # 16 was delivered, then 19: 17 and 18 were lost
    assert not consumer._gap[tp]
    assert consumer._thread.calls == ["rejoin"]


async def test_a_jump_over_offsets_never_fetched_is_a_gap_as_faust_has_it() -> None:
    consumer = _consumer()
    tp = faust.types.TP(REC, 2)
    consumer.handed_over.add(tp, [15, 16, 19])  # 17 and 18 hold no record (markers)
    await consumer._add_gap(tp, 17, 19)
    assert consumer._gap[tp].overlaps(17)
    assert consumer._thread.calls == []


@pytest.mark.parametrize(
    ("acked", "expected"),
    [
        ([17, 18, 19], 20),  # contiguous from the committed offset
        ([18, 19], None),  # 17 not processed (faust's own guard lets one through)
        ([19, 20], None),
        ([16, 17], 18),  # after a commit faust keeps the last committed offset acked
    ],
)
def test_the_commit_never_passes_a_record_not_processed(
    acked: list[int], expected: int | None
) -> None:
    consumer = _consumer()
    tp = faust.types.TP(REC, 1)
    consumer._committed_offset[tp] = 17
    consumer._acked[tp] = list(acked)
    assert consumer._new_offset(tp) == expected
