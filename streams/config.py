"""Settings: one frozen object read from the environment at startup and passed down.

Every variable is ``STREAMS_<FIELD>`` (upper case), except the few that have a well-known
name elsewhere: ``KAFKA_BOOTSTRAP_SERVERS``, the ``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*``/
``KAFKA_SSL_*`` family (named as in Kafka's own client configs) and ``DASHSCOPE_API_KEY``.
Durations are seconds, sizes bytes. Stage modules never read the environment; they get the
values they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.api_limits import MAX_DATA_URI_BYTES
from streams.kafka_security import KafkaSecurity

__all__ = ["DASHSCOPE_REGIONS", "LOCAL_ASR_URL", "Settings"]

# Native API hosts per region (docs/dashscope-protocol.md §0). US model names carry "-us".
DASHSCOPE_REGIONS = {
    "intl": "https://dashscope-intl.aliyuncs.com",
    "cn": "https://dashscope.aliyuncs.com",
    "us": "https://dashscope-us.aliyuncs.com",
}
LOCAL_ASR_URL = "http://127.0.0.1:8765"


def _kafka_env(name: str, default: object = None, **kwargs: Any) -> Any:
    """A field read from ``NAME`` as Kafka users spell it, or from ``STREAMS_NAME``."""
    return Field(default=default, validation_alias=AliasChoices(name, f"STREAMS_{name}"), **kwargs)


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Everything the worker can be told; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMS_", frozen=True, extra="ignore", populate_by_name=True
    )

    # Kafka
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "STREAMS_KAFKA_BOOTSTRAP_SERVERS"),
    )
    # How every client (worker, topics, publish, tail, dev tools) authenticates and encrypts;
    # streams/kafka_security.py turns these into faust's and aiokafka's options.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _kafka_env(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = _kafka_env(
        "KAFKA_SASL_MECHANISM"
    )
    """PLAIN when a SASL protocol is chosen and this is not set."""
    kafka_sasl_username: str | None = _kafka_env("KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = _kafka_env("KAFKA_SASL_PASSWORD")
    kafka_sasl_password_file: FilePath | None = _kafka_env("KAFKA_SASL_PASSWORD_FILE")
    """A file holding the SASL password (a mounted secret); instead of KAFKA_SASL_PASSWORD."""
    kafka_ssl_cafile: FilePath | None = _kafka_env("KAFKA_SSL_CAFILE")
    """PEM CA bundle the broker's certificate must chain to; the system's CAs when unset."""
    kafka_ssl_certfile: FilePath | None = _kafka_env("KAFKA_SSL_CERTFILE")
    """PEM client certificate for mTLS (may also hold the key)."""
    kafka_ssl_keyfile: FilePath | None = _kafka_env("KAFKA_SSL_KEYFILE")
    kafka_connect_timeout_s: float = Field(default=30.0, gt=0)
    """How long a command keeps trying to reach Kafka at start before it exits with the
    reason; a refused login or certificate ends it at once."""
    app_id: str = "call-transcriber"
    """Faust application id, which is also the consumer group."""
    topic_recordings: str = "recordings"
    topic_partial: str = "transcripts.partial"
    topic_final: str = "transcripts.final"
    topic_failed: str = "transcripts.failed"
    topic_partitions: int = Field(default=8, ge=1)
    """Partitions of the recordings topic: the number of recordings a worker group runs at once."""
    topic_replication: int = Field(default=1, ge=1)
    create_topics: bool = True
    """Create missing topics at worker start (off for clusters where topics are managed)."""
    web_port: int = 6066
    web_enabled: bool = True
    """The worker's web server, which serves Prometheus metrics at ``/metrics``."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line, with the recording's fields."""

    # Recognition backend
    asr_backend: Literal["dashscope", "openai", "filetrans"] = "dashscope"
    """``dashscope`` (native SSE), ``openai`` (compatible mode, vLLM) or ``filetrans`` (one
    asynchronous task per call, streams/filetrans_task.py); each recording event may choose."""
    dashscope_region: Literal["intl", "cn", "us"] = "intl"
    asr_base_url: str | None = None
    """Overrides the region's host, e.g. a self-hosted or the local server."""
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DASHSCOPE_API_KEY", "STREAMS_API_KEY")
    )
    api_key_file: Path | None = None
    """A file holding the API key (e.g. a mounted secret); used when the key is not set."""
    asr_model: str = "qwen3-asr-flash"
    asr_http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    """aiohttp costs less CPU per streamed request (tests/benchmarks/bench_client.py)."""
    asr_connect_timeout_s: float = 10.0
    asr_read_timeout_s: float = 60.0
    """Longest silence allowed on an open stream, including before the first frame."""
    asr_attempts: int = Field(default=5, ge=1)
    asr_concurrency: int = Field(default=16, ge=1)
    """Recognition requests in flight per worker, across all partitions."""
    asr_requests_per_minute: float = Field(default=100.0, gt=0)
    """The account's request quota per minute (qwen3-asr-flash: 100), shared by every worker
    of the consumer group: each worker sends in the share of time slots that its partitions of
    the recordings topic own, so no second holds more than RPM/60 (streams/ratelimit.py). A 429
    pauses every request of the worker for its Retry-After."""
    filetrans_model: str = "qwen3-asr-flash-filetrans"
    """Model of the filetrans backend's tasks (``-us`` added in the US region like the others)."""
    filetrans_task_qps: float = Field(default=20.0, gt=0)
    """The account's task-query quota per second, shared by the group in proportion to the
    partitions each worker holds."""
    filetrans_poll_initial_s: float = Field(default=1.0, gt=0)
    filetrans_poll_max_s: float = Field(default=15.0, gt=0)
    """Polls of one task start this far apart and back off (doubling) up to the maximum."""
    filetrans_pass_url: bool = False
    """A public ``https://`` audio_url goes to the task as its file_url, without an upload (the
    recogniser then bills the silence too); else a silence-compacted FLAC is uploaded."""
    filetrans_gap_s: float = Field(default=0.4, ge=0)
    """Silence kept between two speech stretches in the compacted audio (a sentence boundary)."""
    state_store: str = "memory://"
    """Store of the ``finalized`` table: ``memory://`` (rebuilt from its changelog topic at
    start) or ``rocksdb://`` (on disk; needs ``faust-streaming[rocksdict]``)."""
    finalized_retention_s: float = Field(default=30 * 86400.0, gt=0)
    """How long a recording's outcome is remembered; republished later, it is transcribed again."""
    recording_deadline_s: float = 900.0
    """Time budget of one recording, retries included."""
    max_starts: int = Field(default=3, ge=2)
    """Starts of a recording that may end with the worker dying before it is failed
    ``worker_crashed`` instead of processed again; the last of them runs alone in the worker
    (streams/crashloop.py says why 3)."""
    price_per_second_usd: float = 0.000035

    # Recognition defaults, overridden by each event's `recognition` object
    language: str | None = None
    enable_itn: bool = False
    context: str = ""
    channel_layout: Literal["mix", "split", "auto"] = "mix"
    channel_roles: Annotated[tuple[str, ...], NoDecode] = ("agent", "customer")
    split_plan: Literal["turns", "packed"] = "packed"
    """Requests of a split call: ``packed`` carries many speech stretches of one channel per
    request (fewest requests and billed seconds, coarse turns); ``turns`` sends one request
    per turn (exact turn times, emotion and language per turn). README "Request economy"."""
    mixed_languages: bool = False
    """False: a call speaks one language per channel, detected once from its longest request
    and passed to the others; True: every request detects its own."""

    # Redaction of partial and final text (docs/redaction.md), overridden by each event's
    # `redaction` object. Every kind is on by default: payment data must never reach a topic
    # (PCI DSS), and a transcript is rarely the better for the others. "none": off.
    redact: Annotated[
        tuple[
            Literal["card", "expiry", "cvv", "phone", "email", "iban", "account", "national_id"],
            ...,
        ],
        NoDecode,
    ] = ("card", "expiry", "cvv", "phone", "email", "iban", "account", "national_id")
    redact_style: Literal["label", "hash", "mask"] = "label"
    """``label``: [CARD]; ``hash``: [CARD:keyed hash]; ``mask``: [CARD ****1111]."""
    redact_hash_key: SecretStr | None = None
    """Key of the ``hash`` style; without one, a hashed card number can be brute-forced."""

    # Fetch and decode limits
    file_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    """Directories that file:// references may point into (comma-separated)."""
    allow_private_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    """Hosts or CIDRs that http(s) references may reach despite being private (comma-separated)."""
    max_audio_bytes: int = 500 * 1024 * 1024
    max_audio_s: float = 4 * 3600.0
    fetch_timeout_s: float = 300.0

    # Planning requests: per-request limits of the API and what counts as silence
    max_request_s: float = Field(default=300.0, gt=1)
    """Longest audio in one recognition request (qwen3-asr-flash docs: 5 minutes)."""
    max_request_bytes: int = Field(default=MAX_DATA_URI_BYTES, ge=64 * 1024)
    """Largest base64 ``data:`` URI in one request (docs: "10 MB", decimal); bounds a request
    as if its audio did not compress at all."""
    silence_threshold_s: float = Field(default=1.0, ge=0.1)
    """Silences at least this long are not sent and end a request; shorter pauses are sent."""
    speech_pad_s: float = Field(default=0.2, ge=0)
    """Audio kept before and after each stretch of speech."""
    vad_aggressiveness: int = Field(default=1, ge=0, le=3)
    """WebRTC VAD mode: 0 sends the most, 3 the least (docs/audio.md measures each)."""
    music_filter: bool = True
    """Leave hold music, ringback and call-progress tones out of the requests (streams/music.py):
    WebRTC's VAD calls them speech. Off: they are sent and billed as before."""
    audio_processes: int = Field(default=2, ge=0)
    """Processes that decode, run the VAD and encode (streams/audiostages.py): a decoder crash
    fails one recording instead of the worker, and the stages use more than one core (about
    70 MiB each). 0: threads of the worker, as before."""

    @model_validator(mode="before")
    @classmethod
    def _lists_from_csv(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in ("channel_roles", "file_roots", "allow_private_hosts"):
                if name in data:
                    data[name] = _split_csv(data[name])
            if isinstance(data.get("redact"), str):
                value = data["redact"].strip().lower()
                data["redact"] = () if value in ("", "none", "off") else _split_csv(value)
        return data

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _kafka_upper(cls, value: object) -> object:
        # Kafka's docs and users write these in either case (sasl_ssl, scram-sha-256).
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security_rules(self) -> Settings:
        # Combinations are checked where the clients are built, so no path skips the check;
        # here it runs once at start, so a wrong combination stops every command before it
        # connects (a ValueError names the variables).
        _ = self.kafka_security
        return self

    @model_validator(mode="after")
    def _region_rules(self) -> Settings:
        # The US region serves no OpenAI-compatible mode (docs/dashscope-protocol.md §0).
        if self.dashscope_region == "us" and self.asr_backend == "openai" and not self.asr_base_url:
            raise ValueError(
                "the US region has no OpenAI-compatible mode: use asr_backend dashscope"
            )
        return self

    def model_for_region(self, model: str) -> str:
        """The model name the region serves: the US region's names carry ``-us``."""
        uses_us = self.dashscope_region == "us" and not self.asr_base_url
        if uses_us and self.resolved_api_key is not None and not model.endswith("-us"):
            return model + "-us"
        return model

    @property
    def resolved_api_key(self) -> str | None:
        """The API key from the environment or the key file, never logged."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip() or None
        return None

    @property
    def kafka_security(self) -> KafkaSecurity:
        """How this process's Kafka clients authenticate and encrypt (kafka_security.py)."""
        return KafkaSecurity.load(
            protocol=self.kafka_security_protocol,
            mechanism=self.kafka_sasl_mechanism,
            username=self.kafka_sasl_username,
            password=self.kafka_sasl_password,
            password_file=self.kafka_sasl_password_file,
            cafile=self.kafka_ssl_cafile,
            certfile=self.kafka_ssl_certfile,
            keyfile=self.kafka_ssl_keyfile,
        )

    @property
    def resolved_asr_base_url(self) -> str:
        """Where recognition requests go: explicit URL, else the region, else the local server."""
        if self.asr_base_url:
            return self.asr_base_url.rstrip("/")
        if self.resolved_api_key is None:
            # No key, no cloud: the embedded recogniser serves the same protocol locally.
            return LOCAL_ASR_URL
        return DASHSCOPE_REGIONS[self.dashscope_region]
