"""Tests of the fetch stage: local files under roots, and downloads from a real local server."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from streams.errors import (
    AudioNotFound,
    AudioTooLarge,
    FetchUnavailable,
    PipelineError,
    ReferenceRejected,
)
from streams.fetch import FetchLimits, fetch, fetch_client

CHUNK = bytes(range(256)) * 256  # 64 KiB with a pattern, so misordered chunks would show


async def _chunks(count: int, delay_s: float = 0.0) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield CHUNK
        await asyncio.sleep(delay_s)


async def _audio(request: Request) -> Response:
    return StreamingResponse(_chunks(int(request.query_params["chunks"])))


async def _declared_big(request: Request) -> Response:
    async def late() -> AsyncIterator[bytes]:
        # The body never comes: a fetch that waited for it would hit its own timeout instead.
        await asyncio.sleep(3600)
        yield CHUNK

    return StreamingResponse(late(), headers={"content-length": request.query_params["length"]})


async def _endless(request: Request) -> Response:
    return StreamingResponse(_chunks(10_000))


async def _status(request: Request) -> Response:
    retry_after = request.query_params.get("retry_after")
    headers = {"retry-after": retry_after} if retry_after else {}
    return Response(b"nope", status_code=int(request.path_params["code"]), headers=headers)


async def _slow_headers(request: Request) -> Response:
    await asyncio.sleep(5)
    return Response(CHUNK)


async def _trickle(request: Request) -> Response:
    return StreamingResponse(_chunks(100, delay_s=0.05))


async def _redirect(request: Request) -> Response:
    return RedirectResponse(request.query_params["to"], status_code=302)


async def _loop(request: Request) -> Response:
    return RedirectResponse("/loop", status_code=307)


async def _headers(request: Request) -> Response:
    return JSONResponse(dict(request.headers))


APP = Starlette(
    routes=[
        Route("/audio.wav", _audio),
        Route("/declared-big", _declared_big),
        Route("/endless", _endless),
        Route("/status/{code:int}", _status),
        Route("/slow-headers", _slow_headers),
        Route("/trickle", _trickle),
        Route("/redirect", _redirect),
        Route("/loop", _loop),
        Route("/headers", _headers),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Serve APP with uvicorn on a free 127.0.0.1 port in a background thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        APP, http="h11", ws="none", lifespan="off", log_level="error", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def limits() -> FetchLimits:
    return FetchLimits(max_bytes=4 * len(CHUNK), timeout_s=5, allow_private_hosts=("127.0.0.1",))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def never_called() -> AsyncIterator[httpx.AsyncClient]:
    """A client whose every request fails the test: the guard must refuse before sending."""

    def handler(request: httpx.Request) -> httpx.Response:
        pytest.fail(f"unexpected request to {request.url}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield client


async def _fails(
    reference: str, limits: FetchLimits, client: httpx.AsyncClient, **kwargs: Path
) -> PipelineError:
    with pytest.raises(PipelineError) as info:
        await fetch(reference, limits, client, **kwargs)
    return info.value


def _leftovers(directory: Path) -> list[Path]:
    return list(directory.iterdir())


# --- file:// ---------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "calls").mkdir(parents=True)
    (root / "calls" / "a.wav").write_bytes(b"RIFF1234")
    (root / "link.wav").symlink_to(root / "calls" / "a.wav")
    (tmp_path / "secret.wav").write_bytes(b"secret")
    (root / "escape.wav").symlink_to(tmp_path / "secret.wav")
    return root


@pytest.mark.parametrize(
    "relative",
    [
        pytest.param("calls/a.wav", id="plain"),
        pytest.param("calls/../calls/a.wav", id="dotdot-inside"),
        pytest.param("link.wav", id="symlink-inside"),
        pytest.param("calls/%61.wav", id="percent-encoded"),
    ],
)
async def test_file_under_root_is_used_in_place(
    root: Path, never_called: httpx.AsyncClient, relative: str
) -> None:
    """A file under a root comes back as its real path, not a copy, and survives close."""
    limits = FetchLimits(file_roots=(root,))
    with await fetch(f"file://{root}/{relative}", limits, never_called) as audio:
        assert (audio.path, audio.size_bytes, audio.temporary) == (
            root / "calls" / "a.wav",
            8,
            False,
        )
    assert audio.path.exists()


@pytest.mark.parametrize(
    ("reference", "roots"),
    [
        pytest.param("file://{tmp}/secret.wav", "root", id="outside"),
        pytest.param("file://{tmp}/root/../secret.wav", "root", id="dotdot-escape"),
        pytest.param("file://{tmp}/root/escape.wav", "root", id="symlink-escape"),
        pytest.param("file://{tmp}/root/calls/a.wav", "", id="no-roots"),
        pytest.param("file://{tmp}/root/missing/../../secret.wav", "root", id="dotdot-missing"),
    ],
)
async def test_file_outside_roots_is_forbidden(
    root: Path, never_called: httpx.AsyncClient, reference: str, roots: str
) -> None:
    """Paths that land outside every root, by `..` or by symlink, are reference_forbidden."""
    limits = FetchLimits(file_roots=(root,) if roots else ())
    error = await _fails(reference.format(tmp=root.parent), limits, never_called)
    assert isinstance(error, ReferenceRejected)
    assert error.code == "reference_forbidden"


@pytest.mark.parametrize(
    "relative",
    [pytest.param("calls/b.wav", id="missing"), pytest.param("calls", id="directory")],
)
async def test_missing_or_irregular_file_is_not_found(
    root: Path, never_called: httpx.AsyncClient, relative: str
) -> None:
    """A missing file or a directory under a root is audio_not_found."""
    limits = FetchLimits(file_roots=(root,))
    error = await _fails(f"file://{root}/{relative}", limits, never_called)
    assert isinstance(error, AudioNotFound)


async def test_oversize_file_is_too_large(root: Path, never_called: httpx.AsyncClient) -> None:
    """A file above max_bytes is audio_too_large."""
    limits = FetchLimits(max_bytes=7, file_roots=(root,))
    error = await _fails(f"file://{root}/calls/a.wav", limits, never_called)
    assert isinstance(error, AudioTooLarge)


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param("ftp://example.com/a.wav", id="ftp"),
        pytest.param("s3://bucket/a.wav", id="s3"),
        pytest.param("gopher://example.com/", id="gopher"),
        pytest.param("data:audio/wav;base64,UklGRg==", id="data"),
        pytest.param("/srv/calls/a.wav", id="bare-path"),
        pytest.param("calls/a.wav", id="relative-path"),
        pytest.param("file://fileserver/share/a.wav", id="remote-file"),
        pytest.param("file:calls/a.wav", id="relative-file"),
        pytest.param("", id="empty"),
    ],
)
async def test_unsupported_references_are_rejected(
    never_called: httpx.AsyncClient, limits: FetchLimits, reference: str
) -> None:
    """Schemes other than http, https and file:///absolute are unsupported_reference."""
    error = await _fails(reference, limits, never_called)
    assert isinstance(error, ReferenceRejected)
    assert error.code == "unsupported_reference"


# --- SSRF --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="loopback"),
        pytest.param("localhost", id="localhost"),
        pytest.param("10.0.0.1", id="10/8"),
        pytest.param("172.16.0.1", id="172.16/12"),
        pytest.param("192.168.1.1", id="192.168/16"),
        pytest.param("169.254.169.254", id="metadata"),
        pytest.param("[::1]", id="ipv6-loopback"),
        pytest.param("[::ffff:127.0.0.1]", id="ipv4-mapped"),
        pytest.param("0.0.0.0", id="unspecified"),  # noqa: S104 (a target to refuse, not a bind)
    ],
)
async def test_private_targets_are_forbidden(never_called: httpx.AsyncClient, host: str) -> None:
    """Without an allow-list, private, loopback and link-local hosts are refused unrequested."""
    error = await _fails(f"http://{host}/a.wav", FetchLimits(), never_called)
    assert isinstance(error, ReferenceRejected)
    assert error.code == "reference_forbidden"


# --- HTTP against a real server ----------------------------------------------------------


@pytest.mark.parametrize(
    "guarded", [pytest.param(False, id="plain"), pytest.param(True, id="guarded")]
)
async def test_allow_listed_server_streams_body_intact(
    server: str, limits: FetchLimits, tmp_path: Path, guarded: bool
) -> None:
    """A chunked 200 body lands byte for byte in a temp file that is deleted on exit."""
    async with fetch_client(limits) if guarded else httpx.AsyncClient() as client:
        with await fetch(f"{server}/audio.wav?chunks=3", limits, client, tmp_path) as audio:
            assert audio.path.parent == tmp_path
            assert audio.path.suffix == ".wav"
            assert audio.size_bytes == 3 * len(CHUNK)
            digest = hashlib.sha256(audio.path.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(CHUNK * 3).hexdigest()
    assert not audio.path.exists()


async def test_declared_length_over_cap_fails_before_body(
    server: str, limits: FetchLimits, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A Content-Length above max_bytes fails at once, without waiting for the body.

    The server sends headers and then nothing: had the fetch waited for the body, its own
    timeout would have fired (fetch_unavailable), not the size check on the header.
    """
    reference = f"{server}/declared-big?length={limits.max_bytes + 1}"
    error = await _fails(reference, limits, client, temp_dir=tmp_path)
    assert isinstance(error, AudioTooLarge)
    assert f"got a declared {limits.max_bytes + 1}" in str(error)
    assert _leftovers(tmp_path) == []


async def test_growing_body_fails_and_removes_temp_file(
    server: str, limits: FetchLimits, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A chunked body that grows past max_bytes fails and leaves no temp file behind."""
    error = await _fails(f"{server}/endless", limits, client, temp_dir=tmp_path)
    assert isinstance(error, AudioTooLarge)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        pytest.param(404, AudioNotFound, "audio_not_found", id="404"),
        pytest.param(410, AudioNotFound, "audio_not_found", id="410"),
        pytest.param(401, ReferenceRejected, "reference_forbidden", id="401"),
        pytest.param(403, ReferenceRejected, "reference_forbidden", id="403"),
        pytest.param(400, ReferenceRejected, "unsupported_reference", id="400"),
        pytest.param(300, ReferenceRejected, "unsupported_reference", id="300"),
        pytest.param(408, FetchUnavailable, "fetch_unavailable", id="408"),
        pytest.param(429, FetchUnavailable, "fetch_unavailable", id="429"),
        pytest.param(500, FetchUnavailable, "fetch_unavailable", id="500"),
        pytest.param(503, FetchUnavailable, "fetch_unavailable", id="503"),
    ],
)
async def test_error_status_maps_to_error(
    server: str,
    limits: FetchLimits,
    client: httpx.AsyncClient,
    status: int,
    kind: type[PipelineError],
    code: str,
) -> None:
    """Each error status becomes the documented error class and code."""
    error = await _fails(f"{server}/status/{status}", limits, client)
    assert (type(error), error.code) == (kind, code)


async def test_retry_after_is_carried(
    server: str, limits: FetchLimits, client: httpx.AsyncClient
) -> None:
    """A 503 with Retry-After carries the delay in retry_after_s."""
    error = await _fails(f"{server}/status/503?retry_after=7", limits, client)
    assert isinstance(error, FetchUnavailable)
    assert error.retry_after_s == 7.0


@pytest.mark.parametrize(
    "path",
    [pytest.param("/slow-headers", id="slow-headers"), pytest.param("/trickle", id="trickle")],
)
async def test_slow_server_fails_within_deadline(
    server: str, client: httpx.AsyncClient, tmp_path: Path, path: str
) -> None:
    """A server that answers or streams too slowly fails transiently at the overall deadline.

    Both servers would succeed given time (headers after 5 s; 100 chunks 50 ms apart, each
    well inside any read timeout), so the failure itself shows the limit fired, and its message
    shows which one: the whole-download deadline, which starts before the request is sent and
    so always fires before httpx's per-read timeout of the same length.
    """
    limits = FetchLimits(timeout_s=0.5, allow_private_hosts=("127.0.0.1",))
    error = await _fails(f"{server}{path}", limits, client, temp_dir=tmp_path)
    assert isinstance(error, FetchUnavailable)
    assert f"to download within {limits.timeout_s} s, it took longer" in str(error)
    assert isinstance(error.__cause__, TimeoutError)
    assert _leftovers(tmp_path) == []


async def test_refused_connection_is_unavailable(
    limits: FetchLimits, client: httpx.AsyncClient
) -> None:
    """Nothing listening on the port is a transient fetch_unavailable."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = await _fails(f"http://127.0.0.1:{port}/a.wav", limits, client)
    assert isinstance(error, FetchUnavailable)


async def test_redirect_to_allowed_target_is_followed(
    server: str, limits: FetchLimits, client: httpx.AsyncClient
) -> None:
    """A redirect to an allowed host is followed and the body fetched from there."""
    reference = f"{server}/redirect?to=/audio.wav%3Fchunks%3D1"
    with await fetch(reference, limits, client) as audio:
        assert audio.size_bytes == len(CHUNK)


@pytest.mark.parametrize(
    ("target", "code"),
    [
        pytest.param(
            "http://169.254.169.254/latest/meta-data/", "reference_forbidden", id="metadata"
        ),
        pytest.param("http://127.0.0.2/a.wav", "reference_forbidden", id="other-loopback"),
        pytest.param("file:///etc/passwd", "unsupported_reference", id="file"),
    ],
)
async def test_redirect_to_forbidden_target_is_refused(
    server: str, limits: FetchLimits, client: httpx.AsyncClient, target: str, code: str
) -> None:
    """Each redirect hop is re-checked, so an allowed server cannot bounce us elsewhere."""
    error = await _fails(f"{server}/redirect?to={target}", limits, client)
    assert isinstance(error, ReferenceRejected)
    assert error.code == code


async def test_redirect_loop_is_cut(
    server: str, limits: FetchLimits, client: httpx.AsyncClient
) -> None:
    """More than max_redirects hops is unsupported_reference."""
    error = await _fails(f"{server}/loop", limits, client)
    assert isinstance(error, ReferenceRejected)
    assert error.code == "unsupported_reference"


async def test_client_credentials_are_not_sent(server: str, limits: FetchLimits) -> None:
    """Authorization and cookies set on the client never reach the audio host."""
    headers = {"Authorization": "Bearer sk-secret", "Cookie": "session=1", "X-Trace": "t"}
    async with httpx.AsyncClient(headers=headers) as client:
        with await fetch(f"{server}/headers", limits, client) as audio:
            sent = audio.path.read_text()
    assert "sk-secret" not in sent
    assert "session=1" not in sent
    assert '"x-trace":"t"' in sent


async def test_error_messages_redact_signed_urls(
    server: str, limits: FetchLimits, client: httpx.AsyncClient
) -> None:
    """Error messages show the URL without its signature."""
    error = await _fails(f"{server}/status/403?X-Amz-Signature=topsecret", limits, client)
    assert "topsecret" not in str(error)
    assert f"{server}/status/403?<redacted>" in str(error)
