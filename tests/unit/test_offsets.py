"""Partitions ``seek_to_committed`` leaves alone are positioned by the reset policy."""

from __future__ import annotations

import inspect
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.offsets import HandOver, RewindingTransport, rewind, rewind_uncommitted

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
