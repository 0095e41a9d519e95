"""Test certificates made at test time with ``cryptography``, and a TLS redis-server.

Kept out of a ``conftest.py`` on purpose (mypy would see two ``conftest``
modules); pytest puts ``tests/security`` on ``sys.path`` for the tests here.

- :func:`make_pki`: a CA, and server certificates signed by it: a good one for
  127.0.0.1 and localhost, an expired one, one for another host name; plus a
  second CA that signed nothing the server shows.
- :class:`TlsRedisServer`: ``redis-server --port 0 --tls-port P`` with one of
  those certificates, started and stopped by pid.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from redis_server import HOST, free_port

__all__ = ["Pki", "ServerCert", "TlsRedisServer", "TlsUnavailable", "make_pki"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


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


class TlsUnavailable(RuntimeError):
    """This redis-server cannot serve TLS (built without it)."""


class TlsRedisServer:
    """``redis-server`` that listens with TLS only, on 127.0.0.1.

    Clients are not asked for certificates (``--tls-auth-clients no``). It only
    ever signals its own process, by pid.
    """

    def __init__(
        self,
        directory: Path,
        ca: Path,
        server: ServerCert,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._ca = ca
        self._server = server
        self._extra = extra_args
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``rediss://`` URL of the server (database 0)."""
        return f"rediss://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def start(self) -> None:
        """Spawn redis-server; return once its TLS port completes a handshake."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found on PATH")
        argv = [
            exe,
            "--bind", HOST,
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self._server.cert),
            "--tls-key-file", str(self._server.key),
            "--tls-ca-cert-file", str(self._ca),
            "--tls-auth-clients", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--protected-mode", "no",
            *self._extra,
        ]  # fmt: skip
        with (self._dir / "redis.stdout").open("ab") as stdio:
            self._proc = subprocess.Popen(
                argv,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self._log_tail()
                if "TLS" in tail and "Address already in use" not in tail:
                    raise TlsUnavailable(f"redis-server cannot serve TLS:\n{tail}")
                raise RuntimeError(
                    f"TLS redis-server did not start on port {self.port}:\n{tail}"
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        # The handshake does not verify: any certificate the server shows will
        # do, expired or for another name, as long as it speaks TLS and PONGs.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((HOST, self.port), timeout=0.5) as raw,
                context.wrap_socket(raw) as sock,
            ):
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL if it lingers) and wait for it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _log_tail(self) -> str:
        parts = []
        for name in ("redis.stdout", "redis.log"):
            path = self._dir / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-20:]
                parts.append("\n".join(lines))
        return "\n".join(parts)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
