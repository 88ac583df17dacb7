"""The dev wing's commands: ``streams dev``, ``streams kafka`` and ``streams demo``.

``streams.cli`` loads this module only when one of them is named, so ``streams worker`` never
imports the dev wing.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click

__all__ = ["COMMANDS"]

# The local ASR engine of the stacks `dev` and `demo` start (resolved by _engine()).
_engine_option = click.option(
    "--engine",
    type=click.Choice(["auto", "whisper", "scripted"]),
    default="auto",
    show_default=True,
    help="Local ASR engine (auto: whisper if installed).",
)


@click.command()
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
    from streams.dev.devstack import DevStack, sigterm_as_interrupt
    from streams.dev.samples import SAMPLES_DIR

    engine = _engine(engine)
    roots = tuple(p.resolve() for p in file_roots) or (Path.cwd(), SAMPLES_DIR)
    stack = DevStack(
        engine=engine,
        file_roots=roots,
        log=lambda line: click.secho(line, fg="cyan", err=True),
        kafka_port=kafka_port,
        asr_port=asr_port,
    )
    with sigterm_as_interrupt():
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


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def kafka(ctx: click.Context) -> None:
    """Run a single-node Apache Kafka for development.

    Apache Kafka from Maven Central jars, KRaft mode; --help lists its own flags.
    """
    from streams.dev.kafka_command import main as kafka_main

    sys.exit(kafka_main(ctx.args))


@click.command()
@_engine_option
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
@click.option("--partial/--no-partial", default=True, help="Show partial text as it arrives.")
def demo(engine: str, workers: int, partial: bool) -> None:
    """Transcribe the bundled sample calls on a throwaway stack."""
    from rich.console import Console

    from streams.console import render_failed, render_final, render_partial
    from streams.dev.devstack import DevStack, running, sigterm_as_interrupt, transcribe_samples
    from streams.dev.samples import SAMPLES_DIR, sample_events

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

    with sigterm_as_interrupt(), running(stack, workers):
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


COMMANDS: dict[str, click.Command] = {"dev": dev, "kafka": kafka, "demo": demo}
"""The commands by name, as ``streams.cli`` lists them."""
