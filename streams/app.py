"""The faust App: its settings, topics, ledger table, timers and rebalance hooks.

The worker's parts come from the composition root (streams/runtime.py); the agent from
streams/agents.py.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from faust.types import TP
from mode.types.signals import BaseSignalT

from streams.agents import register_agents, register_task_poller
from streams.config import Settings
from streams.idempotency import Ledger
from streams.metrics import Metrics, add_metrics_page
from streams.offsets import rewind_uncommitted
from streams.runtime import Runtime

__all__ = ["FaustSender", "create_app"]

log = logging.getLogger(__name__)


class FaustSender:
    """Sends through the app's producer, bypassing faust's attachments.

    Attachments would hold every send until the source offset commits: partial events would
    arrive in one lump at the end. We publish at once and await the terminal event instead.
    """

    def __init__(self, topics: Mapping[str, faust.types.TopicT]) -> None:
        self._topics = topics

    async def send(self, topic: str, key: bytes, value: bytes, *, wait: bool) -> None:
        """Send now; with ``wait``, return once the broker acknowledged the message."""
        pending = await self._topics[topic].send(key=key, value=value, force=True)
        if wait:
            await pending


def create_app(settings: Settings) -> faust.App:
    """Build the faust App with its topics and the transcription agent."""
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        # The same login and TLS as every other client of the service (kafka_security.py);
        # None on PLAINTEXT. faust passes it to its consumer, producers and topic admin.
        broker_credentials=settings.kafka_security.faust_credentials(),
        # Events are decoded by the pipeline, so that malformed JSON becomes a failed event
        # instead of an exception inside faust.
        key_serializer="raw",
        value_serializer="raw",
        topic_disable_leader=True,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        # Commit soon after each recording; there are few, slow messages, not many fast ones.
        broker_commit_every=1,
        broker_commit_interval=1.0,
        # Few buffered events per partition: a crash or rebalance then redoes little.
        stream_buffer_maxsize=32,
        broker_max_poll_records=16,
        # On revoke faust waits for in-flight recordings; a long call must not miss the
        # rebalance window (docs/kafka-faust.md §3.2).
        broker_rebalance_timeout=max(60.0, settings.recording_deadline_s + 60.0),
        stream_processing_timeout=settings.recording_deadline_s + 60.0,
        broker_commit_livelock_soft_timeout=settings.recording_deadline_s + 60.0,
    )
    # No recording skipped across a rebalance: records are not fetched and dropped while
    # it settles, and a partition never committed on starts at its beginning (offsets.py).
    rewind_uncommitted(app)
    recordings_name = settings.topic_recordings
    recordings = app.topic(recordings_name, key_type=bytes, value_type=bytes)
    outputs = {
        name: app.topic(name, key_type=bytes, value_type=bytes)
        for name in (settings.topic_partial, settings.topic_final, settings.topic_failed)
    }
    metrics = Metrics.for_worker()
    add_metrics_page(app, metrics)
    # Co-partitioned with the recordings topic: same partition count, keyed by recording id.
    ledger = Ledger(
        app,
        partitions=settings.topic_partitions,
        store=settings.state_store,
        retention_s=settings.finalized_retention_s,
    )
    runtime = Runtime(settings, FaustSender(outputs), metrics, ledger)
    register_agents(app, recordings, runtime)
    register_task_poller(app, runtime)

    async def _forget_expired_outcomes() -> None:
        if forgotten := ledger.forget_expired():
            log.info("forgot %d recording outcomes older than the retention", forgotten)

    app.timer(interval=min(3600.0, settings.finalized_retention_s))(_forget_expired_outcomes)

    # The quota follows the partitions (ratelimit.py). faust sends "revoked" only once the
    # in-flight recordings of the old assignment are done, and the eager rebalance protocol
    # hands a partition to its next owner only after every member revoked: the slots of two
    # workers never overlap. "assigned" carries the whole new assignment, tables' included.
    async def _release_rate_share(app: faust.App, revoked: set[TP], **kwargs: object) -> None:
        gone = [tp.partition for tp in revoked if tp.topic == recordings_name]
        runtime.release_partitions(gone)
        # The filetrans tasks of those partitions are their next owner's from now on.
        await runtime.let_go_tasks(gone)

    async def _split_rate_share(app: faust.App, assigned: set[TP], **kwargs: object) -> None:
        runtime.hold_partitions(tp.partition for tp in assigned if tp.topic == recordings_name)

    async def _close_runtime(app: faust.App, **kwargs: object) -> None:
        await runtime.close()

    _connect(app.on_partitions_revoked, _release_rate_share)
    _connect(app.on_partitions_assigned, _split_rate_share)
    _connect(app.on_before_shutdown, _close_runtime)

    return app


def _connect(signal: BaseSignalT[Any], receiver: Callable[..., Awaitable[None]]) -> None:
    """Connect ``receiver`` to a faust signal.

    faust types a receiver as taking any positional arguments; ours name the ones the signal
    sends, which mypy cannot match against that: this signature erases the names.
    """
    signal.connect(receiver)
