"""Kafka security settings: combinations checked at start, one mapping for faust and aiokafka,
secrets kept out of every text, and the worker's least-privilege ACLs."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from streams.cli import main
from streams.config import Settings
from streams.dev.localca import LocalCA
from streams.kafka_acls import Operation, PatternType, ResourceType, worker_acls
from streams.kafka_security import KafkaSecurity

SECRET = "s3cret-Pa55word-never-shown"  # noqa: S105  (a test value to look for)
_ENV_NAMES = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"STREAMS_{name}", raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    ca = LocalCA(tmp_path_factory.mktemp("pki"))
    ca.issue("worker")
    return ca


def _sasl(**changes: object) -> dict[str, object]:
    values: dict[str, object] = {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_username": "worker",
        "kafka_sasl_password": SECRET,
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_sasl_username": "worker"}, "KAFKA_SASL_USERNAME set but KAFKA_SECURITY_PROTOCOL"),
        (
            {"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "PLAIN"},
            "KAFKA_SASL_MECHANISM set but KAFKA_SECURITY_PROTOCOL is SSL",
        ),
        (_sasl(kafka_sasl_username=None), "needs KAFKA_SASL_USERNAME"),
        (_sasl(kafka_sasl_password=None), "needs KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE"),
        (_sasl(kafka_sasl_password=""), "needs KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE"),
        (_sasl(kafka_sasl_mechanism="GSSAPI"), "kafka_sasl_mechanism"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ],
)
def test_wrong_combinations_stop_the_start_naming_the_variables(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        Settings(**values)
    assert SECRET not in str(raised.value.errors(include_input=False))


def test_tls_files_need_a_tls_protocol_and_a_key_needs_its_certificate(pki: LocalCA) -> None:
    key = pki.directory / "worker.key.pem"
    with pytest.raises(ValueError, match="KAFKA_SSL_CAFILE set but KAFKA_SECURITY_PROTOCOL"):
        Settings(kafka_ssl_cafile=pki.ca_file)
    with pytest.raises(ValueError, match="KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_keyfile=key)


def test_files_that_do_not_load_are_refused_at_start(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ValueError, match="the TLS files do not load"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=garbage)
    with pytest.raises(ValueError, match="Path does not point to a file"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "missing.pem")


def test_password_and_password_file_are_exclusive_and_the_file_is_stripped(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    with pytest.raises(ValueError, match="not both"):
        Settings(**_sasl(kafka_sasl_password_file=secret_file))
    settings = Settings(**_sasl(kafka_sasl_password=None, kafka_sasl_password_file=secret_file))
    assert settings.kafka_security.client_kwargs()["sasl_plain_password"] == SECRET


def test_the_names_kafka_users_know_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, pki: LocalCA
) -> None:
    """No STREAMS_ prefix; protocol and mechanism in either case; PLAIN when unset."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "worker")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(pki.ca_file))
    security = Settings().kafka_security
    assert (security.protocol, security.mechanism, security.username) == (
        "SASL_SSL",
        "PLAIN",
        "worker",
    )
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-512")
    assert Settings().kafka_security.mechanism == "SCRAM-SHA-512"


def test_one_mapping_for_aiokafka_and_faust(pki: LocalCA) -> None:
    """The same protocol, login and TLS context reach the clients and the faust App."""
    assert KafkaSecurity().client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity().faust_credentials() is None

    scram = KafkaSecurity(
        protocol="SASL_SSL",
        mechanism="SCRAM-SHA-256",
        username="worker",
        password=SecretStr(SECRET),
        cafile=pki.ca_file,
    )
    kwargs = scram.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == ("SCRAM-SHA-256", "worker")
    assert kwargs["sasl_plain_password"] == SECRET
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    credentials = scram.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-256"

    plain_text = KafkaSecurity(
        protocol="SASL_PLAINTEXT", username="worker", password=SecretStr(SECRET)
    )
    assert "ssl_context" not in plain_text.client_kwargs()
    assert plain_text.faust_credentials().protocol.value == "SASL_PLAINTEXT"  # type: ignore[union-attr]

    mtls = KafkaSecurity(
        protocol="SSL",
        cafile=pki.ca_file,
        certfile=pki.directory / "worker.crt.pem",
        keyfile=pki.directory / "worker.key.pem",
    )
    assert mtls.client_kwargs().keys() == {"security_protocol", "ssl_context"}
    assert isinstance(mtls.faust_credentials(), faust.SSLCredentials)


def test_the_password_is_in_no_text(tmp_path: Path) -> None:
    """Not in reprs, summaries, the env handed to a child with a password file, nor in the
    CLI's report of invalid settings (pydantic's own text quotes every input)."""
    security = KafkaSecurity(
        protocol="SASL_SSL", username="worker", password=SecretStr(SECRET), cafile=None
    )
    settings = Settings(**_sasl())
    for text in (repr(security), security.describe(), repr(settings), str(settings)):
        assert SECRET not in text
    assert security.secrets == [SECRET]  # what the worker's log formatter redacts
    secret_file = tmp_path / "password"
    assert SECRET not in str(security.env(password_file=secret_file))

    env = {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "KAFKA_SASL_PASSWORD": SECRET}
    result = CliRunner().invoke(main, ["topics"], env=env)
    assert result.exit_code == 1
    assert (
        "KAFKA_SASL_PASSWORD[_FILE] set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in result.output
    )
    assert SECRET not in result.output


def test_the_worker_may_read_recordings_write_transcripts_and_use_its_own_group() -> None:
    """Least privilege: no READ on transcripts, no WRITE on recordings, nothing of others."""
    settings = Settings(app_id="acme-transcriber", topic_recordings="calls")
    granted = {
        (b.resource, b.name, b.pattern, b.operation)
        for b in worker_acls(settings, "User:worker")
        if b.principal == "User:worker"
    }
    topic, group, literal = ResourceType.TOPIC, ResourceType.GROUP, PatternType.LITERAL
    assert (topic, "calls", literal, Operation.READ) in granted
    assert (topic, "calls", literal, Operation.WRITE) not in granted
    for name in ("transcripts.partial", "transcripts.final", "transcripts.failed"):
        assert (topic, name, literal, Operation.WRITE) in granted
        assert (topic, name, literal, Operation.READ) not in granted
    assert (topic, "acme-transcriber-", PatternType.PREFIXED, Operation.ALL) in granted
    assert (group, "acme-transcriber", literal, Operation.READ) in granted
    assert {g[0] for g in granted} == {topic, group}  # nothing on the cluster
    prefixed = {g[1] for g in granted if g[2] is PatternType.PREFIXED}
    assert prefixed == {"acme-transcriber-"}
