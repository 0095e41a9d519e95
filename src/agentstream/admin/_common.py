"""What the admin commands share: errors, output, formatting, the connection."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Collection, Sequence
from typing import Any

from agentstream.config import Settings
from agentstream.errors import AgentStreamError
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.core import RawFields
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings

# Short: an operator command should fail fast, and tail blocks for 1 s at most.
SOCKET_TIMEOUT_S = 10.0


class UsageError(AgentStreamError):
    """The arguments parsed but make no sense (bad JSON, missing --yes); exit 2."""


class CommandFailed(AgentStreamError):
    """The command could not do what was asked (unknown id, ...); exit 1."""


def no_group(ops: AdminOps) -> CommandFailed:
    """The failure of an operation on a stream or group that does not exist."""
    return CommandFailed(
        f"stream {ops.stream!r} or its consumer group {ops.group!r} does not exist"
    )


class Context:
    """The loaded settings and a connection pool opened on first use.

    A command needs few connections; the web console, serving pages at once,
    passes ``redis.max_connections``.
    """

    def __init__(self, settings: Settings, max_connections: int = 4) -> None:
        self.settings = settings
        self._max_connections = max_connections
        self._pool: RedisConnectionPool | None = None

    def transport(self, stream: str, group: str = "agents") -> AdminOps:
        """A transport on ``stream`` that creates nothing in Redis."""
        if self._pool is None:
            # A bytes pool: entries that are not UTF-8 are shown, not fatal.
            self._pool = pool_from_settings(
                self.settings.redis,
                socket_timeout_s=SOCKET_TIMEOUT_S,
                max_connections=self._max_connections,
            )
        return AdminOps.attach(stream, consumer_group=group, pool=self._pool)

    async def aclose(self) -> None:
        """Close the pool, if one was opened."""
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


def confirm(question: str | None, yes: bool, what: str) -> None:
    """Ask ``question`` on a terminal unless ``yes``; off one, demand ``--yes``.

    With ``question=None`` only the terminal check is made.

    Raises:
        UsageError: stdin is not a terminal and ``yes`` is False.
        CommandFailed: the operator declined.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            f"{what}: add --yes to confirm (stdin is not a terminal, so it cannot ask)"
        )
    if question is None:
        return
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandFailed("nothing changed")


def out(line: str = "") -> None:
    """Write one line to stdout."""
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    """Write one line to stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def text(value: bytes | str | None, default: str = "") -> str:
    """Decode for display; bytes that are not UTF-8 are replaced, not fatal."""
    if value is None:
        return default
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def field(fields: RawFields, name: str, default: str = "") -> str:
    """One field of a raw entry, decoded for display."""
    return text(fields.get(name.encode()), default)


def one_line(value: str) -> str:
    """Keep a value on one line: one with line breaks is shown JSON-escaped."""
    if "\n" in value or "\r" in value:
        return json.dumps(value, ensure_ascii=False)
    return value


def plural(count: int, noun: str) -> str:
    """``1 dead letter``, ``2 dead letters``, ``0 entries``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"


def duration(ms: int) -> str:
    """A short human duration: ``250ms``, ``3.2s``, ``4m05s``, ``2h10m``, ``3d04h``."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    s = ms // 1000
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()
) -> list[str]:
    """Align ``rows`` under ``headers``; columns in ``right`` are right-aligned."""
    widths = [
        max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def reject_constant(name: str) -> Any:
    """``json.loads(parse_constant=...)``: NaN and infinities are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


def json_object(source: str, what: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line.

    Raises:
        UsageError: it is not valid JSON, or not an object.
    """
    try:
        value = json.loads(source, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


# -- argument types (argparse ``type=``) -----------------------------------------

_ID_RE = re.compile(r"^\d+-\d+$")
_BOUND_RE = re.compile(r"^(\d+(-\d+)?|[-+])$")


def entry_id_arg(value: str) -> str:
    if not _ID_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a stream id like 1-0")
    return value


def bound_arg(value: str) -> str:
    if not _BOUND_RE.match(value):
        msg = f"{value!r} is not a stream id (1700000000000-0, 1700000000000, - or +)"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


def is_entry_id(value: str) -> bool:
    """Whether ``value`` is a full stream entry id (``1700000000000-0``)."""
    return bool(_ID_RE.match(value))


def non_negative_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return number


def group_id_arg(value: str) -> str:
    """An id XGROUP SETID takes: a stream id, ``0`` or ``$``."""
    if value in ("0", "$") or _ID_RE.match(value):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a stream id like 1-0, 0 or $")
