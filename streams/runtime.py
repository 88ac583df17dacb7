"""The composition root: turns :class:`~streams.config.Settings` into the worker's ready parts.

Only here do settings become stage objects (fetch limits, chunk policy, the recognition backend
with its metering and rate limit, the publisher with its ledger, the audio processes), so the
pipeline and the stages get plain values and never see the settings. streams/app.py (the faust
App) and streams/agents.py (the agent) use this module; it imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import httpx

from streams.answer import Answerer
from streams.audiostages import AudioStages
from streams.backend_choice import ChosenBackend
from streams.chunking import ChunkPolicy, max_chunk_seconds
from streams.config import Settings
from streams.decode import SAMPLE_RATE
from streams.events import RecognitionDefaults
from streams.fetch import FetchLimits, fetch_client
from streams.filetrans_client import FiletransClient, QueryLimiter
from streams.filetrans_poller import PollRules, TaskPoller
from streams.filetrans_task import FiletransRules, TaskStarter
from streams.idempotency import Ledger, LedgerPublisher
from streams.metrics import MeteredBackend, MeteredPublisher, Metrics
from streams.pipeline import Pipeline, PipelineRules
from streams.publish import EventPublisher, Sender, TopicNames
from streams.ratelimit import RateLimitedBackend, RequestLimiter, Share, SlotPlan
from streams.redaction import RedactionPolicy
from streams.redaction_publish import RedactingPipeline, RedactingPublisher
from streams.transcribe import DashScopeBackend, OpenAIBackend, RecognitionBackend, asr_client

__all__ = [
    "Runtime",
    "chunk_policy",
    "fetch_limits",
    "pipeline_rules",
    "redaction_policy",
    "topic_names",
]

log = logging.getLogger(__name__)


def fetch_limits(settings: Settings) -> FetchLimits:
    """The fetch stage's limits from the settings."""
    return FetchLimits(
        max_bytes=settings.max_audio_bytes,
        timeout_s=settings.fetch_timeout_s,
        file_roots=settings.file_roots,
        allow_private_hosts=settings.allow_private_hosts,
    )


def chunk_policy(settings: Settings) -> ChunkPolicy:
    """The planning stage's policy from the settings."""
    return ChunkPolicy(
        silence_s=settings.silence_threshold_s,
        pad_s=settings.speech_pad_s,
        music_filter=settings.music_filter,
        max_chunk_s=max_chunk_seconds(
            settings.max_request_s, settings.max_request_bytes, SAMPLE_RATE
        ),
    )


def pipeline_rules(settings: Settings) -> PipelineRules:
    """Everything the pipeline takes from the settings, as plain values."""
    return PipelineRules(
        defaults=RecognitionDefaults(
            model=settings.asr_model,
            language=settings.language,
            enable_itn=settings.enable_itn,
            context=settings.context,
            layout=settings.channel_layout,
            roles=settings.channel_roles,
            mixed_languages=settings.mixed_languages,
        ),
        fetch_limits=fetch_limits(settings),
        chunk_policy=chunk_policy(settings),
        split_plan=settings.split_plan,
        max_audio_s=settings.max_audio_s,
        vad_aggressiveness=settings.vad_aggressiveness,
        deadline_s=settings.recording_deadline_s,
        attempts=settings.asr_attempts,
        concurrency=settings.asr_concurrency,
        price_per_second_usd=settings.price_per_second_usd,
        model_for=settings.model_for_region,
    )


def redaction_policy(settings: Settings) -> RedactionPolicy:
    """The worker's redaction policy (each recording event may override kinds and style)."""
    key = settings.redact_hash_key
    return RedactionPolicy(
        kinds=frozenset(settings.redact),
        style=settings.redact_style,
        hash_key=key.get_secret_value().encode() if key is not None else b"",
    )


def topic_names(settings: Settings) -> TopicNames:
    """The three outbound topics from the settings."""
    return TopicNames(
        partial=settings.topic_partial, final=settings.topic_final, failed=settings.topic_failed
    )


class Runtime:
    """The worker's clients, pipeline and quota share: built on first use, closed at shutdown."""

    def __init__(
        self,
        settings: Settings,
        sender: Sender,
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
        self._publisher: EventPublisher | None = None
        self._answerer: Answerer | None = None
        self.query_limiter = QueryLimiter(settings.filetrans_task_qps)
        """The worker's share of the account's filetrans task queries."""
        self._filetrans_client: FiletransClient | None = None
        self._starter: TaskStarter | None = None
        self._poller: TaskPoller | None = None
        self.stages = AudioStages(settings.audio_processes)
        """Where decode, VAD and encoding run (streams/audiostages.py)."""

    def publisher(self) -> EventPublisher:
        """The pipeline's publisher (metered, and keeping finals in the ledger)."""
        self.pipeline()
        assert self._publisher is not None  # set with the pipeline
        return self._publisher

    def answerer(self) -> Answerer:
        """What the agent calls for each recording event (streams/answer.py)."""
        if self._answerer is None:
            if self._ledger is None:
                raise RuntimeError("answering recordings needs the ledger (the faust table)")
            self._answerer = Answerer(
                pipeline=self.pipeline(),
                publisher=self.publisher(),
                ledger=self._ledger,
                metrics=self.metrics,
                max_starts=self.settings.max_starts,
                attempts=self.settings.asr_attempts,
                default_backend=self.settings.asr_backend,
                filetrans=self._starter,
            )
        return self._answerer

    def poller(self) -> TaskPoller | None:
        """The filetrans task poller (None without the ledger)."""
        self.pipeline()
        return self._poller

    @property
    def filetrans_client(self) -> FiletransClient | None:
        """The filetrans HTTP client, once the pipeline is built (its request counts)."""
        return self._filetrans_client

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
            # Each streaming backend a recording may choose (recognition.backend), metered and
            # then rate limited, outermost, so that every request (retries and re-sends after
            # a 429 included) waits for a slot of the worker's partitions, and a 429 pauses
            # all of them (ratelimit.py).
            streaming: dict[str, RecognitionBackend] = {
                cls.name: RateLimitedBackend(
                    MeteredBackend(
                        cls(self._http, s.resolved_asr_base_url, s.resolved_api_key),
                        self.metrics,
                    ),
                    self.limiter,
                )
                for cls in (DashScopeBackend, OpenAIBackend)
            }
            default = s.asr_backend if s.asr_backend in streaming else "dashscope"
            backend = ChosenBackend(streaming, default)
            rules = pipeline_rules(s)
            # Audio downloads get their own guarded client: it never carries the API key and
            # connects only to the addresses the SSRF guard checked.
            self._fetch_http = fetch_client(rules.fetch_limits)
            publisher: EventPublisher = MeteredPublisher(self._sender, topic_names(s), self.metrics)
            if self._ledger is not None:
                # Each final is kept in the ledger before it goes out (idempotency.py).
                publisher = LedgerPublisher(publisher, self._ledger)
            # Outermost: the ledger keeps finals only once they are redacted.
            policy = redaction_policy(s)
            publisher = RedactingPublisher(publisher, policy)
            self._publisher = publisher
            self.stages.start()
            self._filetrans_client = FiletransClient(
                self._http,
                s.resolved_asr_base_url,
                s.resolved_api_key,
                submit_limiter=self.limiter,
                query_limiter=self.query_limiter,
                attempts=s.asr_attempts,
            )
            if self._ledger is not None:
                ft = FiletransRules(
                    model=s.filetrans_model,
                    pass_url=s.filetrans_pass_url,
                    gap_s=s.filetrans_gap_s,
                    poll_initial_s=s.filetrans_poll_initial_s,
                    poll_max_s=s.filetrans_poll_max_s,
                )
                self._starter = TaskStarter(
                    rules,
                    ft,
                    self._filetrans_client,
                    self._ledger,
                    publisher,
                    self._fetch_http,
                    self.stages,
                )
                # The poller writes the ledger itself and redacts its finals before it keeps
                # them (filetrans_poller.py): its publisher is metered and redacting only.
                self._poller = TaskPoller(
                    self._ledger,
                    self._filetrans_client,
                    RedactingPublisher(
                        MeteredPublisher(self._sender, topic_names(s), self.metrics), policy
                    ),
                    policy,
                    PollRules(
                        initial_s=s.filetrans_poll_initial_s,
                        max_s=s.filetrans_poll_max_s,
                        price_per_second_usd=s.price_per_second_usd,
                    ),
                )
            self._pipeline = RedactingPipeline(
                rules, backend, publisher, self._fetch_http, stages=self.stages, policy=policy
            )
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
        self.query_limiter.share(len(share.partitions) / max(1, share.of))
        self.metrics.rate_share_partitions.set(len(share.partitions))
        self.metrics.rate_share_rpm.set(share.requests_per_minute)
        return share

    def release_partitions(self, partitions: Iterable[int]) -> Share:
        """Give up the slots of revoked ``partitions`` of the recordings topic."""
        return self.hold_partitions(set(self.limiter.share.partitions) - set(partitions))

    async def let_go_tasks(self, partitions: Iterable[int]) -> None:
        """Stop following the filetrans tasks of revoked ``partitions`` (their next owner will)."""
        if self._poller is not None:
            await self._poller.let_go(partitions)

    async def close(self) -> None:
        """Stop the task poller, close the HTTP clients and stop the audio processes."""
        if self._poller is not None:
            await self._poller.stop()
        for client in (self._http, self._fetch_http):
            if client is not None:
                await client.aclose()
        await self.stages.close()
