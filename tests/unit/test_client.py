"""What `streams publish` turns its sources into, before anything reaches Kafka."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import schemas
from streams.client import SourceError, expand, recording_events, validate
from streams.dev.samples import SAMPLES_DIR, sample_events
from streams.events import recording_event


def _files(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_a_directory_gives_its_media_files_in_order(tmp_path: Path) -> None:
    """A directory yields its audio and video files, sorted, and skips other files."""
    _files(tmp_path, "b.WAV", "a.mp3", "notes.txt", "deeper/c.ogg")
    assert expand(str(tmp_path)) == [(tmp_path / n).as_uri() for n in ("a.mp3", "b.WAV")]


def test_recursive_descends_into_subdirectories(tmp_path: Path) -> None:
    """With recursive, media files of subdirectories are published too."""
    _files(tmp_path, "a.mp3", "deeper/c.ogg")
    assert expand(str(tmp_path), recursive=True)[-1] == (tmp_path / "deeper/c.ogg").as_uri()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://bucket.example/rec-42.wav?X-Amz-Signature=abc", id="presigned"),
        pytest.param("file:///calls/a.wav", id="file-url"),
    ],
)
def test_a_url_is_published_as_given(url: str) -> None:
    """A URL is not looked up on this machine; it goes into the event unchanged."""
    assert expand(url) == [url]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        pytest.param((), "no audio or video files", id="empty-directory"),
        pytest.param(("notes.txt",), "no audio or video files", id="no-media"),
    ],
)
def test_a_directory_without_media_is_refused(
    tmp_path: Path, names: tuple[str, ...], message: str
) -> None:
    """A directory with nothing to transcribe is an error, not an empty publish."""
    _files(tmp_path, *names)
    with pytest.raises(SourceError, match=message):
        expand(str(tmp_path))


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    """A path that does not exist is named in the error."""
    with pytest.raises(SourceError, match="no such file or directory"):
        expand(str(tmp_path / "nowhere.wav"))


def test_events_carry_the_options_and_unique_ids(tmp_path: Path) -> None:
    """Every file gets an event with the options given and its own id, from its name."""
    _files(tmp_path, "call_one.wav")
    first, again = (
        recording_events(
            [str(tmp_path / "call_one.wav")],
            id_prefix="q-",
            layout="split",
            roles=["agent", "customer"],
            hotwords=["Acme"],
            call={"queue": "billing"},
        )[0]
        for _ in range(2)
    )
    assert first["recording_id"].startswith("q-call_one-")
    assert first["recording_id"] != again["recording_id"]
    assert first["channels"] == {"layout": "split", "roles": ["agent", "customer"]}
    assert first["recognition"] == {"hotwords": ["Acme"]}
    assert first["call"] == {"queue": "billing"}
    validate([first])


def test_an_event_breaking_the_schema_is_refused_with_its_url() -> None:
    """A value the schema forbids is reported before anything is sent."""
    event = recording_event("r-1", "file:///a.wav", language="xx")
    with pytest.raises(SourceError, match=r"file:///a\.wav: 'xx' is not one of"):
        validate([event])


@pytest.mark.parametrize(
    ("options", "version"),
    [
        pytest.param({}, 1, id="plain"),
        pytest.param({"language": "en", "enable_itn": False}, 1, id="version-1-fields"),
        pytest.param({"plan": "turns"}, 2, id="plan"),
        pytest.param({"mixed_languages": True}, 2, id="mixed-languages"),
    ],
)
def test_the_event_carries_the_lowest_version_with_its_fields(
    options: dict[str, object], version: int
) -> None:
    """Version 1 unless a field added in version 2 is given, so older workers read it."""
    # The table mixes option types; each row passes what its keyword takes.
    event = recording_event("r-1", "file:///a.wav", **options)  # type: ignore[arg-type]
    assert event["schema_version"] == version
    assert not list(schemas.validator("recording").iter_errors(event))


def test_the_sample_events_match_the_schema_and_their_files_exist() -> None:
    """Each bundled sample call's event is valid and points at a file that is there."""
    events = sample_events(suffix="-x")
    assert len(events) == 5
    validate(events)
    for event in events:
        assert event["recording_id"].endswith("-x")
        assert Path(event["audio_url"].removeprefix("file://")).parent == SAMPLES_DIR
        assert Path(event["audio_url"].removeprefix("file://")).is_file()


def test_publish_backend_choice_reaches_the_event(tmp_path: Path) -> None:
    """`streams publish --backend filetrans` asks for long-file tasks in the event itself
    (schema_version 4); without it the event leaves the choice to the worker's setting."""
    from click.testing import CliRunner

    from streams.cli import main

    _files(tmp_path, "long_call.wav")
    source = str(tmp_path / "long_call.wav")
    runner = CliRunner()
    chosen = runner.invoke(main, ["publish", source, "--backend", "filetrans", "--dry-run"])
    assert chosen.exit_code == 0, chosen.output
    event = orjson.loads(chosen.output.strip().splitlines()[-1])
    assert event["recognition"]["backend"] == "filetrans"
    assert event["schema_version"] == 4
    validate([event])
    plain = runner.invoke(main, ["publish", source, "--dry-run"])
    assert "backend" not in orjson.loads(plain.output.strip().splitlines()[-1]).get(
        "recognition", {}
    )
    refused = runner.invoke(main, ["publish", source, "--backend", "whisper", "--dry-run"])
    assert refused.exit_code == 2
