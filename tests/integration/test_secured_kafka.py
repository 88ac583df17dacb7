"""A Kafka that authenticates, encrypts and authorizes, like the managed ones, on the real stack.

One secured broker for the session (``secured_kafka``): SASL_SSL with PLAIN and SCRAM,
mTLS, no anonymous port, StandardAuthorizer. Each test's worker principal is granted exactly
``worker_acls`` (streams/kafka_acls.py) for its own topics and group, so a transcription that
completes proves the list is enough; refusals prove the broker and the worker mean it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import TopicAuthorizationFailedError

from streams.config import Settings
from streams.dev.localkafka import LocalKafka
from streams.kafka_acls import worker_acls
from streams.kafka_security import KafkaSecurity
from tests.audio import asset
from tests.fixtures.kafka import make_topics
from tests.fixtures.worker import Message, Stack, new_stack, validate

pytestmark = pytest.mark.integration

CALLS = (
    "en_speechbrain_harvard_birch_canoe.wav",
    "en_fasterwhisper_stereo_diarization_LR.wav",
    "de_picovoice_leopard_test_de.wav",
)
# Far above what a refusal takes (a process start and one connection), so a refusal that
# turned into waiting for the timeout shows.
CONNECT_TIMEOUT_S = 60
REFUSED_WITHIN_S = 20
_SECURITY_ENV = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
)


def _as(stack: Stack, bootstrap: str, security_env: dict[str, str]) -> dict[str, str]:
    """The stack's environment with another principal's Kafka settings (and only those)."""
    env = {k: v for k, v in stack.env.items() if k not in _SECURITY_ENV}
    return {**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, **security_env}


def _streams(
    env: dict[str, str], *args: str, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    # The parent's KAFKA_* settings must not leak in: each case names its own.
    base = {k: v for k, v in os.environ.items() if k not in _SECURITY_ENV}
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture
async def secured_stack(
    secured_kafka: LocalKafka,
    scripted_server: Any,
    unique_name: Callable[[str], str],
    tmp_path: Any,
) -> AsyncIterator[Stack]:
    """Topics made by the super user, the worker principal granted its ACLs and no more.

    The test's own clients act as ``admin``; workers log in as ``worker`` with SCRAM-SHA-512
    and a password file, unless a test says otherwise.
    """
    broker = secured_kafka
    admin = broker.security("admin")
    stack = new_stack(unique_name("s"), broker.bootstrap, scripted_server, tmp_path, security=admin)
    await make_topics(broker.bootstrap, stack.topic_names(), partitions=4, security=admin)
    settings = Settings(
        app_id=stack.app_id,
        topic_recordings=stack.recordings,
        topic_partial=stack.partial,
        topic_final=stack.final,
        topic_failed=stack.failed,
    )
    await asyncio.to_thread(broker.grant, worker_acls(settings, "User:worker"))
    worker = broker.security("worker", "SCRAM-SHA-512")
    stack.env.update(worker.env(password_file=broker.secrets_dir / "worker.password"))
    stack.env["STREAMS_KAFKA_CONNECT_TIMEOUT_S"] = str(CONNECT_TIMEOUT_S)
    scripted_server.reset()
    try:
        yield stack
    finally:
        for process in stack.workers:
            process.stop()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("login", ["SCRAM-SHA-512 password file", "mTLS client certificate"])
async def test_the_worker_transcribes_through_the_secured_broker_with_only_its_acls(
    secured_stack: Stack, secured_kafka: LocalKafka, login: str
) -> None:
    """Published and tailed by the admin with the CLI, transcribed by a worker that may only
    read recordings, write transcripts and use its own group and faust topics; the password
    appears in no output."""
    stack, broker = secured_stack, secured_kafka
    if login.startswith("mTLS"):
        # Same principal, no password: the certificate's CN=worker is User:worker.
        stack.env = _as(stack, broker.ssl_bootstrap, broker.mtls_security("worker").env())
    admin_env = _as(
        stack,
        broker.bootstrap,
        broker.security("admin", "PLAIN").env(password_file=broker.secrets_dir / "admin.password"),
    )
    worker = stack.start_worker()
    published = _streams(admin_env, "publish", *(str(asset(name)) for name in CALLS))
    assert published.returncode == 0, published.stderr
    ids = {line.split()[0] for line in published.stdout.splitlines() if line.strip()}
    assert len(ids) == len(CALLS)

    tail = await asyncio.to_thread(
        _streams,
        admin_env,
        *("tail", "--json", "--from-beginning", "--count", str(len(CALLS)), "--timeout", "120"),
        timeout_s=150,
    )
    assert tail.returncode == 0, f"{tail.stderr}\nworker log:\n{worker.log_tail()}"
    events = [orjson.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    finals = [e for e in events if e["type"] == "final"]
    assert not [e for e in events if e["type"] == "failed"], events
    assert collections.Counter(e["recording_id"] for e in finals) == dict.fromkeys(ids, 1)
    assert all(e["text"] for e in finals)
    for event in events:
        validate(Message("", None, event, 0, 0))

    worker.stop()
    log = worker.log_path.read_text()
    for user in ("worker", "admin"):
        secret = broker.password(user)
        for text in (log, published.stdout, published.stderr, tail.stdout, tail.stderr):
            assert secret not in text


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_every_sasl_mechanism_logs_in(
    secured_kafka: LocalKafka, unique_name: Callable[[str], str], mechanism: str
) -> None:
    """`streams topics` as admin with each mechanism, the password given inline: created."""
    broker = secured_kafka
    prefix = unique_name("m")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "STREAMS_APP_ID": f"{prefix}-worker",
        "STREAMS_TOPIC_RECORDINGS": f"{prefix}.recordings",
        "STREAMS_TOPIC_PARTIAL": f"{prefix}.partial",
        "STREAMS_TOPIC_FINAL": f"{prefix}.final",
        "STREAMS_TOPIC_FAILED": f"{prefix}.failed",
        **broker.security("admin", mechanism).env(),
    }
    done = _streams(env, "topics")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created") == 5, done.stdout


# (case, how the worker connects, what its one line of error must say)
REFUSALS: list[tuple[str, Callable[[LocalKafka], tuple[str, dict[str, str]]], str]] = [
    (
        "no credentials (PLAINTEXT)",
        lambda b: (b.bootstrap, {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}),
        "closed the connection before answering",
    ),
    (
        "wrong password",
        lambda b: (
            b.bootstrap,
            {**b.security("worker").env(), "KAFKA_SASL_PASSWORD": "not-the-password-42"},
        ),
        "refused the login of 'worker' (SCRAM-SHA-512)",
    ),
    (
        "TLS but no SASL login",
        lambda b: (b.bootstrap, {"KAFKA_SECURITY_PROTOCOL": "SSL", **_ca(b)}),
        "closed the connection before answering",
    ),
    (
        "SASL without TLS",
        lambda b: (
            b.bootstrap,
            {**b.security("worker").env(), "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", **_no_ca()},
        ),
        "closed the connection before answering",
    ),
    (
        "broker certificate not trusted",
        lambda b: (b.bootstrap, {**b.security("worker").env(), **_no_ca()}),
        "is not trusted",
    ),
    (
        "mTLS without a client certificate",
        lambda b: (b.ssl_bootstrap, {"KAFKA_SECURITY_PROTOCOL": "SSL", **_ca(b)}),
        "closed the connection before answering",
    ),
]


def _ca(broker: LocalKafka) -> dict[str, str]:
    return {"KAFKA_SSL_CAFILE": str(broker.tls_dir / "ca.pem")}


def _no_ca() -> dict[str, str]:
    # The system's CAs, which never signed the local broker's certificate.
    return {"KAFKA_SSL_CAFILE": ""}


@pytest.mark.parametrize(("case", "connect", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refused_worker_exits_at_start_with_one_line(
    secured_stack: Stack,
    secured_kafka: LocalKafka,
    case: str,
    connect: Callable[[LocalKafka], tuple[str, dict[str, str]]],
    reason: str,
) -> None:
    """No hang, no traceback loop: exit 1 within seconds, one line that says why."""
    bootstrap, security_env = connect(secured_kafka)
    env = _as(secured_stack, bootstrap, {k: v for k, v in security_env.items() if v})
    started = time.monotonic()
    done = _streams(env, "worker", timeout_s=CONNECT_TIMEOUT_S + 10)
    took = time.monotonic() - started
    output = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1, output
    assert len(output) == 1, output
    assert output[0].startswith("Error: "), output
    assert reason in output[0], output
    assert "not-the-password-42" not in output[0]
    # A refusal is not waited on: only "nothing answers" uses the connect timeout.
    assert took < REFUSED_WITHIN_S, f"{case}: {took:.1f} s"


async def test_a_principal_without_the_acl_cannot_read_the_transcripts(
    secured_stack: Stack, secured_kafka: LocalKafka
) -> None:
    """``outsider`` logs in but has no ACL; ``worker`` may write transcripts, not read them."""
    broker, stack = secured_kafka, secured_stack
    outsider: KafkaSecurity = broker.security("outsider", "SCRAM-SHA-256")
    consumer = AIOKafkaConsumer(
        stack.final,
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        **outsider.client_kwargs(),
    )
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.start()
    finally:
        await consumer.stop()

    done = await asyncio.to_thread(_streams, stack.env, "tail", "--json", "--timeout", "20")
    assert done.returncode == 1, done.stdout
    assert "not authorized to read" in done.stderr
    assert "'worker'" in done.stderr
    assert "Traceback" not in done.stderr
