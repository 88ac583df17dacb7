"""Resolve an audio reference (``https://``, ``http://`` or ``file://``) to a local file.

Downloads stream to a temporary file under a size cap and an overall deadline, never holding
the body in memory. Every hop of a redirect chain passes the SSRF guard of
:mod:`streams.netguard`; local files must lie under configured roots.

HTTP status mapping:

==========================  ======================  =================================
status                      error                   code
==========================  ======================  =================================
2xx                         (success)
301/302/303/307/308         followed, re-checked    ``unsupported_reference`` past
                                                    ``max_redirects``
404, 410                    AudioNotFound           ``audio_not_found``
401, 403                    ReferenceRejected       ``reference_forbidden`` (expired
                                                    or wrong signature: not retried)
408, 425, 429, 5xx          FetchUnavailable        ``fetch_unavailable`` (with
                                                    ``retry_after_s``)
any other                   ReferenceRejected       ``unsupported_reference``
==========================  ======================  =================================
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from urllib.parse import unquote, urlsplit

import httpx

from streams.errors import AudioNotFound, AudioTooLarge, FetchUnavailable, ReferenceRejected
from streams.netguard import GuardedTransport, HostPolicy, check_url, redact_url

__all__ = ["FetchLimits", "FetchedAudio", "fetch", "fetch_client", "redact_url"]

# The client's default headers (an ASR API key, say) must not reach whatever host an event
# names, nor the hosts it redirects to.
_CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie")
_TRANSIENT_STATUS = frozenset({408, 425, 429})
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


@dataclass(frozen=True)
class FetchLimits:
    """Caps and permissions of the fetch stage; times are in seconds.

    Usage::

        limits = FetchLimits(max_bytes=50 * 1024**2, file_roots=(Path("/srv/calls"),))
    """

    max_bytes: int = 200 * 1024 * 1024
    timeout_s: float = 120.0
    """Deadline of the whole download, redirects and DNS included."""
    connect_timeout_s: float = 10.0
    file_roots: tuple[Path, ...] = ()
    """``file://`` references must resolve (symlinks followed) under one of these."""
    allow_private_hosts: tuple[str, ...] = ()
    """Host names (exact) or CIDR networks reachable although not public."""
    max_redirects: int = 5
    host_policy: HostPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built once so that a malformed CIDR fails at startup, not on the first event.
        object.__setattr__(self, "host_policy", HostPolicy.from_entries(self.allow_private_hosts))


@dataclass(frozen=True)
class FetchedAudio:
    """A local audio file ready to decode; a downloaded one is deleted on exit.

    Usage::

        with await fetch(reference, limits, client) as audio:
            decoded = await decode(audio.path)
    """

    path: Path
    size_bytes: int
    source: str
    """The reference, redacted (see :func:`redact_url`)."""
    temporary: bool = False
    """True when ``path`` is our download, deleted by :meth:`close`."""

    def close(self) -> None:
        """Delete the file if it is a temporary download; a local reference is left alone."""
        if self.temporary:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FetchedAudio:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def fetch_client(limits: FetchLimits) -> httpx.AsyncClient:
    """Build the client :func:`fetch` should get: guarded at connect time, no proxy, no env."""
    return httpx.AsyncClient(
        transport=GuardedTransport(limits.host_policy),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(limits.timeout_s, connect=limits.connect_timeout_s),
    )


async def fetch(
    reference: str,
    limits: FetchLimits,
    client: httpx.AsyncClient,
    temp_dir: Path | None = None,
) -> FetchedAudio:
    """Make ``reference`` available as a local file within ``limits``.

    ``client`` should come from :func:`fetch_client`: with any other client the guard still
    checks each hop before its request, but a DNS answer that changes between that check and
    the connection (rebinding) would slip through. Credentials among the client's default
    headers are never sent.

    Raises:
        ReferenceRejected: ``unsupported_reference`` (another scheme, a malformed URL, too many
            redirects, an unexpected status) or ``reference_forbidden`` (a non-public host, a
            path outside the file roots, HTTP 401/403).
        AudioNotFound: no such file, not a regular file, or HTTP 404/410.
        AudioTooLarge: bigger than ``limits.max_bytes``, declared or counted.
        FetchUnavailable: deadline passed, connection failed or dropped, DNS failure,
            HTTP 408/425/429/5xx.
    """
    scheme = reference.partition(":")[0].lower() if ":" in reference else ""
    if scheme == "file":
        return await asyncio.to_thread(_open_local, reference, limits)
    if scheme in ("http", "https"):
        return await _download(reference, limits, client, temp_dir)
    raise ReferenceRejected(
        f"expected an http://, https:// or file:// reference, got {redact_url(reference)!r}",
        code="unsupported_reference",
    )


def _open_local(reference: str, limits: FetchLimits) -> FetchedAudio:
    source = redact_url(reference)
    parts = urlsplit(reference)
    raw = unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not raw.startswith("/") or "\0" in raw:
        raise ReferenceRejected(
            f"expected file:///absolute/path on this host, got {source!r}",
            code="unsupported_reference",
        )
    try:
        # resolve() follows symlinks and folds "..", so the root check sees the real target.
        real = Path(raw).resolve()
        roots = [Path(root).resolve() for root in limits.file_roots]
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python 3.11
        raise AudioNotFound(f"expected a resolvable path, got {source!r}: {exc}") from exc
    # Checked before existence, so that nothing is revealed about files outside the roots.
    if not any(real.is_relative_to(root) for root in roots):
        raise ReferenceRejected(
            f"expected a path under the configured file roots, got {source!r}",
            code="reference_forbidden",
        )
    try:
        info = real.stat()
    except PermissionError as exc:
        raise ReferenceRejected(
            f"expected a readable file, got {source!r}", code="reference_forbidden"
        ) from exc
    except OSError as exc:
        raise AudioNotFound(f"expected an existing file, got {source!r}") from exc
    # A directory, FIFO or device names no audio file; reading a FIFO could block forever.
    if not stat.S_ISREG(info.st_mode):
        raise AudioNotFound(f"expected a regular file, got {source!r}")
    if info.st_size > limits.max_bytes:
        raise AudioTooLarge(
            f"expected at most {limits.max_bytes} bytes, got {info.st_size} in {source!r}"
        )
    return FetchedAudio(path=real, size_bytes=info.st_size, source=source)


async def _download(
    reference: str, limits: FetchLimits, client: httpx.AsyncClient, temp_dir: Path | None
) -> FetchedAudio:
    source = redact_url(reference)
    try:
        async with asyncio.timeout(limits.timeout_s):
            return await _follow(reference, source, limits, client, temp_dir)
    except TimeoutError as exc:
        raise FetchUnavailable(
            f"expected {source!r} to download within {limits.timeout_s} s, it took longer"
        ) from exc


async def _follow(
    reference: str,
    source: str,
    limits: FetchLimits,
    client: httpx.AsyncClient,
    temp_dir: Path | None,
) -> FetchedAudio:
    timeout = httpx.Timeout(limits.timeout_s, connect=limits.connect_timeout_s)
    url: str | httpx.URL = reference
    for _ in range(limits.max_redirects + 1):
        # Redirects are followed here rather than by httpx so that every hop is checked.
        target = await check_url(url, limits.host_policy, timeout_s=limits.connect_timeout_s)
        request = client.build_request(
            # Audio is compressed already; identity also keeps decompression bombs out.
            "GET",
            target,
            headers={"Accept-Encoding": "identity"},
            timeout=timeout,
        )
        for name in _CREDENTIAL_HEADERS:
            request.headers.pop(name, None)
        try:
            response = await client.send(request, stream=True, follow_redirects=False, auth=None)
        except httpx.HTTPError as exc:
            raise FetchUnavailable(
                f"expected a response from {redact_url(target)!r}: {exc!r}"
            ) from exc
        try:
            if response.has_redirect_location:
                try:
                    url = target.join(response.headers["location"])
                except httpx.InvalidURL as exc:
                    raise ReferenceRejected(
                        f"expected a valid redirect from {redact_url(target)!r}",
                        code="unsupported_reference",
                    ) from exc
                continue
            _check_status(response, redact_url(target))
            return await _save_body(response, limits, temp_dir, source)
        finally:
            await response.aclose()
    raise ReferenceRejected(
        f"expected at most {limits.max_redirects} redirects, got more from {source!r}",
        code="unsupported_reference",
    )


def _check_status(response: httpx.Response, shown: str) -> None:
    status = response.status_code
    if response.is_success:
        return
    message = f"expected HTTP 200 from {shown!r}, got {status}"
    if status in (404, 410):
        raise AudioNotFound(message)
    if status in (401, 403):
        raise ReferenceRejected(message, code="reference_forbidden")
    if status in _TRANSIENT_STATUS or status >= 500:
        raise FetchUnavailable(message, retry_after_s=_retry_after_s(response))
    raise ReferenceRejected(message, code="unsupported_reference")


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _save_body(
    response: httpx.Response, limits: FetchLimits, temp_dir: Path | None, source: str
) -> FetchedAudio:
    declared = response.headers.get("content-length", "")
    # Content-Length counts encoded bytes, so it only bounds the file without an encoding.
    encoded = "content-encoding" in response.headers
    if declared.isdigit() and not encoded and int(declared) > limits.max_bytes:
        raise AudioTooLarge(
            f"expected at most {limits.max_bytes} bytes, got a declared {declared} from {source!r}"
        )
    # Keep the extension: PyAV needs it to recognise headerless formats (raw GSM, for one).
    suffix = PurePosixPath(unquote(response.url.path)).suffix
    fd, name = tempfile.mkstemp(
        prefix="fetch-", suffix=suffix if _SUFFIX.fullmatch(suffix) else "", dir=temp_dir
    )
    path = Path(name)
    size = 0
    try:
        # Synchronous writes: a chunk lands in the page cache in microseconds, far less than
        # a thread hop per chunk would cost.
        with os.fdopen(fd, "wb") as out:
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise AudioTooLarge(
                            f"expected at most {limits.max_bytes} bytes, got more from {source!r}"
                        )
                    out.write(chunk)
            except httpx.HTTPError as exc:
                raise FetchUnavailable(
                    f"expected the whole body of {source!r}, the download broke off after "
                    f"{size} bytes: {exc!r}"
                ) from exc
    except BaseException:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 (a local unlink, as fast as a write)
        raise
    return FetchedAudio(path=path, size_bytes=size, source=source, temporary=True)
