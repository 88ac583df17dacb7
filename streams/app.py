"""Wiring: the faust App, its topics, and the shared clients the agent's pipeline uses."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import faust
import httpx
from faust.types import TP

from streams.audiostages import AudioStages
from streams.config import Settings
from streams.fetch import fetch_client
from streams.idempotency import Ledger, LedgerPublisher
from streams.metrics import MeteredBackend, MeteredPublisher, Metrics, add_metrics_page
from streams.offsets import rewind_uncommitted
from streams.pipeline import Pipeline, fetch_limits
from streams.publish import TopicNames
from streams.ratelimit import RateLimitedBackend, RequestLimiter, Share, SlotPlan
from streams.transcribe import DashScopeBackend, OpenAIBackend, RecognitionBackend, asr_client

__all__ = ["FaustSender", "Runtime", "create_app"]

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


class Runtime:
    """The worker's shared HTTP client and pipeline, created on first use, closed at shutdown."""

    def __init__(
        self,
        settings: Settings,
        sender: FaustSender,
        metrics: Metrics | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self._sender = sender
        self._ledger = ledger
        # The worker's share of the account's quota: created before the first rebalance,
        # which hands it the partitions whose time slots it may send in.
        self.limiter = RequestLimiter(
            SlotPlan(settings.asr_requests_per_minute, settings.topic_partitions)
        )
        self._http: httpx.AsyncClient | None = None
        self._fetch_http: httpx.AsyncClient | None = None
        self._pipeline: Pipeline | None = None
        self._publisher: Any = None
        self.stages = AudioStages(settings.audio_processes)
        """Where decode, VAD and encoding run (streams/audiostages.py)."""

    def publisher(self) -> Any:
        """The pipeline's publisher (metered, and keeping finals in the ledger)."""
        self.pipeline()
        return self._publisher

    def pipeline(self) -> Pipeline:
        """The pipeline, built inside the running event loop the first time it is asked for."""
        if self._pipeline is None:
            s = self.settings
            self._http = asr_client(
                s.asr_http_transport,
                connect_timeout_s=s.asr_connect_timeout_s,
                read_timeout_s=s.asr_read_timeout_s,
                concurrency=s.asr_concurrency,
            )
            backend_cls: type[DashScopeBackend | OpenAIBackend] = (
                DashScopeBackend if s.asr_backend == "dashscope" else OpenAIBackend
            )
            backend: RecognitionBackend = backend_cls(
                self._http, s.resolved_asr_base_url, s.resolved_api_key
            )
            backend = MeteredBackend(backend, self.metrics)
            # Outermost, so that every request (retries and re-sends after a 429 included)
            # waits for a slot of the worker's partitions, and a 429 pauses all of them
            # (ratelimit.py).
            backend = RateLimitedBackend(backend, self.limiter)
            topics = TopicNames(partial=s.topic_partial, final=s.topic_final, failed=s.topic_failed)
            # Audio downloads get their own guarded client: it never carries the API key and
            # connects only to the addresses the SSRF guard checked.
            self._fetch_http = fetch_client(fetch_limits(s))
            publisher: Any = MeteredPublisher(self._sender, topics, self.metrics)
            if self._ledger is not None:
                # Each final is kept in the ledger before it goes out (idempotency.py).
                publisher = LedgerPublisher(publisher, self._ledger)
            self._publisher = publisher
            self.stages.start()
            self._pipeline = Pipeline(s, backend, publisher, self._fetch_http, stages=self.stages)
            log.info(
                "recognition via %s backend at %s, model %s",
                backend.name,
                s.resolved_asr_base_url,
                s.asr_model,
            )
        return self._pipeline

    def hold_partitions(self, partitions: Iterable[int]) -> Share:
        """Split the quota again: the worker now holds ``partitions`` of the recordings topic."""
        share = self.limiter.assign(partitions)
        self.metrics.rate_share_partitions.set(len(share.partitions))
        self.metrics.rate_share_rpm.set(share.requests_per_minute)
        return share

    def release_partitions(self, partitions: Iterable[int]) -> Share:
        """Give up the slots of revoked ``partitions`` of the recordings topic."""
        return self.hold_partitions(set(self.limiter.share.partitions) - set(partitions))

    async def close(self) -> None:
        """Close the HTTP clients and stop the audio processes."""
        for client in (self._http, self._fetch_http):
            if client is not None:
                await client.aclose()
        await self.stages.close()


def create_app(settings: Settings) -> faust.App:
    """Build the faust App with its topics and the transcription agent."""
    from streams.agents import register_agents  # agents import the app's types

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
        # rebalance window (kafka-faust.md §3.2).
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
    register_agents(app, recordings, runtime, ledger)

    @app.timer(interval=min(3600.0, settings.finalized_retention_s))
    async def _forget_expired_outcomes() -> None:
        if forgotten := ledger.forget_expired():
            log.info("forgot %d recording outcomes older than the retention", forgotten)

    # The quota follows the partitions (ratelimit.py). faust sends "revoked" only once the
    # in-flight recordings of the old assignment are done, and the eager rebalance protocol
    # hands a partition to its next owner only after every member revoked: the slots of two
    # workers never overlap. "assigned" carries the whole new assignment, tables' included.
    @app.on_partitions_revoked.connect
    async def _release_rate_share(app: faust.App, revoked: set[TP], **kwargs: object) -> None:
        runtime.release_partitions(tp.partition for tp in revoked if tp.topic == recordings_name)

    @app.on_partitions_assigned.connect
    async def _split_rate_share(app: faust.App, assigned: set[TP], **kwargs: object) -> None:
        runtime.hold_partitions(tp.partition for tp in assigned if tp.topic == recordings_name)

    @app.on_before_shutdown.connect
    async def _close_runtime(app: faust.App, **kwargs: object) -> None:
        await runtime.close()

    return app
