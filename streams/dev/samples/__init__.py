"""The bundled sample calls and the recording event of each (``calls.jsonl``).

``python -m streams.dev.samples.build tests/data/speech`` rebuilds the audio files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streams.events import recording_event

__all__ = ["SAMPLES_DIR", "sample_events"]

SAMPLES_DIR = Path(__file__).resolve().parent


def sample_events(samples_dir: Path = SAMPLES_DIR, *, suffix: str = "") -> list[dict[str, Any]]:
    """The recording events of the sample calls in ``samples_dir`` (ids end in ``suffix``).

    Each line of ``calls.jsonl`` names a file and the event's sections; the file becomes the
    event's ``file://`` URL.
    """
    events = []
    for line in (samples_dir / "calls.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        spec = orjson.loads(line)
        events.append(
            recording_event(
                spec["recording_id"] + suffix,
                (samples_dir / spec["file"]).as_uri(),
                **spec.get("channels", {}),
                **spec.get("recognition", {}),
                call=spec.get("call"),
            )
        )
    return events
