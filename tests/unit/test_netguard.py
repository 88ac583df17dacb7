"""Tests of the SSRF guard: address classes, the allow-list, URL checks and the transport."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import httpx
import pytest

from streams.errors import FetchUnavailable, ReferenceRejected
from streams.netguard import (
    GuardedTransport,
    HostPolicy,
    check_url,
    is_public_address,
    redact_url,
)

NON_PUBLIC = [
    pytest.param("127.0.0.1", id="loopback"),
    pytest.param("10.1.2.3", id="10/8"),
    pytest.param("172.16.0.1", id="172.16/12"),
    pytest.param("192.168.1.1", id="192.168/16"),
    pytest.param("100.64.0.1", id="carrier-nat"),
    pytest.param("169.254.169.254", id="metadata"),
    pytest.param("0.0.0.0", id="unspecified"),  # noqa: S104 (a target to refuse, not a bind)
    pytest.param("224.0.0.1", id="multicast"),
    pytest.param("255.255.255.255", id="broadcast"),
    pytest.param("::1", id="ipv6-loopback"),
    pytest.param("::", id="ipv6-unspecified"),
    pytest.param("fe80::1", id="ipv6-link-local"),
    pytest.param("fd00::1", id="ipv6-unique-local"),
    pytest.param("ff02::1", id="ipv6-multicast"),
    pytest.param("::ffff:127.0.0.1", id="ipv4-mapped-loopback"),
    pytest.param("::ffff:169.254.169.254", id="ipv4-mapped-metadata"),
    pytest.param("2002:7f00:1::", id="6to4-loopback"),
    pytest.param("2002:a00:1::", id="6to4-private"),
    pytest.param("64:ff9b::a9fe:a9fe", id="nat64-metadata"),
]


class _TinyServer:
    """An HTTP/1.1 server on 127.0.0.1 that answers every request with 200 "ok"."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()


@pytest.fixture
async def tiny_server() -> AsyncIterator[_TinyServer]:
    state = _TinyServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_addresses_are_not_public(address: str) -> None:
    """Loopback, private, link-local, multicast, reserved and their IPv6 wrappings are refused."""
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("8.8.8.8", id="ipv4"),
        pytest.param("2606:4700:4700::1111", id="ipv6"),
        pytest.param("::ffff:8.8.8.8", id="ipv4-mapped"),
        pytest.param("64:ff9b::808:808", id="nat64"),
    ],
)
def test_public_addresses_are_public(address: str) -> None:
    """Global unicast addresses, wrapped or not, pass."""
    assert is_public_address(ipaddress.ip_address(address))


def test_policy_splits_names_addresses_and_networks() -> None:
    """Entries become exact host names or networks; a bare address is a one-address network."""
    policy = HostPolicy.from_entries(["MinIO.internal.", "10.20.0.0/16", "127.0.0.1", "[::1]"])
    assert policy.hostnames == frozenset({"minio.internal"})
    assert [str(n) for n in policy.networks] == ["10.20.0.0/16", "127.0.0.1/32", "::1/128"]


def test_policy_rejects_malformed_network() -> None:
    """A malformed CIDR fails loudly instead of becoming a host name."""
    with pytest.raises(ValueError, match=r"expected a CIDR network, got '10\.0\.0\.0/33'"):
        HostPolicy.from_entries(["10.0.0.0/33"])


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        pytest.param("10.20.3.4", True, id="inside-network"),
        pytest.param("10.21.0.1", False, id="outside-network"),
        pytest.param("::ffff:10.20.3.4", True, id="mapped-inside-network"),
        pytest.param("8.8.8.8", True, id="public"),
    ],
)
def test_policy_allows_addresses_in_its_networks(address: str, allowed: bool) -> None:
    """An allow-listed network admits its addresses, also in IPv4-mapped form."""
    policy = HostPolicy.from_entries(["10.20.0.0/16"])
    assert policy.allows_address(ipaddress.ip_address(address)) is allowed


@pytest.mark.parametrize("host", NON_PUBLIC)
async def test_check_url_refuses_non_public_hosts(host: str) -> None:
    """A URL whose host is a non-public address literal is refused as reference_forbidden."""
    literal = f"[{host}]" if ":" in host else host
    with pytest.raises(ReferenceRejected) as info:
        await check_url(f"http://{literal}/a.wav", HostPolicy())
    assert info.value.code == "reference_forbidden"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://localhost/a.wav", id="localhost"),
        pytest.param("http://0x7f000001/a.wav", id="hex-loopback"),
        pytest.param("http://2130706433/a.wav", id="decimal-loopback"),
        pytest.param("http://127.1/a.wav", id="short-loopback"),
    ],
)
async def test_check_url_resolves_names_before_judging(url: str) -> None:
    """Names and odd numeric forms are judged by the addresses they resolve to."""
    with pytest.raises(ReferenceRejected) as info:
        await check_url(url, HostPolicy())
    assert info.value.code == "reference_forbidden"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://example.com/a.wav", id="ftp"),
        pytest.param("file:///etc/passwd", id="file"),
        pytest.param("gopher://example.com/", id="gopher"),
        pytest.param("http:///a.wav", id="no-host"),
        pytest.param("http://[::1/a.wav", id="malformed"),
    ],
)
async def test_check_url_refuses_other_schemes(url: str) -> None:
    """Only http(s) URLs with a host are accepted; the rest is unsupported_reference."""
    with pytest.raises(ReferenceRejected) as info:
        await check_url(url, HostPolicy())
    assert info.value.code == "unsupported_reference"


@pytest.mark.parametrize(
    "entries",
    [pytest.param(["localhost"], id="by-name"), pytest.param(["127.0.0.0/8"], id="by-network")],
)
async def test_check_url_admits_allow_listed_hosts(entries: list[str]) -> None:
    """An allow-listed name or network lets a loopback URL through."""
    url = await check_url("http://localhost:8080/a.wav", HostPolicy.from_entries(entries))
    assert url.host == "localhost"


async def test_check_url_reports_unresolvable_names_as_transient() -> None:
    """A name that does not resolve is FetchUnavailable, since DNS failures are often brief."""
    with pytest.raises(FetchUnavailable):
        await check_url("http://no-such-host.invalid/a.wav", HostPolicy(), timeout_s=5)


async def test_transport_refuses_loopback_at_connect_time(tiny_server: _TinyServer) -> None:
    """GuardedTransport refuses a non-allow-listed address without sending a byte."""
    async with httpx.AsyncClient(transport=GuardedTransport(HostPolicy())) as client:
        with pytest.raises(ReferenceRejected) as info:
            await client.get(f"http://127.0.0.1:{tiny_server.port}/")
    assert info.value.code == "reference_forbidden"
    assert tiny_server.requests == 0


@pytest.mark.parametrize(
    ("entries", "host"),
    [
        pytest.param(["127.0.0.1"], "127.0.0.1", id="by-address"),
        pytest.param(["localhost"], "localhost", id="by-name"),
    ],
)
async def test_transport_connects_to_allow_listed_hosts(
    tiny_server: _TinyServer, entries: list[str], host: str
) -> None:
    """GuardedTransport reaches an allow-listed loopback server."""
    transport = GuardedTransport(HostPolicy.from_entries(entries))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"http://{host}:{tiny_server.port}/")
    assert (response.status_code, response.text) == (200, "ok")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            "https://b.s3.amazonaws.com/k.wav?X-Amz-Signature=abc&X-Amz-Credential=x",
            "https://b.s3.amazonaws.com/k.wav?<redacted>",
            id="aws-signature",
        ),
        pytest.param(
            "https://a.blob.core.windows.net/c/k.wav?sv=1&sig=abc",
            "https://a.blob.core.windows.net/c/k.wav?<redacted>",
            id="azure-sas",
        ),
        pytest.param("https://user:secret@host/k.wav", "https://host/k.wav", id="userinfo"),
        pytest.param(
            "https://host/k.wav#token=abc", "https://host/k.wav#<redacted>", id="fragment"
        ),
        pytest.param("https://host/k.wav", "https://host/k.wav", id="plain"),
        pytest.param("http://[::1/a", "<unparseable url>", id="unparseable"),
    ],
)
def test_redact_url_hides_secrets(url: str, shown: str) -> None:
    """Signatures, tokens and passwords never survive redaction."""
    assert redact_url(url) == shown


def test_redact_url_truncates_long_values() -> None:
    """A data: URI is cut short instead of pasting megabytes into a message."""
    assert len(redact_url("data:audio/flac;base64," + "A" * 10_000)) == 200
