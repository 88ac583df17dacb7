"""Run the local ASR server: ``python -m streams.asr_server.main --engine scripted --port 8000``.

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
from types import FrameType

import orjson
import uvicorn
from starlette.applications import Starlette

from streams.asr_server.app import create_app
from streams.asr_server.scripted import FaultRule, ScriptedConfig, ScriptedEngine, control_routes

__all__ = ["ENGINES", "build_app", "main", "serve"]

ENGINES = ("scripted",)


def build_app(
    engine_name: str,
    *,
    api_key: str | None,
    scripted_config: ScriptedConfig | None = None,
    max_audio_s: float = 300.0,
) -> Starlette:
    """Build the server app for the named engine, with that engine's own extras."""
    if engine_name == "scripted":
        engine = ScriptedEngine(scripted_config)
        return create_app(
            engine,
            api_key=api_key,
            max_audio_s=max_audio_s,
            extra_routes=control_routes(engine),
            on_finished=engine.record,
        )
    raise ValueError(f"engine must be one of {ENGINES}, got {engine_name!r}")


def serve(
    engine_name: str = "scripted",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    scripted_config: ScriptedConfig | None = None,
    *,
    max_audio_s: float = 300.0,
    log_level: str = "warning",
) -> None:
    """Serve until SIGTERM or SIGINT; ``api_key=None`` accepts any key."""
    app = build_app(
        engine_name, api_key=api_key, scripted_config=scripted_config, max_audio_s=max_audio_s
    )
    # uvicorn configures only its own loggers; the server's warnings need a handler too.
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:    %(name)s: %(message)s")
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
    parser.add_argument("--max-audio-s", type=float, default=300.0)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    api_key = None if args.no_auth else (args.api_key or os.environ.get("DASHSCOPE_API_KEY"))
    if not args.no_auth and not api_key:
        parser.error("give --api-key, set DASHSCOPE_API_KEY, or pass --no-auth")
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
    serve(
        args.engine,
        args.host,
        args.port,
        api_key,
        config,
        max_audio_s=args.max_audio_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
