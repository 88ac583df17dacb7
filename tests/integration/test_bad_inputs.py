"""A catalogue of bad and hostile inputs, each answered with its documented failed-event code.

One worker process gets every bad event of the catalogue, interleaved with good recordings,
on one topic set; each case is then checked on its own (one test id per input). Hostile
references include SSRF targets checked after DNS resolution and on every redirect (an
allow-listed server on 127.0.0.2 redirects to 127.0.0.1 and to the metadata address), path
traversal and a symlink out of the file roots, and a decompression bomb. The API key and a
URL's signature must appear in no event and no log line.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
import orjson
import pytest

from tests.audio import asset, transcode
from tests.fixtures.asr_server import API_KEY, ScriptedServer
from tests.fixtures.kafka import make_topics
from tests.fixtures.worker import AUDIO_DIR, Message, Stack, stop_and_drain, validate

pytestmark = pytest.mark.integration

SPEECH = "en_speechbrain_harvard_birch_canoe.wav"
SIGNATURE = "SIGsecret0123456789abcdef"
MAX_BYTES = 4_000_000
MAX_S = 60
FETCH_TIMEOUT_S = 3


@dataclass(frozen=True)
class Case:
    """One bad input: how to build its event, and the code its failed event must carry."""

    id: str
    code: str
    build: Callable[[Ctx], dict[str, Any] | bytes]
    """Returns the event; a dict is published as JSON keyed by its recording id."""


@dataclass(frozen=True)
class Ctx:
    """Where the catalogue's files and hostile server live."""

    root: Path
    """Inside STREAMS_FILE_ROOTS."""
    outside: Path
    """A sibling directory outside the roots."""
    http: str
    """``http://127.0.0.2:PORT``: allow-listed, so its redirects are what gets checked."""

    def event(self, rid: str, url: str, **extra: Any) -> dict[str, Any]:
        return {"schema_version": 1, "recording_id": rid, "audio_url": url, **extra}

    def file(self, rid: str, name: str, **extra: Any) -> dict[str, Any]:
        return self.event(rid, (self.root / name).as_uri(), **extra)


def _json(rid: str, **fields: Any) -> Callable[[Ctx], dict[str, Any]]:
    return lambda ctx: {"schema_version": 1, "recording_id": rid, **fields}


CASES = [
    # The event itself
    Case("malformed-json", "invalid_event", lambda c: b'{"schema_version": 1, "case": "malformed'),
    Case("json-array", "invalid_event", lambda c: b'[1, 2, "case-json-array"]'),
    Case("empty-message", "invalid_event", lambda c: b""),
    Case("not-utf8", "invalid_event", lambda c: b"\xff\xfe case-not-utf8 \x80\x81"),
    Case(
        "id-wrong-type",
        "invalid_event",
        lambda c: {"schema_version": 1, "recording_id": 42, "audio_url": "file:///x.wav"},
    ),
    Case("missing-audio-url", "invalid_event", _json("bad-no-url")),
    Case("audio-url-wrong-type", "invalid_event", _json("bad-url-type", audio_url=["a", "b"])),
    Case(
        "unknown-schema-version",
        "unsupported_schema_version",
        lambda c: {**c.file("bad-v99", "good.wav"), "schema_version": 99},
    ),
    Case(
        "schema-version-as-text",
        "unsupported_schema_version",
        lambda c: {**c.file("bad-v-text", "good.wav"), "schema_version": "1"},
    ),
    Case("unknown-field", "invalid_event", lambda c: c.file("bad-field", "good.wav", priority=9)),
    Case(
        "bad-language-code",
        "invalid_event",
        lambda c: c.file("bad-lang", "good.wav", recognition={"language": "english"}),
    ),
    Case(
        "oversized-context",
        "invalid_event",
        lambda c: c.file("bad-context", "good.wav", recognition={"context": "x" * 10_001}),
    ),
    Case(
        "bad-recording-id",
        "invalid_event",
        lambda c: c.file("bad id with spaces", "good.wav"),
    ),
    # The audio
    Case("missing-audio", "audio_not_found", lambda c: c.file("bad-missing", "nowhere.wav")),
    Case("directory", "audio_not_found", lambda c: c.file("bad-dir", "subdir")),
    Case("empty-file", "undecodable_audio", lambda c: c.file("bad-empty", "empty.wav")),
    Case("truncated-file", "undecodable_audio", lambda c: c.file("bad-trunc", "truncated.m4a")),
    Case("header-only", "undecodable_audio", lambda c: c.file("bad-header", "header-only.wav")),
    Case("text-named-wav", "undecodable_audio", lambda c: c.file("bad-text", "notes.wav")),
    Case("video-no-audio", "no_audio_stream", lambda c: c.file("bad-video", "video.mp4")),
    Case("zero-samples", "empty_audio", lambda c: c.file("bad-zero", "zero.wav")),
    Case("oversize-file", "audio_too_large", lambda c: c.file("bad-big", "big.wav")),
    Case("overlong", "audio_too_long", lambda c: c.file("bad-long", "long.wav")),
    Case(
        "decompression-bomb-claims-4h",
        "audio_too_long",
        lambda c: c.file("bad-bomb", "claims4h.flac"),
    ),
    Case("silence-bomb-10min", "audio_too_long", lambda c: c.file("bad-silence", "silence.flac")),
    # References
    Case("scheme-ftp", "unsupported_reference", lambda c: c.event("bad-ftp", "ftp://h/a.wav")),
    Case("scheme-s3", "unsupported_reference", lambda c: c.event("bad-s3", "s3://bucket/a.wav")),
    Case(
        "scheme-data",
        "unsupported_reference",
        lambda c: c.event("bad-data", "data:audio/wav;base64,UklGRg=="),
    ),
    Case(
        "file-remote-host",
        "unsupported_reference",
        lambda c: c.event("bad-file-host", "file://evil.example/etc/passwd"),
    ),
    Case(
        "file-outside-roots",
        "reference_forbidden",
        lambda c: c.event("bad-etc", "file:///etc/passwd"),
    ),
    Case(
        "path-traversal",
        "reference_forbidden",
        lambda c: c.event("bad-dotdot", f"file://{c.root}/../outside/secret.wav"),
    ),
    Case(
        "path-traversal-encoded",
        "reference_forbidden",
        lambda c: c.event("bad-dotdot-enc", f"file://{c.root}/%2e%2e/outside/secret.wav"),
    ),
    Case("symlink-escape", "reference_forbidden", lambda c: c.file("bad-link", "escape.wav")),
    Case(
        "ssrf-loopback",
        "reference_forbidden",
        lambda c: c.event("bad-127", "http://127.0.0.1:9/a.wav"),
    ),
    Case(
        "ssrf-localhost-name",
        "reference_forbidden",
        lambda c: c.event("bad-localhost", "http://localhost:9/a.wav"),
    ),
    Case(
        "ssrf-decimal-ip",
        "reference_forbidden",
        lambda c: c.event("bad-decimal", "http://2130706433:9/a.wav"),
    ),
    Case("ssrf-ipv6-loopback", "reference_forbidden", lambda c: c.event("bad-v6", "http://[::1]/")),
    Case(
        "ssrf-ipv4-mapped",
        "reference_forbidden",
        lambda c: c.event("bad-mapped", "http://[::ffff:127.0.0.1]/a.wav"),
    ),
    Case(
        "ssrf-private",
        "reference_forbidden",
        lambda c: c.event("bad-private", "https://10.1.2.3/a.wav"),
    ),
    Case(
        "ssrf-metadata",
        "reference_forbidden",
        lambda c: c.event("bad-metadata", "http://169.254.169.254/latest/meta-data/"),
    ),
    Case(
        "ssrf-redirect-to-127",
        "reference_forbidden",
        lambda c: c.event("bad-redirect-127", f"{c.http}/to-loopback"),
    ),
    Case(
        "ssrf-redirect-to-metadata",
        "reference_forbidden",
        lambda c: c.event("bad-redirect-meta", f"{c.http}/to-metadata"),
    ),
    Case(
        "redirect-loop",
        "unsupported_reference",
        lambda c: c.event("bad-loop", f"{c.http}/loop"),
    ),
    Case("http-404", "audio_not_found", lambda c: c.event("bad-404", f"{c.http}/404")),
    Case("http-403", "reference_forbidden", lambda c: c.event("bad-403", f"{c.http}/403")),
    Case(
        "http-oversize",
        "audio_too_large",
        lambda c: c.event("bad-http-big", f"{c.http}/huge.wav"),
    ),
    Case(
        "download-too-slow",
        "fetch_unavailable",
        lambda c: c.event("bad-slow", f"{c.http}/slow.wav"),
    ),
    Case(
        "signed-url-not-found",
        "audio_not_found",
        lambda c: c.event(
            "bad-signed",
            f"{c.http.replace('//', '//user:pa55@')}/gone.wav"
            f"?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={SIGNATURE}",
        ),
    ),
    # The recogniser says no
    Case(
        "asr-400",
        "asr_rejected",
        lambda c: c.file("bad-asr-400", "good.wav", recognition={"context": "#reject"}),
    ),
    Case(
        "asr-401",
        "asr_unauthorized",
        lambda c: c.file("bad-asr-401", "good.wav", recognition={"context": "#deny"}),
    ),
]
GOOD = 8


@dataclass
class Catalogue:
    """Everything the worker published for the catalogue, and its log."""

    stack: Stack
    by_case: dict[str, list[Message]]
    good: dict[str, list[Message]]
    messages: list[Message]
    log: str
    order: list[str]
    """Recording ids of the terminal events in the order the worker answered them."""


def _make_files(ctx: Ctx) -> None:
    speech = asset(SPEECH)
    shutil.copy(speech, ctx.root / "good.wav")
    (ctx.root / "subdir").mkdir()
    (ctx.root / "empty.wav").write_bytes(b"")
    (ctx.root / "header-only.wav").write_bytes(speech.read_bytes()[:30])
    (ctx.root / "notes.wav").write_text("this is a text file with a .wav name\n" * 40)
    m4a = transcode(speech, ctx.outside / "full.m4a", codec="aac", container="ipod")
    # The moov atom comes last: half the file is not a playable MP4.
    (ctx.root / "truncated.m4a").write_bytes(m4a.read_bytes()[: m4a.stat().st_size // 2])
    with wave.open(str(ctx.root / "zero.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"")
    (ctx.root / "big.wav").write_bytes(speech.read_bytes() + bytes(MAX_BYTES))
    _long_wav(speech, ctx.root / "long.wav", seconds=MAX_S + 30)
    _claims_hours(transcode(speech, ctx.outside / "one.flac", codec="flac"), ctx.root)
    _silence(ctx.root / "silence.flac", seconds=600)
    _video(ctx.root / "video.mp4")
    (ctx.outside / "secret.wav").write_bytes(speech.read_bytes())
    (ctx.root / "escape.wav").symlink_to(ctx.outside / "secret.wav")


def _long_wav(source: Path, target: Path, *, seconds: int) -> None:
    with wave.open(str(source)) as inp:
        frames, rate = inp.readframes(inp.getnframes()), inp.getframerate()
        width, channels = inp.getsampwidth(), inp.getnchannels()
    repeats = seconds * rate * width * channels // len(frames) + 1
    with wave.open(str(target), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(frames * repeats)


def _claims_hours(flac: Path, root: Path) -> None:
    """A 3 s FLAC whose STREAMINFO claims four hours (36-bit total samples, bytes 18..25)."""
    raw = bytearray(flac.read_bytes())
    assert raw[:4] == b"fLaC"
    packed = int.from_bytes(raw[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | (4 * 3600 * 16000)
    raw[18:26] = packed.to_bytes(8, "big")
    (root / "claims4h.flac").write_bytes(bytes(raw))


def _silence(target: Path, *, seconds: int) -> None:
    """Ten minutes of digital silence: about 100 kB that decode to 19 MB of PCM."""
    with av.open(str(target), "w") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono")
        for i in range(seconds):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 16000), dtype=np.int16), format="s16", layout="mono"
            )
            frame.sample_rate = 16000
            frame.pts = i * 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _video(target: Path) -> None:
    with av.open(str(target), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), "rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


class _Hostile(BaseHTTPRequestHandler):
    """An allow-listed server that redirects where it must not, or misbehaves."""

    speech = b""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        port = self.server.server_address[1]
        redirects = {
            "/to-loopback": f"http://127.0.0.1:{port}/ok.wav",
            "/to-metadata": "http://169.254.169.254/latest/meta-data/iam/",
            "/loop": "/loop",
        }
        if path in redirects:
            self._reply(302, headers={"Location": redirects[path]})
        elif path == "/ok.wav":
            self._reply(200, self.speech, {"Content-Type": "audio/wav"})
        elif path == "/403":
            self._reply(403, b"signature expired")
        elif path == "/huge.wav":
            self.send_response(200)
            self.send_header("Content-Length", str(50 * MAX_BYTES))
            self.end_headers()
            self.wfile.write(self.speech[:1000])
        elif path == "/slow.wav":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.speech)))
            self.end_headers()
            self.wfile.write(self.speech[:100])
            self.wfile.flush()
            time.sleep(FETCH_TIMEOUT_S + 5)
        else:
            self._reply(404, b"no such key")

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test reads the worker's log, not this one's


@pytest.fixture(scope="module")
def hostile_server() -> Iterator[str]:
    """The allow-listed HTTP server on 127.0.0.2, as ``http://127.0.0.2:PORT``."""
    _Hostile.speech = asset(SPEECH).read_bytes()
    server = ThreadingHTTPServer(("127.0.0.2", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _stack(bootstrap: str, server: ScriptedServer, tmp: Path, root: Path) -> Stack:
    prefix = f"t-bad-inputs-{uuid.uuid4().hex[:10]}"
    names = {k: f"{prefix}.{k}" for k in ("recordings", "partial", "final", "failed")}
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMS_APP_ID": f"{prefix}-worker",
        "STREAMS_TOPIC_RECORDINGS": names["recordings"],
        "STREAMS_TOPIC_PARTIAL": names["partial"],
        "STREAMS_TOPIC_FINAL": names["final"],
        "STREAMS_TOPIC_FAILED": names["failed"],
        "STREAMS_TOPIC_PARTITIONS": "4",
        "STREAMS_ASR_BASE_URL": server.base_url,
        "DASHSCOPE_API_KEY": server.api_key or "",
        "STREAMS_FILE_ROOTS": f"{AUDIO_DIR},{root}",
        "STREAMS_ALLOW_PRIVATE_HOSTS": "127.0.0.2",
        "STREAMS_MAX_AUDIO_BYTES": str(MAX_BYTES),
        "STREAMS_MAX_AUDIO_S": str(MAX_S),
        "STREAMS_FETCH_TIMEOUT_S": str(FETCH_TIMEOUT_S),
        "STREAMS_WEB_ENABLED": "false",
        "STREAMS_ASR_ATTEMPTS": "3",
        "STREAMS_RECORDING_DEADLINE_S": "60",
        "STREAMS_ASR_REQUESTS_PER_MINUTE": "60000",
        "STREAMS_LOG_LEVEL": "DEBUG",
    }
    return Stack(bootstrap=bootstrap, app_id=env["STREAMS_APP_ID"], env=env, tmp=tmp, **names)


def _marker(message: Message) -> str:
    value = message.value
    return orjson.dumps(value.get("original_event")).decode() + (value.get("original_raw") or "")


@pytest.fixture(scope="module")
async def catalogue(
    kafka_bootstrap: str,
    scripted_server_process: ScriptedServer,
    hostile_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Catalogue]:
    """Run the whole catalogue through one worker, good recordings interleaved."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    ctx = Ctx(root=tmp / "root", outside=tmp / "outside", http=hostile_server)
    ctx.root.mkdir()
    ctx.outside.mkdir()
    _make_files(ctx)
    server = scripted_server_process
    server.reset()
    server.set_faults(
        [
            {"match": {"context_contains": "#reject"}, "fault": "400"},
            {"match": {"context_contains": "#deny"}, "fault": "401"},
        ]
    )
    stack = _stack(kafka_bootstrap, server, tmp, ctx.root)
    await make_topics(
        kafka_bootstrap, [stack.recordings, stack.partial, stack.final, stack.failed], 4
    )
    events: list[dict[str, Any] | bytes] = []
    good_ids = []
    for i, case in enumerate(CASES):
        if i % (len(CASES) // (GOOD - 2)) == 0:
            good_ids.append(f"good-{len(good_ids)}")
            events.append(ctx.file(good_ids[-1], "good.wav"))
        events.append(case.build(ctx))
    good_ids.append("good-http")
    events.append(ctx.event("good-http", f"{hostile_server}/ok.wav"))
    good_ids.append("good-last")
    events.append(ctx.file("good-last", "good.wav"))

    worker = stack.start_worker()
    try:
        await stack.publish(events)
        await stack.collect(lambda ms: len(stack.terminal(ms)) >= len(events), timeout_s=120)
        # A duplicate, if any, is on a topic by the time the worker has stopped: count them
        # on every output topic read to its end after the stop.
        messages = await stop_and_drain(stack)
        by_case: dict[str, list[Message]] = {case.id: [] for case in CASES}
        good: dict[str, list[Message]] = {rid: [] for rid in good_ids}
        built = {case.id: case.build(ctx) for case in CASES}
        for message in stack.terminal(messages):
            rid = message.value["recording_id"]
            if rid in good:
                good[rid].append(message)
                continue
            for case_id, event in built.items():
                if isinstance(event, dict) and event.get("recording_id") == rid:
                    by_case[case_id].append(message)
                    break
                if rid is None and _belongs(event, message):
                    by_case[case_id].append(message)
                    break
        yield Catalogue(
            stack=stack,
            by_case=by_case,
            good=good,
            messages=messages,
            log=worker.log_path.read_text(errors="replace"),
            order=[m.value["recording_id"] for m in stack.terminal(messages)],
        )
    finally:
        worker.stop()
        server.reset()


def _belongs(event: dict[str, Any] | bytes, message: Message) -> bool:
    """Whether a failed event without a recording id answers ``event``."""
    value = message.value
    if isinstance(event, bytes):
        return value["original_event"] is None and value["original_raw"] == event.decode(
            "utf-8", errors="replace"
        )
    return value["original_event"] == event


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_once_with_its_code(case: Case, catalogue: Catalogue) -> None:
    """The input gets exactly one failed event, with the documented code, valid to its schema."""
    answers = catalogue.by_case[case.id]
    assert len(answers) == 1, f"{case.id}: {len(answers)} terminal events"
    message = answers[0]
    validate(message)
    assert message.topic == catalogue.stack.failed
    error = message.value["error"]
    assert error["code"] == case.code, error
    assert error["retryable"] is (case.code == "fetch_unavailable")


def test_the_worker_keeps_consuming_between_bad_inputs(catalogue: Catalogue) -> None:
    """Every good recording, interleaved with the bad ones and after them, ends final."""
    for rid, answers in catalogue.good.items():
        assert [m.topic for m in answers] == [catalogue.stack.final], rid
    assert catalogue.order.count("good-last") == 1


def test_every_event_the_worker_published_is_schema_valid(catalogue: Catalogue) -> None:
    """Partial, final and failed events alike, read to the end after the worker stopped."""
    assert {m.topic for m in catalogue.messages} == {
        catalogue.stack.partial,
        catalogue.stack.final,
        catalogue.stack.failed,
    }
    for message in catalogue.messages:
        validate(message)


def test_no_secret_reaches_an_event_or_the_log(catalogue: Catalogue) -> None:
    """Neither the API key nor a URL's signature or password appears anywhere we write."""
    published = b"".join(orjson.dumps(m.value) for m in catalogue.messages).decode()
    for secret in (API_KEY, SIGNATURE, "pa55", "AKIAEXAMPLE"):
        assert secret not in published, secret
        assert secret not in catalogue.log, secret
    signed = catalogue.by_case["signed-url-not-found"][0].value["error"]["message"]
    assert "<redacted>" in signed


async def test_a_wrong_api_key_fails_every_recording_without_showing_the_key(
    stack: Stack, scripted_server: ScriptedServer
) -> None:
    """With a wrong key each recording fails asr_unauthorized at once; the key is never echoed."""
    wrong = "sk-wrong-" + uuid.uuid4().hex
    source = stack.tmp / "call.wav"
    shutil.copy(asset(SPEECH), source)
    events = [
        {"schema_version": 1, "recording_id": f"key-{i}", "audio_url": source.as_uri()}
        for i in range(6)
    ]
    worker = stack.start_worker(DASHSCOPE_API_KEY=wrong, STREAMS_LOG_LEVEL="DEBUG")
    await stack.publish(events)
    await stack.collect(lambda ms: len(stack.terminal(ms)) >= len(events))
    # One failed event each, counted once the worker has stopped and the topics are read out.
    messages = await stop_and_drain(stack)
    codes = [m.value["error"]["code"] for m in stack.terminal(messages)]
    assert codes == ["asr_unauthorized"] * len(events)
    assert all(m.value["attempts"] == 1 for m in stack.terminal(messages))  # not retried
    assert len(scripted_server.journal()) == len(events)
    published = b"".join(orjson.dumps(m.value) for m in messages).decode()
    assert wrong not in published
    assert wrong not in worker.log_path.read_text(errors="replace")
