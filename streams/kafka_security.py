"""How Kafka clients authenticate and encrypt: the one place that turns settings into options.

Managed Kafka services all require it (Confluent Cloud and Aiven: SASL/PLAIN or mTLS; Amazon
MSK and Alibaba Cloud: SASL/SCRAM over TLS). Every part of the service that talks to Kafka
(the faust worker, the topic admin, ``publish``, ``tail``, the dev tools) builds its clients
from a :class:`KafkaSecurity`, so a protocol or a credential can never reach one of them and
miss another. The settings use the names Kafka's own clients use (``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_MECHANISM`` …, README "Configuration").
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import SecretStr

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = ["PLAINTEXT", "KafkaSecurity", "SaslMechanism", "SecurityProtocol"]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
_PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
_MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)


@dataclass(frozen=True)
class KafkaSecurity:
    """A client's security protocol, SASL login and TLS files, checked when it is made.

    Raises ``ValueError`` (naming the variables) for combinations Kafka would only reject
    later and less clearly: SASL settings without a SASL protocol, certificate files without
    TLS, a SASL protocol without a complete login, a key without its certificate, or PEM files
    that do not load.
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    mechanism: SaslMechanism | None = None
    username: str | None = None
    # Never in a repr, a log line or an event: SecretStr prints as '**********'.
    password: SecretStr | None = field(default=None, repr=False)
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(_PROTOCOLS)}, "
                f"not {self.protocol!r}"
            )
        if self.mechanism is not None and self.mechanism not in _MECHANISMS:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM must be one of {', '.join(_MECHANISMS)}, "
                f"not {self.mechanism!r}"
            )
        if self.sasl:
            if self.mechanism is None:
                # aiokafka's default too; Kafka's Java client defaults to GSSAPI, which the
                # managed services this is for do not offer.
                object.__setattr__(self, "mechanism", "PLAIN")
            if not self.username:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_USERNAME"
                )
            if self.password is None or not self.password.get_secret_value():
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_PASSWORD "
                    "or KAFKA_SASL_PASSWORD_FILE (a non-empty file)"
                )
        else:
            given = [
                name
                for name, value in (
                    ("KAFKA_SASL_MECHANISM", self.mechanism),
                    ("KAFKA_SASL_USERNAME", self.username),
                    ("KAFKA_SASL_PASSWORD[_FILE]", self.password),
                )
                if value is not None
            ]
            if given:
                # The usual slip: credentials set, protocol forgotten. Silently ignoring them
                # would connect unauthenticated and fail later with a vaguer error.
                raise ValueError(
                    f"{', '.join(given)} set but KAFKA_SECURITY_PROTOCOL is {self.protocol}: "
                    "SASL needs SASL_SSL (or SASL_PLAINTEXT)"
                )
        files = [
            name
            for name, value in (
                ("KAFKA_SSL_CAFILE", self.cafile),
                ("KAFKA_SSL_CERTFILE", self.certfile),
                ("KAFKA_SSL_KEYFILE", self.keyfile),
            )
            if value is not None
        ]
        if files and not self.tls:
            raise ValueError(
                f"{', '.join(files)} set but KAFKA_SECURITY_PROTOCOL is {self.protocol}: "
                "TLS needs SSL or SASL_SSL"
            )
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE (the client certificate)")
        if self.tls:
            self.ssl_context()  # a bad PEM file stops the start, not the first connection

    @classmethod
    def load(
        cls,
        *,
        protocol: SecurityProtocol = "PLAINTEXT",
        mechanism: SaslMechanism | None = None,
        username: str | None = None,
        password: SecretStr | None = None,
        password_file: Path | None = None,
        cafile: Path | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> KafkaSecurity:
        """The security of these values; ``password_file`` (a mounted secret) is read here.

        Plain values, not the settings object: streams/config.py calls this, so this module
        never imports the settings.
        """
        if password is not None and password_file is not None:
            raise ValueError("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")
        if password_file is not None:
            # A mounted secret often ends in a newline that is not part of the password.
            password = SecretStr(password_file.read_text().strip())
        return cls(
            protocol=protocol,
            mechanism=mechanism,
            username=username,
            password=password,
            cafile=cafile,
            certfile=certfile,
            keyfile=keyfile,
        )

    @property
    def sasl(self) -> bool:
        """Whether connections log in with SASL."""
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        """Whether connections are encrypted (and the broker's certificate checked)."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def secrets(self) -> list[str]:
        """Values log redaction must hide (logging_setup.py)."""
        return [self.password.get_secret_value()] if self.password is not None else []

    def describe(self) -> str:
        """A one-line summary for logs and errors, without the password."""
        text: str = self.protocol
        if self.sasl:
            text += f" {self.mechanism} as {self.username!r}"
        if self.certfile is not None:
            text += f" with client certificate {self.certfile}"
        return text

    def env(self, *, password_file: Path | None = None) -> dict[str, str]:
        """The environment variables that give a ``streams`` process this security.

        With ``password_file`` the password is referred to (KAFKA_SASL_PASSWORD_FILE), not
        copied into the environment.
        """
        env: dict[str, str] = {"KAFKA_SECURITY_PROTOCOL": self.protocol}
        if self.sasl:
            assert self.mechanism is not None
            assert self.username is not None
            env["KAFKA_SASL_MECHANISM"] = self.mechanism
            env["KAFKA_SASL_USERNAME"] = self.username
            if password_file is not None:
                env["KAFKA_SASL_PASSWORD_FILE"] = str(password_file)
            elif self.password is not None:
                env["KAFKA_SASL_PASSWORD"] = self.password.get_secret_value()
        for name, path in (
            ("KAFKA_SSL_CAFILE", self.cafile),
            ("KAFKA_SSL_CERTFILE", self.certfile),
            ("KAFKA_SSL_KEYFILE", self.keyfile),
        ):
            if path is not None:
                env[name] = str(path)
        return env

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context that checks the broker's certificate and host name, or None.

        Raises:
            ValueError: a CA, certificate or key file does not load.
        """
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile
            )
            return context
        except (ssl.SSLError, OSError) as exc:
            files = ", ".join(
                f"{name}={path}"
                for name, path in (
                    ("KAFKA_SSL_CAFILE", self.cafile),
                    ("KAFKA_SSL_CERTFILE", self.certfile),
                    ("KAFKA_SSL_KEYFILE", self.keyfile),
                )
                if path is not None
            )
            raise ValueError(f"the TLS files do not load ({files}): {exc}") from None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            assert self.password is not None
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password.get_secret_value()
        return kwargs

    def faust_credentials(self) -> CredentialsT | None:
        """faust's ``broker_credentials`` for the App: the same login and TLS as the clients."""
        import faust

        if self.sasl:
            assert self.password is not None
            return faust.SASLCredentials(
                username=self.username,
                password=self.password.get_secret_value(),
                ssl_context=self.ssl_context(),  # None: SASL_PLAINTEXT, else SASL_SSL
                mechanism=self.mechanism,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


PLAINTEXT = KafkaSecurity()
"""No login, no TLS: the local development broker's default."""
