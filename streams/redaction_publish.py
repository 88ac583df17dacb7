"""Redaction at the publisher seam: nothing the worker publishes or keeps carries the values.

:class:`RedactingPublisher` wraps the pipeline's publisher outermost, above the ledger, so the
ledger's changelog topic only ever holds redacted finals. :class:`RedactingPipeline` tells it
which policy each recording asked for (its ``redaction`` object) through a context variable,
which every task of that recording's processing inherits.

The partial rule (docs/redaction.md): each partial is redacted from the request's whole text so
far, never from the delta alone, and a run of digits or digit words still open at the end of
that text (or an unfinished word) is held back until a later delta closes it; the final event
carries everything. So a number split across deltas never shows its digits in a partial.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, cast, get_args

from streams.crashloop import FIRST_RUN, Run
from streams.event_types import (
    FailedEvent,
    FinalEvent,
    RedactionItem,
    Redactions,
    Segment,
    Sentence,
    TerminalEvent,
    Turn,
    Word,
)
from streams.events import parse_recording
from streams.pipeline import Pipeline
from streams.publish import EventPublisher
from streams.redaction import Kind, Redacted, RedactionPolicy, Style, redact, redact_pieces
from streams.redaction_digits import open_tail, opens_with_number

__all__ = [
    "RedactingPipeline",
    "RedactingPublisher",
    "policy_from_event",
    "policy_scope",
    "redact_final",
]

_POLICY: contextvars.ContextVar[RedactionPolicy | None] = contextvars.ContextVar(
    "redaction_policy", default=None
)


def policy_from_event(base: RedactionPolicy, override: dict[str, Any] | None) -> RedactionPolicy:
    """``base`` with a recording event's ``redaction`` object applied (schema-checked)."""
    if not override:
        return base
    kinds = override.get("kinds")
    style = override.get("style", base.style)
    known = set(get_args(Kind))
    return replace(
        base,
        kinds=base.kinds if kinds is None else frozenset(k for k in kinds if k in known),
        style=cast(Style, style),
    )


class RedactingPipeline(Pipeline):
    """The pipeline, with each recording's redaction policy set for its publishing."""

    def __init__(self, *args: Any, policy: RedactionPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._policy = policy

    async def process(self, raw: bytes, *, where: str = "", run: Run = FIRST_RUN) -> TerminalEvent:
        """Process as the pipeline does, under the policy the event asks for."""
        try:
            override = parse_recording(raw, self._rules.defaults).redaction
        except Exception:  # noqa: BLE001 (the pipeline fails the event; no text comes of it)
            override = None
        token = _POLICY.set(policy_from_event(self._policy, override))
        try:
            return await super().process(raw, where=where, run=run)
        finally:
            _POLICY.reset(token)


@dataclass
class _Shown:
    text: str = ""


class RedactingPublisher:
    """Redacts partial and final text before ``inner`` publishes (and the ledger keeps) it."""

    def __init__(self, inner: EventPublisher, policy: RedactionPolicy) -> None:
        self._inner = inner
        self._policy = policy
        # What each request's partials have shown so far, by (recording, run, attempt, channel,
        # chunk): deltas are cut from it. Dropped when the recording's final or failed goes out.
        self._shown: dict[tuple[str, int, int, int, int], _Shown] = {}

    def _current(self) -> RedactionPolicy:
        return _POLICY.get() or self._policy

    async def partial(self, recording_id: str, **fields: Any) -> None:
        """Publish the redacted text so far, holding back a number that may go on."""
        policy = self._current()
        if not policy.kinds:
            await self._inner.partial(recording_id, **fields)
            return
        text: str = fields["text"]
        key = (
            recording_id,
            fields["run"],
            fields["attempt"],
            fields["channel"],
            fields["chunk_index"],
        )
        # A request after the first of its channel that opens with digits may carry the rest
        # of a number the previous request ended with (held there): the two halves are only
        # seen together in the final, so this request shows nothing before it.
        continues = fields["chunk_index"] > 0 and opens_with_number(text)
        cut = 0 if continues else open_tail(text)
        shown = redact(text[:cut], policy)
        before = self._shown.setdefault(key, _Shown()).text
        common = len(os.path.commonprefix([before, shown.text]))  # noqa: RUF071 (text)
        self._shown[key].text = shown.text
        await self._inner.partial(
            recording_id,
            **{
                **fields,
                "delta": shown.text[common:],
                "text": shown.text,
                "redacted": bool(shown.findings),
                "held_back_chars": len(text) - cut,
            },
        )

    async def final(self, event: FinalEvent, *, source: str = "") -> None:
        """Publish the final with its text, segments and turns redacted, and a summary."""
        if "redactions" not in event:
            # A final replayed from the ledger was redacted before it was kept.
            event = redact_final(event, self._current())
        self._forget(event["recording_id"])
        await self._inner.final(event, source=source)

    async def failed(self, event: FailedEvent) -> None:
        """Publish a failed event (it carries no transcript)."""
        if event["recording_id"]:
            self._forget(event["recording_id"])
        await self._inner.failed(event)

    def _forget(self, recording_id: str) -> None:
        for key in [k for k in self._shown if k[0] == recording_id]:
            del self._shown[key]


def redact_final(event: FinalEvent, policy: RedactionPolicy) -> FinalEvent:
    """``event`` with text, segment and turn texts redacted and a ``redactions`` summary."""
    items: list[RedactionItem] = []

    def note(field: str, redacted: Redacted) -> str:
        items.extend(
            {"field": field, "kind": f.kind, "start": f.start, "end": f.end}
            for f in redacted.findings
        )
        return redacted.text

    segments = [Segment(**s) for s in event["segments"]]
    # A channel's segments are searched as one text: a number read across a pause is one number.
    for channel in sorted({s["channel"] for s in segments}):
        mine = [i for i, s in enumerate(segments) if s["channel"] == channel]
        done = redact_pieces([segments[i]["text"] for i in mine], policy)
        for i, redacted in zip(mine, done, strict=True):
            segments[i]["text"] = note(f"/segments/{i}/text", redacted)
    extra = _redact_sentences(event, policy, note)
    turns = [Turn(**t) for t in event["turns"]]
    for i, turn in enumerate(turns):
        turns[i]["text"] = note(f"/turns/{i}/text", redact(turn["text"], policy))
    text = note("/text", redact(event["text"], policy))
    counts: dict[str, int] = {}
    for item in items:
        if item["field"] == "/text":
            counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    summary: Redactions = {
        "kinds": sorted(policy.kinds),
        "style": policy.style,
        "counts": counts,
        "items": items,
    }
    out = cast(FinalEvent, {**event, "text": text, "segments": segments, "turns": turns, **extra})
    out["redactions"] = summary
    return out


def _redact_sentences(
    event: FinalEvent, policy: RedactionPolicy, note: Callable[[str, Redacted], str]
) -> dict[str, Any]:
    """The filetrans backend's ``sentences`` and ``words``, redacted.

    Sentences like segments (a channel's searched as one text); a word of a sentence that had
    anything redacted is kept only if it still shows in the redacted sentence, else its text
    becomes ``[REDACTED]``: no digit of a card number survives in the word list.
    """
    if "sentences" not in event:
        return {}
    sentences = [Sentence(**s) for s in event["sentences"]]
    changed: set[int] = set()
    for channel in sorted({s["channel"] for s in sentences}):
        mine = [i for i, s in enumerate(sentences) if s["channel"] == channel]
        done = redact_pieces([sentences[i]["text"] for i in mine], policy)
        for i, redacted in zip(mine, done, strict=True):
            if redacted.findings:
                changed.add(i)
            sentences[i]["text"] = note(f"/sentences/{i}/text", redacted)
    words = [Word(**w) for w in event.get("words", [])]
    for word in words:
        at = word.get("sentence")
        if at in changed and at is not None and word["text"] not in sentences[at]["text"]:
            word["text"] = "[REDACTED]"
    return {"sentences": sentences, "words": words}


@contextlib.contextmanager
def policy_scope(policy: RedactionPolicy) -> Iterator[None]:
    """Publish under ``policy`` inside the block (what :class:`RedactingPipeline` does per
    recording; the filetrans poller's partials, outside any pipeline run, need it too)."""
    token = _POLICY.set(policy)
    try:
        yield
    finally:
        _POLICY.reset(token)
