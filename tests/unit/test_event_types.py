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
    pytest.param(event_types.Timings, ("final", "timings"), id="final.timings"),
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
    # Objects nested deeper (final.redactions.items) are listed in SHAPES but not searched here.
    covered = {param.values[1] for param in SHAPES if len(param.values[1]) <= 2}
    found: set[tuple[str, ...]] = set()
    for name in ("recording", "partial", "final", "failed"):
        found.add((name,))
        for prop, node in schemas.load(name)["properties"].items():
            node = node.get("items", node)
            if node.get("type") == "object" and "properties" in node:
                found.add((name, prop))
    assert found == covered
