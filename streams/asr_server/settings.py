"""The local ASR server's settings: one frozen object built at start from flags and environment.

Every field reads ``STREAMS_ASR_<FIELD>`` (upper case), as the worker's settings read
``STREAMS_<FIELD>`` (streams/config.py); ``api_key`` also reads ``DASHSCOPE_API_KEY`` and
``cache_dir`` ``STREAMS_CACHE_DIR``, the names the rest of the project gives them. A command
line flag ``--x-y`` sets field ``x_y`` and wins over the environment (streams/asr_server/main.py;
``--model`` sets ``model_dir``); an empty variable counts as unset. No field may share a name
with the worker's ``STREAMS_ASR_*`` variables (``STREAMS_ASR_MODEL`` is the worker's model name),
because the server sees those too: docker/compose.yaml gives both the same environment.
Durations are seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.api_limits import MAX_REQUEST_S
from streams.asr_server.faults import FaultRule
from streams.asr_server.filetrans import FiletransConfig
from streams.asr_server.scripted import ScriptedConfig
from streams.asr_server.whisper import WhisperConfig
from streams.asr_server.whisper_models import MODEL_NAMES

__all__ = ["ENGINES", "AsrServerSettings"]

ENGINES = ("scripted", "whisper")
_SCRIPTED = ScriptedConfig()
_WHISPER = WhisperConfig()
_FILETRANS = FiletransConfig()


class AsrServerSettings(BaseSettings):
    """Everything the local ASR server can be told; ``streams asr-server --help`` lists it."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMS_ASR_",
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        env_ignore_empty=True,
        use_attribute_docstrings=True,
        protected_namespaces=(),
    )

    engine: Literal["scripted", "whisper"] = "scripted"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    """0 picks a free port (the banner line names it)."""
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DASHSCOPE_API_KEY", "STREAMS_ASR_API_KEY")
    )
    """Key clients must send as ``Authorization: Bearer``."""
    no_auth: bool = False
    """Accept any key (and none)."""
    max_audio_s: float = Field(default=MAX_REQUEST_S, gt=0)
    """Longest audio one request may carry."""
    quota_rpm: int = Field(default=0, ge=0)
    """Refuse a key's requests beyond N per minute, and per second beyond RPM/60, with 429
    Throttling.RateQuota, as the cloud does; 0: no quota."""
    allow_private_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    """Hosts or CIDRs (comma-separated) that audio URLs may reach although not public."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"

    # Long-file API (qwen3-asr-flash-filetrans) and temporary uploads
    filetrans_pending_s: float = Field(default=_FILETRANS.pending_s, ge=0)
    """Time a long-file task stays PENDING before it may run."""
    filetrans_delay_s: float = Field(default=_FILETRANS.delay_s, ge=0)
    """Fixed time a long-file task stays RUNNING before its recognition starts."""
    filetrans_running_max: int = Field(default=_FILETRANS.concurrency, ge=0)
    """Long-file tasks RUNNING at once (the rest wait PENDING); 0: no limit."""
    filetrans_retention: int = Field(default=_FILETRANS.retention, ge=1)
    """Long-file tasks remembered (the oldest finished are forgotten first; 24 h at most)."""
    filetrans_submit_rpm: int = Field(default=0, ge=0)
    """Long-file submits a key may make per minute (per second RPM/60), as the cloud's 100;
    more get 429 Throttling.RateQuota; 0: no quota."""
    task_query_qps: int = Field(default=0, ge=0)
    """Task queries (GET /api/v1/tasks/ID) a key may make per second, as the cloud's 20;
    0: no quota."""
    upload_policy_qps: int = Field(default=0, ge=0)
    """Upload policy requests a key may make per second, as the cloud's 100; 0: no quota."""
    upload_capacity_mb: int = Field(default=1024, ge=1)
    """Total size of the uploaded objects kept in memory (oldest dropped first)."""

    # Scripted engine
    transcript: str | None = None
    """Fixed text for every request; unset: words drawn from a hash of the audio."""
    words_per_second: float = Field(default=_SCRIPTED.words_per_second, gt=0)
    words_per_delta: int = Field(default=_SCRIPTED.words_per_delta, ge=1)
    first_delta_s: float = Field(default=_SCRIPTED.first_delta_s, ge=0)
    delta_interval_s: float = Field(default=_SCRIPTED.delta_interval_s, ge=0)
    first_delta_per_audio_s: float = Field(default=_SCRIPTED.first_delta_per_audio_s, ge=0)
    """Extra delay before the first piece per second of audio (a real-time factor)."""
    language: str = _SCRIPTED.language
    """Language annotated when a request names none."""
    seed: int = _SCRIPTED.seed
    """Seed of the RNG that decides fault rules with a ``rate``."""
    faults: Annotated[tuple[dict[str, Any], ...], NoDecode] = ()
    """Fault rules as JSON, one object or a list (streams/asr_server/faults.py)."""

    # Whisper engine
    model_dir: str = _WHISPER.model
    """base (multilingual), tiny.en (English only) or a CTranslate2 model directory."""
    model_cache_dir: Path | None = None
    """Where base is assembled from its PyPI parts; unset: $STREAMS_CACHE_DIR/models."""
    cache_dir: Path = Field(
        default=Path(".cache"),
        validation_alias=AliasChoices("STREAMS_CACHE_DIR", "STREAMS_ASR_CACHE_DIR"),
    )
    """The project's cache directory, shared with the other commands."""
    device: str = _WHISPER.device
    """cpu or cuda."""
    compute_type: str = _WHISPER.compute_type
    cpu_threads: int = Field(default=_WHISPER.cpu_threads, ge=0)
    """Threads per recognition; 0 shares the cores among the workers."""
    beam_size: int = Field(default=_WHISPER.beam_size, ge=1)
    workers: int = Field(default=_WHISPER.workers, ge=1)
    """Recognitions that run at once."""
    queue: int = Field(default=_WHISPER.queue, ge=0)
    """Requests that may wait for a worker; more get 429 Throttling."""
    vad_filter: bool = _WHISPER.vad_filter
    """Drop silence with Silero VAD before decoding."""

    @field_validator("allow_private_hosts", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("faults", mode="before")
    @classmethod
    def _load_faults(cls, value: object) -> object:
        if isinstance(value, str | bytes):
            value = orjson.loads(value)  # a JSONDecodeError is a ValueError: a validation error
        rules = value if isinstance(value, list | tuple) else [value]
        for rule in rules:
            FaultRule.from_dict(rule)  # a bad rule stops the server before it listens
        return tuple(rules)

    @model_validator(mode="after")
    def _auth_rule(self) -> AsrServerSettings:
        if not self.no_auth and self.api_key is None:
            raise ValueError("give --api-key, set DASHSCOPE_API_KEY, or pass --no-auth")
        return self

    @model_validator(mode="after")
    def _model_rule(self) -> AsrServerSettings:
        # Checked here so that a typo is a usage error, not a traceback after the model loads.
        missing = not (Path(self.model_dir).expanduser() / "model.bin").is_file()
        if self.engine == "whisper" and self.model_dir not in MODEL_NAMES and missing:
            raise ValueError(
                f"--model / $STREAMS_ASR_MODEL_DIR: expected {MODEL_NAMES} or a model directory,"
                f" got {self.model_dir!r}"
            )
        return self

    @property
    def resolved_api_key(self) -> str | None:
        """The key clients must send; None accepts any key."""
        if self.no_auth or self.api_key is None:
            return None
        return self.api_key.get_secret_value()

    def scripted_config(self) -> ScriptedConfig:
        """The scripted engine's part of the settings."""
        return ScriptedConfig(
            transcript=self.transcript,
            words_per_second=self.words_per_second,
            words_per_delta=self.words_per_delta,
            first_delta_s=self.first_delta_s,
            delta_interval_s=self.delta_interval_s,
            first_delta_per_audio_s=self.first_delta_per_audio_s,
            language=self.language,
            faults=self.faults,
            seed=self.seed,
        )

    def filetrans_config(self) -> FiletransConfig:
        """The long-file API's part of the settings."""
        return FiletransConfig(
            pending_s=self.filetrans_pending_s,
            delay_s=self.filetrans_delay_s,
            concurrency=self.filetrans_running_max,
            retention=self.filetrans_retention,
            submit_rpm=self.filetrans_submit_rpm,
            query_qps=self.task_query_qps,
        )

    def whisper_config(self) -> WhisperConfig:
        """The whisper engine's part of the settings."""
        return WhisperConfig(
            model=self.model_dir,
            cache_dir=self.model_cache_dir or self.cache_dir / "models",
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            beam_size=self.beam_size,
            workers=self.workers,
            queue=self.queue,
            vad_filter=self.vad_filter,
        )
