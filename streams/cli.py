"""The ``streams`` command: run the service's parts, publish recordings, watch transcripts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from streams.config import Settings
from streams.logging_setup import LOG_FORMATS, configure, dict_config

__all__ = ["main"]

# What `publish DIR` picks up: the containers and codecs the decode stage reads.
MEDIA_SUFFIXES = frozenset(
    (
        *(".3gp", ".aac", ".aif", ".aiff", ".amr", ".au", ".avi", ".caf", ".flac", ".flv"),
        *(".gsm", ".m4a", ".mka", ".mkv", ".mov", ".mp2", ".mp3", ".mp4", ".mpeg", ".mpg"),
        *(".oga", ".ogg", ".opus", ".wav", ".webm", ".wma", ".wmv"),
    )
)


class _Ordered(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # In the order a person meets them, not alphabetical.
        return list(self.commands)


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


# The local ASR engine of the stacks `dev` and `demo` start (resolved by _engine()).
_engine_option = click.option(
    "--engine",
    type=click.Choice(["auto", "whisper", "scripted"]),
    default="auto",
    show_default=True,
    help="Local ASR engine (auto: whisper if installed).",
)


@click.group(
    cls=_Ordered,
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
    from streams.topics import ensure_topics, topic_specs

    try:
        statuses = asyncio.run(
            ensure_topics(
                settings.kafka_bootstrap_servers,
                topic_specs(settings),
                create=settings.create_topics,
                security=settings.kafka_security,
            )
        )
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
@_engine_option
@click.option("--workers", default=1, show_default=True, help="Worker processes.")
@click.option("--kafka-port", default=9092, show_default=True, help="Broker port (0: any).")
@click.option("--asr-port", default=8765, show_default=True, help="ASR server port (0: any).")
@click.option(
    "--file-root",
    "file_roots",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Directory file:// recordings may come from "
    "(repeatable; default: the current directory and the samples).",
)
@click.option("--logs/--no-logs", default=True, help="Show the workers' log lines.")
def dev(
    engine: str,
    workers: int,
    kafka_port: int,
    asr_port: int,
    file_roots: tuple[Path, ...],
    logs: bool,
) -> None:
    """Run Kafka, the ASR server and a worker here; Ctrl-C stops all.

    The stack runs in the foreground and shows the workers' log lines; Ctrl-C stops the
    workers first (they commit), then the ASR server, then Kafka.

    With the default ports, `streams publish` and `streams tail` in another terminal find the
    stack without any settings.
    """
    from streams.devstack import SAMPLES_DIR, DevStack

    engine = _engine(engine)
    roots = tuple(p.resolve() for p in file_roots) or (Path.cwd(), SAMPLES_DIR)
    stack = DevStack(
        engine=engine,
        file_roots=roots,
        log=lambda line: click.secho(line, fg="cyan", err=True),
        kafka_port=kafka_port,
        asr_port=asr_port,
    )
    with _sigterm_as_interrupt():
        try:
            stack.start(workers)
            env = ""
            if kafka_port != 9092:
                env = f"KAFKA_BOOTSTRAP_SERVERS={stack.bootstrap} "
            click.secho(
                "\nReady. In another terminal:\n"
                f"  {env}streams publish --samples      (or FILE, DIR, URL …)\n"
                f"  {env}streams tail\n"
                f"Metrics: {', '.join(stack.metrics_urls)}\n"
                f"Files under {', '.join(map(str, roots))} can be published. Ctrl-C to stop.\n",
                fg="green",
                err=True,
            )
            while True:
                stack.check_children()
                if logs:
                    for child in stack.children:
                        if child.name.startswith("worker"):
                            for line in child.new_lines():
                                click.echo(f"{child.name} | {line}")
                time.sleep(0.3)
        except KeyboardInterrupt:
            click.secho("\nStopping workers, ASR server and Kafka …", fg="cyan", err=True)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            stack.stop()
    click.secho("Stopped.", fg="cyan", err=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # SIGTERM (docker stop, kill) must end in the same orderly shutdown as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def kafka(ctx: click.Context) -> None:
    """Run a single-node Apache Kafka for development.

    Apache Kafka from Maven Central jars, KRaft mode; --help lists its own flags.
    """
    from streams.localkafka import main as kafka_main

    sys.exit(kafka_main(ctx.args))


@main.command()
@click.option(
    "--check", is_flag=True, help="Only report; create nothing, exit 1 if one is missing."
)
def topics(check: bool) -> None:
    """Create or check the recordings and transcript topics."""
    from aiokafka.errors import KafkaError

    from streams.topics import ensure_topics, topic_specs

    settings = _settings()
    _reach_kafka(settings)
    try:
        statuses = _run(
            ensure_topics(
                settings.kafka_bootstrap_servers,
                topic_specs(settings),
                create=not check,
                security=settings.kafka_security,
            ),
            f"{'Checking' if check else 'Creating'} topics on {settings.kafka_bootstrap_servers}",
        )
    except KafkaError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'topic':<28} {'partitions':>10}  state")
    for status in statuses:
        state = "created" if status.created else ("ok" if status.ok else "MISSING")
        if status.partitions and not status.ok:
            state = f"too few (want {status.spec.partitions})"
        click.echo(f"{status.spec.name:<28} {status.partitions:>10}  {state}")
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
    call_fields: tuple[str, ...],
    id_prefix: str,
    dry_run: bool,
) -> None:
    """Publish recording events for files, directories or URLs.

    One event per file, per audio or video file of a directory, or per URL.

    SOURCES are local paths (sent as file:// URLs: the worker must see the same path and
    have it under STREAMS_FILE_ROOTS) or http(s):// URLs. Prints each recording id and URL.

    \b
    Examples:
      streams publish call.wav --layout split --roles agent,customer --language en
      streams publish ./recordings/ --context "Acme broadband" --call queue=billing
      streams publish https://bucket.example/rec-42.wav?X-Amz-Signature=…
    """
    import schemas
    from streams.devstack import sample_events

    if not sources and not samples:
        raise click.UsageError("give files, directories or URLs to publish, or --samples")
    call = dict(_key_value(field) for field in call_fields)
    events: list[dict[str, Any]] = []
    for source in sources:
        for url in _expand(source, recursive):
            event: dict[str, Any] = {
                "schema_version": 1,
                "recording_id": f"{id_prefix}{_stem(url)}-{uuid.uuid4().hex[:8]}",
                "audio_url": url,
            }
            channels = {"layout": layout, "roles": _csv(roles)}
            recognition = {
                "language": language,
                "context": context_text,
                "hotwords": list(hotwords) or None,
                "enable_itn": itn,
            }
            for name, value in (("channels", channels), ("recognition", recognition)):
                if fields := {k: v for k, v in value.items() if v is not None}:
                    event[name] = fields
            if call:
                event["call"] = call
            events.append(event)
    if samples:
        events += sample_events(suffix=f"-{uuid.uuid4().hex[:6]}")
    check = schemas.validator("recording")
    for event in events:
        if errors := [e.message for e in check.iter_errors(event)]:
            raise click.BadParameter(f"{event['audio_url']}: {'; '.join(errors)}")
    if dry_run:
        for event in events:
            click.echo(orjson.dumps(event))
        return
    settings = _settings()
    _reach_kafka(settings)
    asyncio.run(_send(settings, events))


async def _send(settings: Settings, events: list[dict[str, Any]]) -> None:
    from aiokafka import AIOKafkaProducer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        **settings.kafka_security.client_kwargs(),
    )
    await producer.start()
    progress = Progress(
        TextColumn(f"publishing to {settings.topic_recordings}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=len(events) < 2,
        redirect_stdout=False,
    )
    # Ids go to stdout for scripts; on a terminal through the bar's console, so it stays intact.
    echo: Callable[[str], object] = click.echo
    if sys.stdout.isatty():
        echo = functools.partial(progress.console.print, markup=False, highlight=False)
    try:
        with progress:
            task = progress.add_task("publish", total=len(events))
            for event in events:
                await producer.send_and_wait(
                    settings.topic_recordings,
                    orjson.dumps(event),
                    key=event["recording_id"].encode(),
                )
                echo(f"{event['recording_id']}  {event['audio_url']}")
                progress.advance(task)
    finally:
        await producer.stop()
    click.secho(f"Published {len(events)} recording(s) to {settings.topic_recordings}.", err=True)


def _csv(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--call")
    return key, value


def _stem(url: str) -> str:
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "recording"


def _expand(source: str, recursive: bool) -> list[str]:
    if re.match(r"^[a-z][a-z0-9+.-]*://", source, re.IGNORECASE):
        return [source]
    path = Path(source).resolve()
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        files = sorted(p for p in found if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        if not files:
            raise click.BadParameter(f"no audio or video files in {source!r}")
        return [p.as_uri() for p in files]
    if not path.exists():
        raise click.BadParameter(f"no such file or directory: {source!r}")
    return [path.as_uri()]


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

    def plain(event: dict[str, Any], raw: bytes) -> None:
        if as_json:
            click.echo(raw)
        elif event.get("type") == "partial":
            console.print(render_partial(event))
        elif (block := view.add(event)) is not None:
            console.print(block)

    if not live_view:
        ready_plain = functools.partial(click.secho, ready, err=True, dim=True)
        reached = _run_until_interrupted(
            _follow(settings, names, from_beginning, count, timeout_s, plain, ready_plain)
        )
    else:
        from rich.live import Live

        with Live(view, console=console, refresh_per_second=8, transient=True) as live:

            def show(event: dict[str, Any], raw: bytes) -> None:
                if (block := view.add(event)) is not None:
                    live.console.print(block)

            ready_live = functools.partial(live.console.print, ready, style="dim")
            reached = _run_until_interrupted(
                _follow(settings, names, from_beginning, count, timeout_s, show, ready_live)
            )
        console.print(view.summary())
    if count is not None and not reached:
        sys.exit(1)


def _run_until_interrupted(work: Awaitable[bool]) -> bool:
    async def run() -> bool:
        return await work

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return False


async def _follow(
    settings: Settings,
    names: list[str],
    from_beginning: bool,
    count: int | None,
    timeout_s: float | None,
    on_event: Callable[[dict[str, Any], bytes], None],
    on_ready: Callable[[], object],
) -> bool:
    """Pass every event of ``names`` to ``on_event``; True once ``count`` outcomes were seen."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import TopicAuthorizationFailedError

    from streams.topics import TopicSpec, ensure_topics

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **settings.kafka_security.client_kwargs(),
    )
    await consumer.start()
    seen = 0
    try:
        # Assign and position explicitly, so "Following …" is true when it is printed.
        try:
            found = await ensure_topics(
                settings.kafka_bootstrap_servers,
                [TopicSpec(n, 1, 1) for n in names],
                create=False,
                security=settings.kafka_security,
            )
        except TopicAuthorizationFailedError as exc:
            raise click.ClickException(str(exc)) from None
        if missing := [s.spec.name for s in found if not s.partitions]:
            raise click.ClickException(f"no such topics: {missing} (see `streams topics`)")
        partitions = [TopicPartition(s.spec.name, p) for s in found for p in range(s.partitions)]
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        on_ready()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while count is None or seen < count:
            if deadline is not None and time.monotonic() > deadline:
                break
            try:
                batch = await consumer.getmany(timeout_ms=250)
            except TopicAuthorizationFailedError as exc:
                # Seeing a topic (DESCRIBE) is not reading it (READ): an ACL may allow one only.
                topics = ", ".join(map(str, exc.args)) or "the transcript topics"
                raise click.ClickException(
                    f"not authorized to read {topics} as {settings.kafka_security.describe()}"
                    " (no READ ACL)"
                ) from None
            for records in batch.values():
                for record in records:
                    event = orjson.loads(record.value)
                    on_event(event, record.value)
                    if event.get("type") in ("final", "failed"):
                        seen += 1
    finally:
        await consumer.stop()
    return count is not None and seen >= count


@main.command()
@_engine_option
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
@click.option("--partial/--no-partial", default=True, help="Show partial text as it arrives.")
def demo(engine: str, workers: int, partial: bool) -> None:
    """Transcribe the bundled sample calls on a throwaway stack."""
    from rich.console import Console

    from streams.console import render_failed, render_final, render_partial
    from streams.devstack import SAMPLES_DIR, DevStack, running, sample_events, transcribe_samples

    engine = _engine(engine)
    events = sample_events()
    stack = DevStack(
        engine=engine,
        file_roots=(SAMPLES_DIR,),
        log=lambda line: click.echo(line),
        metrics=False,
    )
    console = Console(highlight=False)

    def show(event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "partial" and partial:
            console.print(render_partial(event))
        elif kind == "final":
            console.print(render_final(event))
        elif kind == "failed":
            console.print(render_failed(event))

    with _sigterm_as_interrupt(), running(stack, workers):
        click.echo(f"Publishing {len(events)} sample calls from {SAMPLES_DIR}")
        terminal = asyncio.run(transcribe_samples(stack, events, show))
    failed = [e for e in terminal if e.get("type") == "failed"]
    click.echo(f"{len(terminal) - len(failed)} transcribed, {len(failed)} failed.")
    if failed:
        sys.exit(1)


def _engine(engine: str) -> str:
    import importlib.util

    if engine == "auto":
        engine = "whisper" if importlib.util.find_spec("faster_whisper") else "scripted"
    if engine == "scripted":
        click.secho(
            "NOTE: the scripted engine answers made-up text in the DashScope protocol; "
            "it recognises nothing. Install the local-asr extra for real transcripts.",
            fg="yellow",
            err=True,
        )
    return engine


def _run(work: Awaitable[Any], label: str) -> Any:
    """Run ``work`` with a spinner on stderr when that is a terminal."""
    from rich.console import Console

    async def run() -> Any:
        return await work

    with Console(stderr=True).status(label):
        return asyncio.run(run())


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
