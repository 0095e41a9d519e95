"""Processed-only retention: which commands a stream's mode and server call for.

Two modes (``Retention``):

- ``"length"``, the seed's: ``publish`` trims the stream to about ``max_len``
  entries (``XADD ... MAXLEN ~``), handled or not.
- ``"processed"``: an entry leaves the stream only once every consumer group
  of the stream acknowledged it. ``publish`` never trims. On a server with
  ``XACKDEL`` (Redis 8.2+) the acknowledgement deletes such entries
  atomically (``XACKDEL ... ACKED``); on every server the worker's trimmer
  removes what every group acknowledged (``XTRIM MINID``, see
  ``scripts.TRIM``) and enforces the hard cap.

``publish`` does not use Redis 8.2's ``XADD ... ACKED MAXLEN``: with ``~`` it
removed nothing in our tests (8.2.3), and with ``=`` it examines every entry
above the length on each call, milliseconds per publish while a group is
behind (7 to 25 ms at 200,000 entries), when Redis should matter most.

The server's abilities are detected from ``COMMAND INFO``, never from a
version string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from agentstream.config import Retention

__all__ = [
    "RETENTION_MODES",
    "Retention",
    "ServerFeatures",
    "ackdel_args",
    "acked_count",
    "eviction_line",
    "features_from_command_info",
    "is_unknown_command",
    "xadd_args",
]

#: ``"length"`` (the default, seed-compatible) or ``"processed"``.
RETENTION_MODES: tuple[str, ...] = get_args(Retention)


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """Stream abilities of the server, as ``COMMAND INFO`` reports them.

    Attributes:
        ackdel: ``XACKDEL`` exists, and with it the ``KEEPREF``/``DELREF``/
            ``ACKED`` options of ``XADD`` and ``XTRIM`` (Redis 8.2+; not
            Redis 7.x nor Valkey 8.1).
    """

    ackdel: bool


def features_from_command_info(reply: Any) -> ServerFeatures:
    """Read ``COMMAND INFO XACKDEL``'s reply: a nil (or empty) entry when unknown."""
    if isinstance(reply, dict):  # redis-py parses the reply into {name: info}
        known = any(bool(v) for v in reply.values())
    else:
        known = bool(reply) and any(bool(row) for row in reply)
    return ServerFeatures(ackdel=known)


def is_unknown_command(error: BaseException | str) -> bool:
    """Whether an error reply says the server does not know the command or option.

    A server that lost a feature under us (a failover to an older replica)
    answers so; callers then fall back to the commands every server knows.
    """
    text = str(error).lower()
    return "unknown command" in text or "syntax error" in text


def xadd_args(
    stream: str, fields: dict[Any, Any], retention: Retention, max_len: int
) -> list[Any]:
    """The ``XADD`` command (name first) for a publish in ``retention`` mode.

    ``"length"``: ``MAXLEN ~ max_len`` (the seed's). ``"processed"``: no
    trimming (the acknowledgements and the worker's trimmer remove entries).
    """
    args: list[Any] = ["XADD", stream]
    if retention == "length":
        args += ["MAXLEN", "~", max_len]
    args.append("*")
    for name, value in fields.items():
        args += [name, value]
    return args


def ackdel_args(stream: str, group: str, ids: Sequence[str | bytes]) -> list[Any]:
    """``XACKDEL stream group ACKED IDS n id...``: acknowledge for ``group``, and
    delete each entry that no other group still needs (read and acknowledged by
    all of them)."""
    return ["XACKDEL", stream, group, "ACKED", "IDS", len(ids), *ids]


def acked_count(reply: Sequence[Any]) -> int:
    """How many ids ``XACKDEL`` acknowledged: per id it answers 1 (acknowledged
    and deleted), 2 (acknowledged, kept for another group) or -1 (was not
    pending in this group), as ``XACK`` counts."""
    return sum(1 for r in reply if int(r) != -1)


def eviction_line(policy: str | None) -> str:
    """The line ``stats`` and ``--check`` print about ``maxmemory-policy``."""
    if policy is None:
        return "redis maxmemory-policy: unknown (this user may not run INFO)"
    if policy == "noeviction":
        return "redis maxmemory-policy: noeviction (streams are never evicted)"
    return (
        f"warning: redis maxmemory-policy is {policy}: under memory pressure Redis "
        "may evict streams, consumer groups and their pending entries, and the "
        "events in them are lost; set maxmemory-policy noeviction"
    )
