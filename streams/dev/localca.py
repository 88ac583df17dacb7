"""A throwaway certificate authority for the secured local Kafka (streams/dev/localkafka.py).

Managed clusters present certificates of a real CA; the local broker gets its own, made fresh
at each start, so TLS is exercised end to end (hostname check included) without a keytool or
openssl step. Everything is PEM, which both Kafka (``ssl.keystore.type=PEM``) and Python's
``ssl`` module read directly. Keys are unencrypted: the files live in the broker's run
directory, readable by the owner only, and die with it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateFiles", "LocalCA"]

# Long enough for a dev session or a test run; a stale run dir gets new ones at its next start.
_VALID_FOR = datetime.timedelta(days=30)


@dataclass(frozen=True)
class CertificateFiles:
    """A PEM certificate and its key; ``combined`` holds both, as Kafka's PEM keystore reads."""

    cert: Path
    key: Path
    combined: Path


def _write(path: Path, data: bytes) -> None:
    # Created owner-only from the start: a key must never be readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8: the only private key encoding Kafka's PEM keystore accepts.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LocalCA:
    """A self-signed CA in ``directory`` that issues the broker's and the clients' certificates."""

    def __init__(self, directory: Path, name: str = "streams local Kafka CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # P-256 keys: fast to make (RSA-2048 takes ~0.1 s each on a small machine), and every
        # TLS stack Kafka clients use accepts them.
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        _write(self.ca_file, self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = False) -> CertificateFiles:
        """Issue a certificate with common name ``name``; ``server`` adds localhost/127.0.0.1.

        A client certificate's common name is the Kafka principal of an mTLS connection (the
        broker maps ``CN=name`` to ``User:name``), so ACLs are the same for SASL and mTLS.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                # The broker's own inter-broker connection is a TLS client too.
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    if server
                    else [usage]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if server:
            # Clients check the host name they dialled against these (Python always does).
            names: list[x509.GeneralName] = [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        files = CertificateFiles(
            cert=self.directory / f"{name}.crt.pem",
            key=self.directory / f"{name}.key.pem",
            combined=self.directory / f"{name}.pem",
        )
        _write(files.cert, cert_pem)
        _write(files.key, key_pem)
        _write(files.combined, key_pem + cert_pem)
        return files
