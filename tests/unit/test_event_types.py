"""The event TypedDicts say what the JSON Schemas say: same required keys, same optional ones."""

from __future__ import annotations

from typing import Any

import pytest

import schemas
from streams import event_types


def _at(schema: str, *path: str) -> dict[str, Any]:
    node = schemas.load(schema)
    for part in path:
        node = node["properties"][part]
        node = node.get("items", node)  # an array's objects
    return node


SHAPES = [
    pytest.param(event_types.RecordingEvent, ("recording",), id="recording"),
    pytest.param(event_types.Channels, ("recording", "channels"), id="recording.channels"),
    pytest.param(event_types.Recognition, ("recording", "recognition"), id="recording.recognition"),
    pytest.param(event_types.Redaction, ("recording", "redaction"), id="recording.redaction"),
    pytest.param(event_types.PartialEvent, ("partial",), id="partial"),
    pytest.param(event_types.FinalEvent, ("final",), id="final"),
    pytest.param(event_types.Segment, ("final", "segments"), id="final.segments"),
    pytest.param(event_types.Turn, ("final", "turns"), id="final.turns"),
    pytest.param(event_types.Sentence, ("final", "sentences"), id="final.sentences"),
    pytest.param(event_types.Word, ("final", "words"), id="final.words"),
    pytest.param(event_types.Timings, ("final", "timings"), id="final.timings"),
    pytest.param(event_types.Analytics, ("final", "analytics"), id="final.analytics"),
    pytest.param(
        event_types.RoleAnalytics, ("final", "analytics", "roles"), id="final.analytics.roles"
    ),
    pytest.param(
        event_types.EmotionSpan, ("final", "analytics", "emotions"), id="final.analytics.emotions"
    ),
    pytest.param(event_types.ToneSpan, ("final", "analytics", "tones"), id="final.analytics.tones"),
    pytest.param(event_types.Redactions, ("final", "redactions"), id="final.redactions"),
    pytest.param(
        event_types.RedactionItem, ("final", "redactions", "items"), id="final.redactions.items"
    ),
    pytest.param(event_types.FailedEvent, ("failed",), id="failed"),
    pytest.param(event_types.ErrorInfo, ("failed", "error"), id="failed.error"),
]


@pytest.mark.parametrize(("shape", "where"), SHAPES)
def test_a_typed_dict_has_the_keys_of_its_schema_object(shape: Any, where: tuple[str, ...]) -> None:
    """Required properties are required keys, the others optional keys, and nothing more:
    code typed against these cannot build an event that lacks or adds a property."""
    node = _at(*where)
    required = set(node.get("required", []))
    assert set(shape.__required_keys__) == required
    assert set(shape.__optional_keys__) == set(node["properties"]) - required


def test_every_object_of_the_contracts_has_a_typed_dict() -> None:
    """A new nested object in a schema needs its TypedDict (and a line in SHAPES)."""
    covered = {param.values[1] for param in SHAPES}
    found: set[tuple[str, ...]] = set()

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        found.add(path)
        for prop, child in node["properties"].items():
            child = child.get("items", child)
            if child.get("type") == "object" and "properties" in child:
                walk(child, (*path, prop))

    for name in ("recording", "partial", "final", "failed"):
        walk(schemas.load(name), (name,))
    assert found == covered
