"""Just enough RESP to ask a starting server whether it is ready, with no client library."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["ReplyError", "probe"]

_PROBE_TIMEOUT_S = 0.5


class ReplyError(Exception):
    """Redis answered with an error reply (``-LOADING``, ``-NOAUTH``...)."""


def _encode(*args: str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _read_reply(stream: BinaryIO) -> bytes | int:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return b"" if size < 0 else stream.read(size + 2)[:-2]
    raise ConnectionError(f"unexpected reply {line!r}")


@contextmanager
def _connect(
    host: str, port: int, unix_socket: Path | None, tls: bool
) -> Iterator[socket.socket]:
    if unix_socket is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_PROBE_TIMEOUT_S)
        try:
            sock.connect(str(unix_socket))
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S)
    if tls:
        # Readiness only: any certificate will do, expired or for another name.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock)
    with sock:
        yield sock


def probe(
    host: str,
    port: int,
    *,
    password: str | None = None,
    unix_socket: Path | None = None,
    tls: bool = False,
) -> dict[str, str] | None:
    """PING a server; return its ``INFO server persistence`` fields once it answers.

    Returns None while the server does not answer (refused, loading, no PONG).
    """
    try:
        with (
            _connect(host, port, unix_socket, tls) as sock,
            sock.makefile("rb") as stream,
        ):
            if password is not None:
                sock.sendall(_encode("AUTH", password))
                _read_reply(stream)
            sock.sendall(_encode("PING"))
            if _read_reply(stream) != b"PONG":
                return None
            sock.sendall(_encode("INFO", "server", "persistence"))
            info = _read_reply(stream)
    except (OSError, ReplyError):
        return None
    if not isinstance(info, bytes):
        return None
    fields = {}
    for line in info.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields
