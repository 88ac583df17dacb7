"""The ``streams`` command: run the service's parts, publish recordings, watch transcripts."""

from __future__ import annotations

import asyncio
import functools
import sys
import uuid
from collections.abc import Awaitable
from typing import Any

import click
import orjson

from streams.config import Settings
from streams.logging_setup import LOG_FORMATS, configure, dict_config

__all__ = ["main"]


class _Commands(click.Group):
    """In the order a person meets them; the dev wing's commands load only when named."""

    _ORDER = ("worker", "asr-server", "dev", "kafka", "topics", "publish", "tail", "demo")
    _DEV = frozenset(("dev", "kafka", "demo"))

    def list_commands(self, ctx: click.Context) -> list[str]:
        rest = [name for name in self.commands if name not in self._ORDER]
        return [*self._ORDER, *rest]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._DEV:
            # Development tooling: `streams worker` must never import streams.dev.
            from streams.dev.commands import COMMANDS

            return COMMANDS[cmd_name]
        return super().get_command(ctx, cmd_name)


def _settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        # Each error names the variable and the rule, but not the values given: pydantic's
        # own text quotes the whole input, secrets (KAFKA_SASL_PASSWORD, the API key) too.
        problems = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: "
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise click.ClickException(
            "invalid settings in the environment:\n" + "\n".join(problems)
        ) from None
    except ValueError as exc:
        raise click.ClickException(f"invalid settings in the environment:\n{exc}") from None


def _reach_kafka(settings: Settings) -> None:
    """Connect once as the clients will; a refusal or no answer ends the command in one line."""
    from streams.kafka_preflight import KafkaUnavailable, check_kafka

    try:
        asyncio.run(
            check_kafka(
                settings.kafka_bootstrap_servers,
                settings.kafka_security,
                timeout_s=settings.kafka_connect_timeout_s,
            )
        )
    except KafkaUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level (--log-level DEBUG).")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    envvar="STREAMS_LOG_LEVEL",
    default="INFO",
    show_default=True,
    help="Lowest level logged [env: STREAMS_LOG_LEVEL].",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar="STREAMS_LOG_FORMAT",
    default="text",
    show_default=True,
    help="text for people, json for one JSON object per line [env: STREAMS_LOG_FORMAT].",
)
@click.pass_context
def main(ctx: click.Context, verbose: bool, log_level: str, log_format: str) -> None:
    """Call recordings in, transcripts out, over Kafka.

    \b
    Try it on this machine, in two terminals:
      streams dev                     Kafka + local ASR server + a worker, Ctrl-C stops all
      streams publish --samples       publish the bundled sample calls
      streams tail                    watch the transcripts grow and finish

    \b
    In production run `streams worker` (as many as you like) against your Kafka.
    Settings come from the environment: KAFKA_BOOTSTRAP_SERVERS, DASHSCOPE_API_KEY,
    STREAMS_* (see the README's configuration table).
    """
    level = "DEBUG" if verbose else log_level.upper()
    ctx.obj = {"level": level, "log_format": log_format}
    configure(log_format, level)  # type: ignore[arg-type]  # click.Choice checked the value


@main.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a transcription worker (start more to scale out).

    Workers with the same STREAMS_APP_ID share the recordings topic's partitions: start more
    to scale out. Prometheus metrics are served at http://HOST:STREAMS_WEB_PORT/metrics
    (6066 by default).
    """
    settings = _settings()
    secrets = [key] if (key := settings.resolved_api_key) else []
    secrets += settings.kafka_security.secrets
    # Before faust (and before importing it, so a refusal is told at once): faust would
    # retry a refused login or certificate in a loop of tracebacks.
    _reach_kafka(settings)

    import faust
    from aiokafka.errors import KafkaError

    from streams.app import create_app
    from streams.topics import ensure_service_topics

    try:
        statuses = asyncio.run(ensure_service_topics(settings, create=settings.create_topics))
    except KafkaError as exc:
        raise click.ClickException(f"Kafka topics: {exc}") from None
    missing = [s.spec.name for s in statuses if not s.partitions]
    if missing:
        raise click.ClickException(f"topics missing and STREAMS_CREATE_TOPICS is off: {missing}")
    app = create_app(settings)
    faust.Worker(
        app,
        loglevel=ctx.obj["level"],
        quiet=True,
        # mode's worker replaces the logging setup; give it ours, with the key to redact.
        logging_config=dict_config(ctx.obj["log_format"], ctx.obj["level"], secrets=secrets),
    ).execute_from_commandline()


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def asr_server(ctx: click.Context) -> None:
    """Run the local ASR server (DashScope protocol).

    Engines: whisper (offline recognition) or scripted (fixed text, for tests); --help lists
    the server's own flags.
    """
    from streams.asr_server.main import main as server_main

    sys.exit(server_main(ctx.args))


@main.command()
@click.option(
    "--check", is_flag=True, help="Only report; create nothing, exit 1 if one is missing."
)
def topics(check: bool) -> None:
    """Create or check the recordings and transcript topics."""
    from aiokafka.errors import KafkaError
    from rich.console import Console

    from streams.console import topics_table
    from streams.topics import ensure_service_topics

    settings = _settings()
    _reach_kafka(settings)
    label = f"{'Checking' if check else 'Creating'} topics on {settings.kafka_bootstrap_servers}"
    try:
        # A spinner on stderr when that is a terminal.
        with Console(stderr=True).status(label):
            statuses = asyncio.run(ensure_service_topics(settings, create=not check))
    except KafkaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(topics_table(statuses))
    if not all(s.ok for s in statuses):
        sys.exit(1)


@main.command()
@click.argument("sources", nargs=-1)
@click.option("--samples", is_flag=True, help="Also publish the bundled sample calls.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into subdirectories.")
@click.option(
    "--layout",
    type=click.Choice(["mix", "split", "auto"]),
    help="mix: one transcript; split: one per channel; auto: split if stereo.",
)
@click.option("--roles", help="Roles of the channels in order, e.g. agent,customer.")
@click.option("--language", help="ISO code (en, zh, de …); omit to detect.")
@click.option("--context", "context_text", help="Text that biases recognition (names, terms).")
@click.option("--hotword", "hotwords", multiple=True, help="A term to bias towards (repeatable).")
@click.option("--itn/--no-itn", default=None, help="Inverse text normalisation (numbers).")
@click.option(
    "--backend",
    type=click.Choice(["dashscope", "openai", "filetrans"]),
    help="Recogniser for these recordings (filetrans: long-file tasks with word times).",
)
@click.option(
    "--call",
    "call_fields",
    multiple=True,
    metavar="KEY=VALUE",
    help="Call metadata passed through to the transcripts (repeatable).",
)
@click.option("--id-prefix", default="", help="Prefix of the generated recording ids.")
@click.option("--dry-run", is_flag=True, help="Print the events as JSON lines; send nothing.")
def publish(
    sources: tuple[str, ...],
    samples: bool,
    recursive: bool,
    layout: str | None,
    roles: str | None,
    language: str | None,
    context_text: str | None,
    hotwords: tuple[str, ...],
    itn: bool | None,
    backend: str | None,
    call_fields: tuple[str, ...],
    id_prefix: str,
    dry_run: bool,
) -> None:
    """Publish recording events for files, directories or URLs.

    One event per file, per audio or video file of a directory, or per URL. SOURCES are local
    paths (sent as file:// URLs: the worker must see the same path and have it under
    STREAMS_FILE_ROOTS) or http(s):// URLs. Prints each recording id and URL.

    \b
    Examples:
      streams publish call.wav --layout split --roles agent,customer --language en
      streams publish ./recordings/ --context "Acme broadband" --call queue=billing
      streams publish https://bucket.example/rec-42.wav?X-Amz-Signature=…
    """
    from streams import client

    if not sources and not samples:
        raise click.UsageError("give files, directories or URLs to publish, or --samples")
    try:
        events = client.recording_events(
            sources,
            recursive=recursive,
            id_prefix=id_prefix,
            layout=layout,  # type: ignore[arg-type]  # click.Choice checked the value
            roles=_csv(roles),
            language=language,
            context=context_text,
            hotwords=list(hotwords),
            enable_itn=itn,
            call=dict(_key_value(field) for field in call_fields),
            backend=backend,  # type: ignore[arg-type]  # click.Choice checked the value
        )
        if samples:
            from streams.dev.samples import sample_events

            events += sample_events(suffix=f"-{uuid.uuid4().hex[:6]}")
        client.validate(events)
    except client.SourceError as exc:
        raise click.BadParameter(str(exc)) from None
    if dry_run:
        for event in events:
            click.echo(orjson.dumps(event))
        return
    settings = _settings()
    _reach_kafka(settings)
    _send(settings, events)


def _send(settings: Settings, events: list[dict[str, Any]]) -> None:
    from streams.client import Connection, send
    from streams.console import publish_progress

    topic = settings.topic_recordings
    with publish_progress(topic, len(events)) as sent:
        asyncio.run(send(Connection.from_settings(settings), topic, events, sent))
    click.secho(f"Published {len(events)} recording(s) to {topic}.", err=True)


def _csv(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--call")
    return key, value


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line.")
@click.option("--partial/--no-partial", default=True, help="Include partial events.")
@click.option("--from-beginning", is_flag=True, help="Start at the topics' first messages.")
@click.option("--count", type=int, help="Stop after this many final or failed events.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    help="Stop after this many seconds; exit 1 if --count was not reached.",
)
def tail(
    as_json: bool, partial: bool, from_beginning: bool, count: int | None, timeout_s: float | None
) -> None:
    """Follow the transcripts: a live view, or JSON lines.

    In a terminal: one line per recording in progress with its text growing, and each finished
    recording printed once with its language, cost and text (agent/customer turns for split
    calls). With --json: every event as one JSON line, for scripts.
    """
    from rich.console import Console

    from streams.client import Connection, follow
    from streams.console import TailView, render_partial

    settings = _settings()
    _reach_kafka(settings)
    names = [settings.topic_final, settings.topic_failed]
    if partial:
        names.insert(0, settings.topic_partial)
    console = Console(highlight=False)
    live_view = console.is_terminal and not as_json
    view = TailView(source=f"{settings.kafka_bootstrap_servers} · Ctrl-C to stop")
    ready = f"Following {', '.join(names)} at {settings.kafka_bootstrap_servers}."
    connection = Connection.from_settings(settings)
    run = functools.partial(
        follow, connection, names, from_beginning=from_beginning, count=count, timeout_s=timeout_s
    )

    def plain(event: dict[str, Any], raw: bytes) -> None:
        if as_json:
            click.echo(raw)
        elif event.get("type") == "partial":
            console.print(render_partial(event))
        elif (block := view.add(event)) is not None:
            console.print(block)

    if not live_view:
        ready_plain = functools.partial(click.secho, ready, err=True, dim=True)
        reached = _run_until_interrupted(run(on_event=plain, on_ready=ready_plain))
    else:
        from rich.live import Live

        with Live(view, console=console, refresh_per_second=8, transient=True) as live:

            def show(event: dict[str, Any], raw: bytes) -> None:
                if (block := view.add(event)) is not None:
                    live.console.print(block)

            ready_live = functools.partial(live.console.print, ready, style="dim")
            reached = _run_until_interrupted(run(on_event=show, on_ready=ready_live))
        console.print(view.summary())
    if count is not None and not reached:
        sys.exit(1)


def _run_until_interrupted(work: Awaitable[bool]) -> bool:
    from streams.client import ClientError

    async def run() -> bool:
        return await work

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return False
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("url")
@click.option("--timeout", "timeout_s", default=3.0, show_default=True, help="Seconds to wait.")
def probe(url: str, timeout_s: float) -> None:
    """Exit 0 if URL answers 200 (for container health checks)."""
    import httpx

    try:
        status = httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{url}: {exc!r}") from None
    if status != 200:
        raise click.ClickException(f"{url} answered {status}")
