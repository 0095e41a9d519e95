"""Test certificates made at test time with ``cryptography``.

Kept out of a ``conftest.py`` on purpose (mypy would see two ``conftest``
modules); pytest puts ``tests/security`` on ``sys.path`` for the tests here.

- :func:`make_pki`: a CA, and server certificates signed by it: a good one for
  127.0.0.1 and localhost, an expired one, one for another host name; plus a
  second CA that signed nothing the server shows.

A TLS-only server on one of them is the kit's ``RedisServer(dir, tls=TlsFiles(...))``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentstream.testing import HOST

__all__ = ["Pki", "ServerCert", "make_pki"]


@dataclass(frozen=True)
class ServerCert:
    """A server certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Everything :func:`make_pki` wrote."""

    ca: Path
    other_ca: Path
    good: ServerCert
    expired: ServerCert
    wrong_host: ServerCert


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentstream tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(
    directory: Path, stem: str, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = _name(f"agentstream test CA {stem}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
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
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write_cert(directory / f"{stem}.pem", cert)
    return cert, key


def _server(
    directory: Path,
    stem: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: list[x509.GeneralName],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> ServerCert:
    ca_cert, ca_key = ca
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"agentstream test server {stem}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server = ServerCert(directory / f"{stem}.pem", directory / f"{stem}.key")
    _write_cert(server.cert, cert)
    _write_key(server.key, key)
    return server


def make_pki(directory: Path) -> Pki:
    """Write a CA, a second CA, and three server certificates into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca = _ca(directory, "ca", now)
    _ca(directory, "other-ca", now)
    local: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(HOST)),
        x509.DNSName("localhost"),
    ]
    day = datetime.timedelta(days=1)
    good = _server(directory, "server", ca, local, now - day, now + 30 * day)
    expired = _server(
        directory, "expired", ca, local, now - 30 * day, now - datetime.timedelta(1)
    )
    wrong = _server(
        directory,
        "wrong-host",
        ca,
        [x509.DNSName("redis.example.invalid")],
        now - day,
        now + 30 * day,
    )
    return Pki(directory / "ca.pem", directory / "other-ca.pem", good, expired, wrong)
