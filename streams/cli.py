"""The ``streams`` command: run a worker, the local ASR server or a broker; publish and tail."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from pathlib import Path

import click
import orjson

from streams.config import Settings

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Call recordings in, transcripts out, over Kafka.

    Settings come from the environment (STREAMS_*, KAFKA_BOOTSTRAP_SERVERS, DASHSCOPE_API_KEY);
    see the README's configuration table.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # One line per HTTP request and per partition move drowns the outcome lines.
        for name in ("httpx", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)


@main.command()
def worker() -> None:
    """Run a transcription worker (joins the consumer group; start several to scale out)."""
    import faust

    from streams.app import create_app
    from streams.topics import ensure_topics, topic_specs

    settings = Settings()
    statuses = asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers, topic_specs(settings), create=settings.create_topics
        )
    )
    missing = [s.spec.name for s in statuses if not s.partitions]
    if missing:
        raise click.ClickException(f"topics missing and STREAMS_CREATE_TOPICS is off: {missing}")
    app = create_app(settings)
    faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


@main.command()
@click.option("--create/--check", default=True, help="Create missing topics, or only report.")
def topics(create: bool) -> None:
    """Create (or check) the recordings and transcript topics."""
    from streams.topics import ensure_topics, topic_specs

    settings = Settings()
    statuses = asyncio.run(
        ensure_topics(settings.kafka_bootstrap_servers, topic_specs(settings), create=create)
    )
    for status in statuses:
        state = "created" if status.created else ("ok" if status.ok else "MISSING")
        if status.partitions and not status.ok:
            state = f"only {status.partitions} partitions"
        click.echo(f"{status.spec.name:<28} {status.partitions:>3} partitions  {state}")
    if not all(s.ok for s in statuses):
        sys.exit(1)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def asr_server(ctx: click.Context) -> None:
    """Run the local ASR server (DashScope protocol); --help lists its options."""
    from streams.asr_server.main import main as server_main

    sys.exit(server_main(ctx.args))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def kafka(ctx: click.Context) -> None:
    """Run a single-node Apache Kafka from Maven Central jars (development and tests)."""
    from streams.localkafka import main as kafka_main

    sys.exit(kafka_main(ctx.args))


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--layout", type=click.Choice(["mix", "split", "auto"]), help="Channel handling.")
@click.option("--roles", help="Comma-separated roles of the channels, e.g. agent,customer.")
@click.option("--language", help="ISO language code; omit to detect.")
@click.option("--context", "context_text", help="Context text that biases recognition.")
@click.option("--id-prefix", default="", help="Prefix of the generated recording ids.")
def publish(
    sources: tuple[str, ...],
    layout: str | None,
    roles: str | None,
    language: str | None,
    context_text: str | None,
    id_prefix: str,
) -> None:
    """Publish one recording event per file, directory entry or URL in SOURCES."""
    from aiokafka import AIOKafkaProducer

    settings = Settings()
    events = []
    for source in sources:
        for url in _expand(source):
            event: dict[str, object] = {
                "schema_version": 1,
                "recording_id": f"{id_prefix}{uuid.uuid4().hex[:12]}",
                "audio_url": url,
            }
            if layout or roles:
                channels: dict[str, object] = {}
                if layout:
                    channels["layout"] = layout
                if roles:
                    channels["roles"] = [r.strip() for r in roles.split(",")]
                event["channels"] = channels
            recognition = {
                k: v for k, v in (("language", language), ("context", context_text)) if v
            }
            if recognition:
                event["recognition"] = recognition
            events.append(event)

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            for event in events:
                await producer.send_and_wait(
                    settings.topic_recordings,
                    orjson.dumps(event),
                    key=str(event["recording_id"]).encode(),
                )
                click.echo(f"{event['recording_id']}  {event['audio_url']}")
        finally:
            await producer.stop()

    asyncio.run(send())


def _expand(source: str) -> list[str]:
    if "://" in source:
        return [source]
    path = Path(source).resolve()
    if path.is_dir():
        return [p.as_uri() for p in sorted(path.iterdir()) if p.is_file()]
    if not path.exists():
        raise click.BadParameter(f"no such file or directory: {source!r}")
    return [path.as_uri()]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON lines.")
@click.option("--partial/--no-partial", default=False, help="Also show partial events.")
@click.option("--count", type=int, help="Stop after this many terminal events.")
@click.option("--from-beginning", is_flag=True, help="Start at the topics' first messages.")
def tail(as_json: bool, partial: bool, count: int | None, from_beginning: bool) -> None:
    """Follow the transcript topics and print what arrives."""
    from aiokafka import AIOKafkaConsumer

    settings = Settings()
    names = [settings.topic_final, settings.topic_failed]
    if partial:
        names.insert(0, settings.topic_partial)

    async def follow() -> None:
        consumer = AIOKafkaConsumer(
            *names,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            auto_offset_reset="earliest" if from_beginning else "latest",
            enable_auto_commit=False,
        )
        await consumer.start()
        seen = 0
        try:
            async for message in consumer:
                event = orjson.loads(message.value)
                if as_json:
                    click.echo(message.value.decode())
                else:
                    click.echo(_render(event))
                if event.get("type") in ("final", "failed"):
                    seen += 1
                    if count is not None and seen >= count:
                        return
        finally:
            await consumer.stop()

    asyncio.run(follow())


@main.command()
@click.option(
    "--engine",
    type=click.Choice(["auto", "whisper", "scripted"]),
    default="auto",
    help="Recognition engine of the local ASR server (auto: whisper when installed).",
)
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
@click.option("--partial/--no-partial", default=True, help="Show partial text as it arrives.")
def demo(engine: str, workers: int, partial: bool) -> None:
    """Transcribe the bundled sample calls on a local stack: Kafka, ASR server, worker(s)."""
    from streams.devstack import SAMPLES_DIR, DevStack, running, sample_events, transcribe_samples

    if engine == "auto":
        engine = "whisper" if _whisper_available() else "scripted"
    if engine == "scripted":
        click.secho(
            "NOTE: the scripted engine answers made-up text in the DashScope protocol; "
            "it recognises nothing. Install the local-asr extra for real transcripts.",
            fg="yellow",
        )
    events = sample_events()
    stack = DevStack(engine=engine, file_roots=(SAMPLES_DIR,), log=lambda line: click.echo(line))

    def show(event: dict[str, object]) -> None:
        if event.get("type") != "partial" or partial:
            click.echo(_render(event))

    with running(stack, workers):
        click.echo(f"Publishing {len(events)} sample calls from {SAMPLES_DIR}")
        terminal = asyncio.run(transcribe_samples(stack, events, show))
    failed = [e for e in terminal if e.get("type") == "failed"]
    click.echo(f"{len(terminal) - len(failed)} transcribed, {len(failed)} failed.")
    if failed:
        sys.exit(1)


def _whisper_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faster_whisper") is not None


def _render(event: dict[str, object]) -> str:
    kind = event.get("type")
    rid = event.get("recording_id")
    if kind == "partial":
        return f"… {rid} [{event.get('channel')}] {event.get('text')}"
    if kind == "failed":
        error = event.get("error") or {}
        assert isinstance(error, dict)
        return f"✗ {rid} {error.get('code')}: {error.get('message')}"
    return (
        f"✓ {rid} ({event.get('language')}, {event.get('audio_seconds')} s, "
        f"${event.get('estimated_cost_usd')})\n  " + str(event.get("text")).replace("\n", "\n  ")
    )
