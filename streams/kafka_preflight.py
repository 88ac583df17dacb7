"""Reach Kafka once before anything else, and say in one line why not.

Left to themselves, aiokafka and faust turn every refusal into "Unable to bootstrap from
[...]" after logging the cause at ERROR, and a faust worker then retries in a loop of stack
traces. A wrong password, an untrusted certificate or the wrong security protocol never fix
themselves, so :func:`check_kafka` opens one connection the way the real clients will (same
protocol, TLS context and SASL login), sends a metadata request, and turns the outcome into
:class:`KafkaUnavailable` with a reason a person can act on. Only "nothing answers yet" is
retried, until the connect timeout: a broker that starts beside the worker is waited for.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from streams.kafka_security import KafkaSecurity

__all__ = ["KafkaUnavailable", "check_kafka"]

# A listener that speaks another security protocol drops the connection at once; a broker
# that is only restarting does so rarely twice in a row.
_CLOSED_TRIES = 3


class KafkaUnavailable(Exception):
    """Kafka cannot be used with these settings; ``str()`` is one line saying why."""


class _Permanent(Exception):
    pass


def _parse(bootstrap_servers: str) -> list[tuple[str, int]]:
    hosts = []
    for entry in bootstrap_servers.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not host or not port.isdigit():
            raise KafkaUnavailable(
                f"KAFKA_BOOTSTRAP_SERVERS entry {entry.strip()!r} is not host:port"
            )
        hosts.append((host.strip("[]"), int(port)))
    return hosts


async def _metadata(host: str, port: int, security: KafkaSecurity, timeout_s: float) -> None:
    where = f"{host}:{port}"
    try:
        conn = await create_conn(
            host,
            port,
            client_id="streams-preflight",
            request_timeout_ms=max(1, int(timeout_s * 1000)),
            **security.client_kwargs(),
        )
    except SaslAuthenticationFailed as exc:
        raise _Permanent(
            f"Kafka at {where} refused the login of {security.username!r} "
            f"({security.mechanism}): {exc.args[0] if exc.args else exc}; "
            "check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
        ) from None
    except UnsupportedSaslMechanismError as exc:
        raise _Permanent(f"Kafka at {where}: {exc}; set KAFKA_SASL_MECHANISM") from None
    except ssl.SSLCertVerificationError as exc:
        raise _Permanent(
            f"the TLS certificate of Kafka at {where} is not trusted ({exc.verify_message}); "
            "set KAFKA_SSL_CAFILE to the CA that signed it"
        ) from None
    except ssl.SSLError as exc:
        raise _Permanent(
            f"TLS with Kafka at {where} failed ({exc.reason or exc}): is it a TLS listener, "
            f"and does KAFKA_SECURITY_PROTOCOL={security.protocol} match it?"
        ) from None
    try:
        await conn.send(MetadataRequest([]))
    finally:
        conn.close()


async def check_kafka(bootstrap_servers: str, security: KafkaSecurity, *, timeout_s: float) -> None:
    """Return once a broker of ``bootstrap_servers`` answered a metadata request.

    Raises:
        KafkaUnavailable: a refusal (credentials, certificate, protocol) at once; nothing
            answering after ``timeout_s``.
    """
    hosts = _parse(bootstrap_servers)
    deadline = time.monotonic() + timeout_s
    closed = 0
    reason = "no attempt"
    while True:
        for host, port in hosts:
            remaining = deadline - time.monotonic()
            try:
                await _metadata(host, port, security, max(remaining, 1.0))
                return
            except _Permanent as exc:
                raise KafkaUnavailable(str(exc)) from None
            except KafkaConnectionError:
                closed += 1
                reason = f"{host}:{port} closed the connection"
                if closed >= _CLOSED_TRIES:
                    raise KafkaUnavailable(
                        f"Kafka at {host}:{port} closed the connection before answering, as a "
                        "listener does when the client speaks another security protocol: this "
                        f"client uses {security.describe()}; check KAFKA_SECURITY_PROTOCOL (and "
                        "KAFKA_SSL_CERTFILE if the listener wants a client certificate)"
                    ) from None
            except (OSError, TimeoutError, KafkaError) as exc:
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
                reason = f"{host}:{port}: {text}"
        if time.monotonic() >= deadline:
            raise KafkaUnavailable(
                f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:g} s "
                f"({security.describe()}; last: {reason})"
            )
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
