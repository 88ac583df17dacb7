"""The terminal view of `streams tail`, rendered into a recording console."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console, RenderableType

from streams.console import TailView, render_failed, render_final, topics_table
from streams.topics import TopicSpec, TopicStatus


def _text(renderable: RenderableType, width: int = 100) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def _partial(rid: str, seq: int, text: str, *, channel: int = 0, role: str | None = None,
             chunk: int = 0, run: int = 1) -> dict[str, Any]:  # fmt: skip
    return {
        "type": "partial",
        "recording_id": rid,
        "run": run,
        "attempt": 1,
        "sequence": seq,
        "channel": channel,
        "role": role,
        "chunk_index": chunk,
        "chunk_start_s": 0.0,
        "delta": text.split()[-1],
        "text": text,
    }


SPLIT_FINAL = {
    "type": "final",
    "recording_id": "call-7",
    "text": "agent: Thank you for calling.\ncustomer: My line is down.",
    "language": "en",
    "emotion": "neutral",
    "segments": [
        {
            "channel": 1,
            "role": "customer",
            "start_s": 4.2,
            "end_s": 7.0,
            "text": "My line is down.",
        },
        {
            "channel": 0,
            "role": "agent",
            "start_s": 0.0,
            "end_s": 3.9,
            "text": "Thank you for calling.",
        },
    ],
    "audio_seconds": 61.5,
    "estimated_cost_usd": 0.00378,
    "timings": {"total_s": 2.345},
}


class TestFinal:
    def test_split_call_reads_as_a_conversation(self) -> None:
        """A split call shows language, cost and one row per turn with time and role."""
        text = _text(render_final(SPLIT_FINAL))
        lines = text.splitlines()
        assert lines[0].startswith("✓ call-7")
        for part in ("split", "en", "61.5 s audio", "$0.003780", "done in 2.3 s"):
            assert part in lines[0]
        assert "00:00 agent" in lines[1]
        assert "Thank you for calling." in lines[1]
        # Rows follow the call's timeline, whatever the order of the segments.
        assert "00:04 customer" in lines[2]
        assert "My line is down." in lines[2]

    def test_mono_call_shows_its_text_under_the_outcome_line(self) -> None:
        """A mixed call has no turns: the text follows the outcome line, indented."""
        event = {**SPLIT_FINAL, "segments": [{"role": None, "text": "Hello."}], "text": "Hello."}
        lines = _text(render_final(event)).splitlines()
        assert "split" not in lines[0]
        assert lines[1].rstrip() == "  Hello."

    def test_failed_shows_code_stage_and_message(self) -> None:
        """A failed recording is one line with its code, stage and message."""
        event = {
            "type": "failed",
            "recording_id": "r-9",
            "error": {"code": "audio_not_found", "stage": "fetch", "message": "no such file"},
            "attempts": 0,
        }
        assert _text(render_failed(event)).strip() == (
            "✗ r-9  audio_not_found at fetch: no such file"
        )


class TestTailView:
    def test_partial_text_grows_per_channel(self) -> None:
        """Each channel of a recording in progress gets a line with its text so far."""
        view = TailView(clock=lambda: 0.0)
        assert view.add(_partial("call-7", 0, "Thank", role="agent")) is None
        view.add(_partial("call-7", 1, "Thank you", role="agent"))
        view.add(_partial("call-7", 2, "My", channel=1, role="customer"))
        lines = _text(view).splitlines()
        assert "call-7" in lines[0]
        assert "agent" in lines[0]
        assert lines[0].endswith("Thank you")
        assert "customer" in lines[1]
        assert lines[1].endswith("My")
        assert lines[2].startswith("0 done, 0 failed, 1 in progress")

    def test_newest_words_stay_in_view(self) -> None:
        """A line longer than the terminal keeps its end, behind an ellipsis."""
        view = TailView(clock=lambda: 0.0)
        words = " ".join(f"word{i}" for i in range(60))
        view.add(_partial("r-1", 0, words))
        line = _text(view, width=60).splitlines()[0]
        assert line.endswith("word59")
        assert "…" in line
        assert len(line) <= 60

    def test_an_outcome_moves_the_recording_out_of_the_live_area(self) -> None:
        """The final event returns the block to print and the line in progress goes away."""
        view = TailView(clock=lambda: 0.0)
        view.add(_partial("call-7", 0, "Thank", role="agent"))
        block = view.add(SPLIT_FINAL)
        assert block is not None
        assert "call-7" not in _text(view)
        assert view.done == 1
        assert view.in_progress == 0

    def test_a_partial_after_the_final_is_ignored(self) -> None:
        """Partial and final events travel on different topics; a late partial stays out."""
        view = TailView(clock=lambda: 0.0)
        view.add(SPLIT_FINAL)
        view.add(_partial("call-7", 9, "late", role="agent"))
        assert view.in_progress == 0

    def test_a_retry_replaces_the_chunk_text(self) -> None:
        """A newer sequence for the same chunk (a retried request) replaces its text."""
        view = TailView(clock=lambda: 0.0)
        view.add(_partial("r-1", 0, "first try"))
        view.add(_partial("r-1", 5, "second"))
        assert _text(view).splitlines()[0].endswith("second")

    def test_a_new_run_replaces_the_dead_runs_text(self) -> None:
        """After a worker died, the next run's deltas count from sequence 0 again and still
        replace the dead run's text of the chunk."""
        view = TailView(clock=lambda: 0.0)
        view.add(_partial("r-1", 7, "dead run"))
        view.add(_partial("r-1", 0, "redone", run=2))
        view.add(_partial("r-1", 8, "late from the dead run"))
        assert _text(view).splitlines()[0].endswith("redone")


def test_the_topics_table_names_each_state() -> None:
    """`streams topics` shows created, ok, MISSING and too few, with the partitions found."""
    statuses = [
        TopicStatus(TopicSpec("new", 3, 1), 3, created=True),
        TopicStatus(TopicSpec("there", 3, 1), 4, created=False),
        TopicStatus(TopicSpec("gone", 3, 1), 0, created=False),
        TopicStatus(TopicSpec("t", 3, 1), 1, created=False),
    ]
    rows = [line.split(None, 2) for line in topics_table(statuses).splitlines()[1:]]
    assert rows == [
        ["new", "3", "created"],
        ["there", "4", "ok"],
        ["gone", "0", "MISSING"],
        ["t", "1", "too few (want 3)"],
    ]
