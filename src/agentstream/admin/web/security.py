"""Who may use the console: bind rules, authentication, CSRF.

- Without credentials the console serves loopback only: :func:`check_bind`
  refuses any other address.
- A bearer token (``web.token_file``): API clients send ``Authorization:
  Bearer <token>``; a browser signs in once at ``/login`` and then carries a
  cookie holding an HMAC of the token under a per-process key (never the token).
- Basic auth (``web.basic_auth_file``, ``user:password`` lines): the browser's
  own prompt.
- CSRF: every POST must carry the ``csrf`` form field equal to the
  ``agentstream_csrf`` cookie (double submit; the cookie is ``SameSite=Strict``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from agentstream.config import WebSettings
from agentstream.errors import ConfigError

__all__ = [
    "AUTH_COOKIE",
    "CSRF_COOKIE",
    "Credentials",
    "check_bind",
    "load_credentials",
]

AUTH_COOKIE = "agentstream_auth"
CSRF_COOKIE = "agentstream_csrf"


def _read(path: Path, setting: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"web.{setting}: cannot read {path}: {reason}") from None


@dataclass(frozen=True)
class Credentials:
    """What a request must present; empty means loopback-only, no login."""

    token: str | None = None
    users: dict[str, str] = field(default_factory=dict)
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def required(self) -> bool:
        """Whether requests must authenticate."""
        return self.token is not None or bool(self.users)

    def session_value(self) -> str:
        """The sign-in cookie's value: an HMAC of the token, never the token."""
        assert self.token is not None
        return hmac.new(self.key, self.token.encode(), hashlib.sha256).hexdigest()

    def check_token(self, presented: str) -> bool:
        """Whether ``presented`` is the token (constant time)."""
        return self.token is not None and hmac.compare_digest(
            presented.encode(), self.token.encode()
        )

    def check_cookie(self, value: str | None) -> bool:
        """Whether a sign-in cookie is valid."""
        return (
            self.token is not None
            and value is not None
            and hmac.compare_digest(value, self.session_value())
        )

    def check_basic(self, header: str) -> str | None:
        """The user name of a valid ``Basic`` Authorization header, else None."""
        try:
            decoded = base64.b64decode(header, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        expected = self.users.get(user)
        if not sep or expected is None:
            return None
        return user if hmac.compare_digest(password, expected) else None


def load_credentials(web: WebSettings) -> Credentials:
    """Read ``web.token_file`` and ``web.basic_auth_file``.

    Raises:
        ConfigError: a file cannot be read, is empty, or has a bad line.
    """
    token = None
    if web.token_file is not None:
        token = _read(web.token_file, "token_file").strip()
        if len(token) < 16:
            raise ConfigError(
                f"web.token_file: the token in {web.token_file} is shorter than "
                "16 characters"
            )
    users: dict[str, str] = {}
    if web.basic_auth_file is not None:
        text = _read(web.basic_auth_file, "basic_auth_file")
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, password = line.strip().partition(":")
            if not sep or not user or not password:
                raise ConfigError(
                    f"web.basic_auth_file: line {number} of {web.basic_auth_file} "
                    "is not user:password"
                )
            users[user] = password
        if not users:
            raise ConfigError(
                f"web.basic_auth_file: {web.basic_auth_file} names no user"
            )
    return Credentials(token, users)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0]).is_loopback for info in infos
    )


def check_bind(host: str, credentials: Credentials) -> None:
    """Refuse to serve beyond loopback without credentials.

    Raises:
        ConfigError: ``host`` is not a loopback address and neither
            ``web.token_file`` nor ``web.basic_auth_file`` is set.
    """
    if not credentials.required and not _is_loopback(host):
        raise ConfigError(
            f"web.host: refusing to serve on {host} without authentication; set "
            "web.token_file or web.basic_auth_file, or bind 127.0.0.1"
        )


def new_csrf_token() -> str:
    """A fresh CSRF token for the cookie and the forms."""
    return secrets.token_urlsafe(32)
