"""Run the local ASR server: ``python -m streams.asr_server.main --engine scripted --port 8000``.

``--engine whisper`` recognises for real with faster-whisper (``--model base|tiny.en|DIR``).
Each flag sets one field of :class:`~streams.asr_server.settings.AsrServerSettings` and wins
over its environment variable (``STREAMS_ASR_*``, see ``--help``). The server
listens only once the model is loaded, so ``/health`` answers only when it can recognise.
Prints one line, ``ASR server (<engine> engine) listening on http://HOST:PORT``, once it
accepts connections (with ``--port 0`` the line names the port the system chose), and shuts
down cleanly on SIGTERM or SIGINT. Both engines also serve the long-file API
(``qwen3-asr-flash-filetrans``, streams/asr_server/filetrans.py) and the temporary upload
(streams/asr_server/uploads.py); their flags are in the "long-file API" group of ``--help``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import AliasChoices, ValidationError
from starlette.applications import Starlette

from streams.api_limits import MAX_REQUEST_S
from streams.asr_server.app import create_app
from streams.asr_server.filetrans import FiletransConfig
from streams.asr_server.scripted import ScriptedConfig, ScriptedEngine, control_routes
from streams.asr_server.settings import ENGINES, AsrServerSettings
from streams.asr_server.whisper import WhisperConfig, WhisperEngine, whisper_routes

__all__ = ["ENGINES", "build_app", "main", "parse_settings", "serve"]


def build_app(
    engine_name: str,
    *,
    api_key: str | None,
    scripted_config: ScriptedConfig | None = None,
    whisper_config: WhisperConfig | None = None,
    max_audio_s: float = MAX_REQUEST_S,
    allow_private_hosts: Sequence[str] = (),
    quota_rpm: int | None = None,
    filetrans: FiletransConfig | None = None,
    upload_capacity_mb: int = 1024,
    upload_qps: int = 0,
) -> Starlette:
    """Build the server app for the named engine, with that engine's own extras.

    The whisper engine loads its model here, before the app exists, so that a server built
    from it never answers (not even ``/health``) before it can recognise. ``quota_rpm``
    refuses a key's requests beyond that many per minute (and per second, RPM/60) with 429.
    ``filetrans``, ``upload_capacity_mb`` and ``upload_qps`` set up the long-file API and the
    temporary upload (:func:`~streams.asr_server.app.create_app`).
    """
    shared: dict[str, Any] = {
        "filetrans": filetrans,
        "upload_capacity_mb": upload_capacity_mb,
        "upload_qps": upload_qps,
    }
    if engine_name == "scripted":
        scripted = ScriptedEngine(scripted_config)
        return create_app(
            scripted,
            api_key=api_key,
            max_audio_s=max_audio_s,
            extra_routes=control_routes(scripted),
            on_finished=scripted.record,
            allow_private_hosts=allow_private_hosts,
            quota_rpm=quota_rpm,
            journal=scripted.log_event,
            **shared,
        )
    if engine_name == "whisper":
        whisper = WhisperEngine(whisper_config)
        whisper.load()
        return create_app(
            whisper,
            api_key=api_key,
            max_audio_s=max_audio_s,
            extra_routes=whisper_routes(whisper),
            allow_private_hosts=allow_private_hosts,
            quota_rpm=quota_rpm,
            **shared,
        )
    raise ValueError(f"engine must be one of {ENGINES}, got {engine_name!r}")


def serve(
    engine_name: str = "scripted",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    scripted_config: ScriptedConfig | None = None,
    *,
    whisper_config: WhisperConfig | None = None,
    max_audio_s: float = MAX_REQUEST_S,
    allow_private_hosts: Sequence[str] = (),
    log_level: str = "warning",
    quota_rpm: int | None = None,
    filetrans: FiletransConfig | None = None,
    upload_capacity_mb: int = 1024,
    upload_qps: int = 0,
) -> None:
    """Serve until SIGTERM or SIGINT; ``api_key=None`` accepts any key."""
    # uvicorn configures only its own loggers; the server's warnings need a handler too.
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:    %(name)s: %(message)s")
    app = build_app(
        engine_name,
        api_key=api_key,
        scripted_config=scripted_config,
        whisper_config=whisper_config,
        max_audio_s=max_audio_s,
        allow_private_hosts=allow_private_hosts,
        quota_rpm=quota_rpm,
        filetrans=filetrans,
        upload_capacity_mb=upload_capacity_mb,
        upload_qps=upload_qps,
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off"
    )
    server = _Server(config, engine_name)
    # uvicorn shuts down gracefully on SIGTERM and then raises the signal again with the
    # previous handler; this one turns that into a normal exit instead of death by signal.
    previous = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT after its graceful shutdown
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


class _Server(uvicorn.Server):
    """A uvicorn server that announces itself once its sockets accept connections."""

    def __init__(self, config: uvicorn.Config, engine_name: str):
        super().__init__(config)
        self.engine_name = engine_name

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            banner = f"ASR server ({self.engine_name} engine) listening on http://{host}:{port}"
            print(banner, flush=True)


def _parser() -> argparse.ArgumentParser:
    # SUPPRESS: a flag not given stays out of the namespace, so the environment or the
    # field's default decides; --help shows both from the settings class.
    parser = argparse.ArgumentParser(
        prog="python -m streams.asr_server.main",
        description="Serve the DashScope qwen3-asr-flash API locally.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--engine", choices=ENGINES, help=_help("engine"))
    parser.add_argument("--host", help=_help("host"))
    parser.add_argument("--port", type=int, help=_help("port"))
    parser.add_argument("--api-key", help=_help("api_key"))
    parser.add_argument("--no-auth", action="store_true", help=_help("no_auth"))
    parser.add_argument("--max-audio-s", type=float, help=_help("max_audio_s"))
    parser.add_argument("--quota-rpm", type=int, help=_help("quota_rpm"))
    parser.add_argument("--allow-private-hosts", help=_help("allow_private_hosts"))
    parser.add_argument("--log-level", help=_help("log_level"))
    filetrans = parser.add_argument_group("long-file API and temporary uploads")
    for name in ("filetrans_pending_s", "filetrans_delay_s"):
        filetrans.add_argument(_flag(name), type=float, help=_help(name))
    for name in (
        "filetrans_running_max",
        "filetrans_retention",
        "filetrans_submit_rpm",
        "task_query_qps",
        "upload_policy_qps",
        "upload_capacity_mb",
    ):
        filetrans.add_argument(_flag(name), type=int, help=_help(name))
    scripted = parser.add_argument_group("scripted engine")
    scripted.add_argument("--transcript", help=_help("transcript"))
    for name in ("words_per_second", "first_delta_s", "delta_interval_s"):
        scripted.add_argument(_flag(name), type=float, help=_help(name))
    scripted.add_argument(
        "--first-delta-per-audio-s", type=float, help=_help("first_delta_per_audio_s")
    )
    scripted.add_argument("--words-per-delta", type=int, help=_help("words_per_delta"))
    scripted.add_argument("--language", help=_help("language"))
    scripted.add_argument("--seed", type=int, help=_help("seed"))
    scripted.add_argument("--faults", help=_help("faults"))
    whisper = parser.add_argument_group("whisper engine")
    whisper.add_argument(
        "--model", dest="model_dir", metavar="NAME_OR_DIR", help=_help("model_dir")
    )
    whisper.add_argument("--model-cache-dir", type=Path, help=_help("model_cache_dir"))
    whisper.add_argument("--device", help=_help("device"))
    whisper.add_argument("--compute-type", help=_help("compute_type"))
    for name in ("cpu_threads", "beam_size", "workers", "queue"):
        whisper.add_argument(_flag(name), type=int, help=_help(name))
    whisper.add_argument(
        "--vad-filter", action=argparse.BooleanOptionalAction, help=_help("vad_filter")
    )
    return parser


def _flag(name: str) -> str:
    return "--model" if name == "model_dir" else "--" + name.replace("_", "-")


def _env_name(name: str) -> str:
    alias = AsrServerSettings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"STREAMS_ASR_{name.upper()}"


def _help(name: str) -> str:
    field = AsrServerSettings.model_fields[name]
    default = "unset" if field.default in (None, ()) else repr(field.default)
    described = f"{field.description} " if field.description else ""
    return f"{described}(${_env_name(name)}; default {default})".replace("%", "%%")


def _describe(error: ValidationError) -> str:
    """One line per invalid value, naming its flag and variable and showing what was given."""
    lines = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:  # a rule across fields; its message names the flags
            lines.append(message)
            continue
        name = str(item["loc"][0])
        known = name in AsrServerSettings.model_fields
        where = f"{_flag(name)} / ${_env_name(name)}" if known else name
        # A rule's own ValueError already shows the value; pydantic's messages do not.
        got = "" if item["type"] == "value_error" else f", got {item['input']!r}"
        lines.append(f"{where}: {message}{got}")
    return "; ".join(lines)


def parse_settings(argv: Sequence[str] | None = None) -> AsrServerSettings:
    """Read the settings from the command line over the environment; exit 2 on a bad value."""
    parser = _parser()
    flags = vars(parser.parse_args(argv))
    try:
        return AsrServerSettings(**flags)
    except ValidationError as exc:
        parser.error(_describe(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve; return the exit status."""
    settings = parse_settings(argv)
    serve(
        settings.engine,
        settings.host,
        settings.port,
        settings.resolved_api_key,
        settings.scripted_config(),
        whisper_config=settings.whisper_config(),
        max_audio_s=settings.max_audio_s,
        allow_private_hosts=settings.allow_private_hosts,
        log_level=settings.log_level,
        quota_rpm=settings.quota_rpm or None,
        filetrans=settings.filetrans_config(),
        upload_capacity_mb=settings.upload_capacity_mb,
        upload_qps=settings.upload_policy_qps,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
