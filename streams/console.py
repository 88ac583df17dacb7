"""What the commands show in a terminal, above all ``streams tail``: text growing, then outcomes.

:class:`TailView` holds the recordings in progress and turns events into renderables; it
knows nothing about Kafka. Recordings in progress make up the live area at the bottom of the
screen, one line per channel with the newest words; a finished recording leaves the live area
and is printed above it once, as a block: the outcome line (language, audio, cost, time) and
the transcript, as agent/customer turns for a split call. ``publish`` gets a progress bar and
``topics`` a table.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from streams.topics import TopicStatus

__all__ = [
    "TailView",
    "publish_progress",
    "render_failed",
    "render_final",
    "render_partial",
    "topics_table",
]

_ROLE_STYLES = {"agent": "cyan", "customer": "magenta"}
# Recently finished ids: a partial fetched after its final (they travel on different topics)
# must not bring the recording back to the live area.
_FINISHED_MEMORY = 10_000


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _newest(text: str, room: int) -> str:
    """The end of ``text`` that fits in ``room`` cells: the newest words stay in view."""
    if cell_len(text) <= room:
        return text
    kept: list[str] = []
    used = 1  # the ellipsis
    for char in reversed(text):
        used += cell_len(char)
        if used > room:
            break
        kept.append(char)
    return "…" + "".join(reversed(kept))


def _role_style(role: str | None) -> str:
    return _ROLE_STYLES.get(role or "", "yellow")


def render_final(event: dict[str, Any]) -> RenderableType:
    """The block for a final event: outcome line, then the text or the conversation."""
    segments = event.get("segments") or []
    split = any(s.get("role") for s in segments)
    head = Text.assemble(("✓ ", "bold green"), (str(event.get("recording_id")), "bold"))
    details = ["split"] if split else []
    if event.get("language"):
        details.append(str(event["language"]))
    if event.get("emotion"):
        details.append(str(event["emotion"]))
    details.append(f"{event.get('audio_seconds', 0):.1f} s audio")
    details.append(f"${event.get('estimated_cost_usd', 0):.6f}")
    total = (event.get("timings") or {}).get("total_s")
    if total is not None:
        details.append(f"done in {total:.1f} s")
    head.append("  " + " · ".join(details), style="dim")
    if not split:
        body: RenderableType = Text(str(event.get("text") or "(no speech)"))
        return Group(head, Padding(body, (0, 0, 0, 2)))
    turns = Table.grid(padding=(0, 1))
    turns.add_column(style="dim", no_wrap=True)
    turns.add_column(no_wrap=True)
    turns.add_column(ratio=1)
    for segment in sorted(segments, key=lambda s: (s.get("start_s") or 0, s.get("channel") or 0)):
        role = segment.get("role")
        turns.add_row(
            _clock(segment.get("start_s") or 0.0),
            Text(str(role), style=_role_style(role)),
            str(segment.get("text", "")),
        )
    return Group(head, Padding(turns, (0, 0, 0, 2)))


def render_failed(event: dict[str, Any]) -> RenderableType:
    """The line for a failed event: code, stage and message."""
    error = event.get("error") or {}
    line = Text.assemble(
        ("✗ ", "bold red"),
        (str(event.get("recording_id") or "(no id)"), "bold"),
        "  ",
        (str(error.get("code")), "red"),
        (f" at {error.get('stage')}", "dim"),
        f": {error.get('message')}",
    )
    if event.get("attempts"):
        line.append(f"  ({event['attempts']} requests)", style="dim")
    return line


def render_partial(event: dict[str, Any]) -> RenderableType:
    """One line for a partial event, for output that is not a live terminal."""
    role = event.get("role")
    where = f"[{role or 'ch' + str(event.get('channel'))}#{event.get('chunk_index')}]"
    return Text.assemble(
        ("… ", "dim"), (str(event.get("recording_id")), "bold"), " ", (where, "dim"), " ",
        str(event.get("text")),
    )  # fmt: skip


@dataclass
class _InProgress:
    recording_id: str
    started: float
    # (channel, chunk index) -> ((run, sequence), role, text so far of that chunk's latest
    # attempt); a run after a worker died numbers its sequence from 0 again
    chunks: dict[tuple[int, int], tuple[tuple[int, int], str | None, str]] = field(
        default_factory=dict
    )

    def lines(self) -> list[tuple[str | None, str]]:
        """(role, text so far) per channel, chunks in order."""
        channels: dict[int, tuple[str | None, list[str]]] = {}
        for (channel, _index), (_seq, role, text) in sorted(self.chunks.items()):
            channels.setdefault(channel, (role, []))[1].append(text.strip())
        return [(role, " ".join(t for t in texts if t)) for role, texts in channels.values()]


class TailView:
    """The state of a live tail: recordings in progress and what finished."""

    def __init__(self, *, source: str = "", clock: Any = time.monotonic) -> None:
        self.source = source
        self.done = 0
        self.failed = 0
        self._clock = clock
        self._active: dict[str, _InProgress] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def in_progress(self) -> int:
        """Recordings with partial text and no outcome yet."""
        return len(self._active)

    def add(self, event: dict[str, Any]) -> RenderableType | None:
        """Take one event; return the block to print when it ends a recording."""
        kind = event.get("type")
        rid = str(event.get("recording_id"))
        if kind == "partial":
            if rid not in self._finished:
                self._partial(rid, event)
            return None
        if kind not in ("final", "failed"):
            return None
        self._active.pop(rid, None)
        self._finished[rid] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)
        if kind == "final":
            self.done += 1
            return render_final(event)
        self.failed += 1
        return render_failed(event)

    def _partial(self, rid: str, event: dict[str, Any]) -> None:
        recording = self._active.get(rid)
        if recording is None:
            recording = self._active[rid] = _InProgress(rid, self._clock())
        key = (int(event.get("channel") or 0), int(event.get("chunk_index") or 0))
        order = (int(event.get("run") or 1), int(event.get("sequence") or 0))
        held = recording.chunks.get(key)
        if held is None or order >= held[0]:
            recording.chunks[key] = (order, event.get("role"), str(event.get("text") or ""))

    def summary(self) -> Text:
        """Counts and where the events come from."""
        text = Text.assemble(
            (f"{self.done} done", "green"),
            ", ",
            (f"{self.failed} failed", "red" if self.failed else ""),
            f", {self.in_progress} in progress",
        )
        if self.source:
            text.append(f"  ·  {self.source}", style="dim")
        return text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The live area: a line per channel of each recording in progress, then the summary."""
        width = options.max_width
        now = self._clock()
        for recording in self._active.values():
            label = f"{recording.recording_id} {now - recording.started:4.0f}s"
            for i, (role, text) in enumerate(recording.lines()):
                line = Text.assemble(
                    ("⋯ " if i == 0 else "  ", "yellow"),
                    (label if i == 0 else " " * len(label), "bold"),
                    " ",
                )
                if role:
                    line.append(f"{role:<9}", style=_role_style(role))
                    line.append(" ")
                line.append(_newest(text, max(width - line.cell_len, 8)))
                line.no_wrap = True
                yield line
        yield self.summary()


@contextlib.contextmanager
def publish_progress(topic: str, total: int) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress bar on stderr; yields the function to call with each event sent.

    Each sent event's id and URL go to stdout, for scripts; on a terminal they go through the
    bar's console, so the bar stays intact.
    """
    progress = Progress(
        TextColumn(f"publishing to {topic}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=total < 2,
        redirect_stdout=False,
    )
    echo: Callable[[str], object] = click.echo
    if sys.stdout.isatty():
        echo = functools.partial(progress.console.print, markup=False, highlight=False)
    with progress:
        task = progress.add_task("publish", total=total)

        def sent(event: dict[str, Any]) -> None:
            echo(f"{event['recording_id']}  {event['audio_url']}")
            progress.advance(task)

        yield sent


def topics_table(statuses: Iterable[TopicStatus]) -> str:
    """One line per topic: name, partitions, and created, ok, MISSING or too few."""
    lines = [f"{'topic':<28} {'partitions':>10}  state"]
    for status in statuses:
        state = "created" if status.created else ("ok" if status.ok else "MISSING")
        if status.partitions and not status.ok:
            state = f"too few (want {status.spec.partitions})"
        lines.append(f"{status.spec.name:<28} {status.partitions:>10}  {state}")
    return "\n".join(lines)
