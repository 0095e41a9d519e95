"""Whether the ACL user may run the commands a configuration needs, found
without changing anything.

``ACL DRYRUN`` would answer directly, but it needs an administrator (``acl|dryrun``
is in ``@admin``), and ``ACL GETUSER`` too. An unprivileged user can ask this way
instead: the commands that take a key run inside a read-only Lua script
(``EVALSHA_RO``, ``transport.scripts.PERMISSIONS``) on the keys they will use. Redis
checks the ACL before it refuses a write in such a script, so a write is refused
either by the ACL or as a write, and never runs. The commands a script may not
run are run at top level in a form that changes nothing (``EVALSHA`` of an
unknown script, ``WAIT 0 0``...). ``SELECT`` is checked by connecting: redis-py
selects a database other than 0 as it connects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from agentstream import errors
from agentstream.transport.core import StreamCore
from agentstream.transport.keys import slot_of
from agentstream.transport.scripts import PERMISSIONS

__all__ = [
    "PROBE_COMMANDS",
    "Denial",
    "Need",
    "acheck_permissions",
    "adenied",
]

_SHA = hashlib.sha1(PERMISSIONS.encode()).hexdigest()
_KEY, _GROUP = object(), object()

#: How each command that takes a key (or runs in a script) is probed: its
#: arguments, the key and the group put in. Where a harmless form exists it is
#: used although the script refuses writes anyway.
_SCRIPTED: dict[str, tuple[object, ...]] = {
    "xgroup|create": ("XGROUP", "CREATE", _KEY, _GROUP, "$"),
    "xgroup|delconsumer": ("XGROUP", "DELCONSUMER", _KEY, _GROUP, "-"),
    "xreadgroup": (
        "XREADGROUP",
        "GROUP",
        _GROUP,
        "-",
        "COUNT",
        "1",
        "STREAMS",
        _KEY,
        ">",
    ),
    "xread": ("XREAD", "COUNT", "1", "STREAMS", _KEY, "0-0"),
    "xack": ("XACK", _KEY, _GROUP, "0-0"),
    "xpending": ("XPENDING", _KEY, _GROUP, "-", "+", "1"),
    "xclaim": ("XCLAIM", _KEY, _GROUP, "-", "0", "0-0", "JUSTID"),
    "xrange": ("XRANGE", _KEY, "-", "+", "COUNT", "1"),
    "xrevrange": ("XREVRANGE", _KEY, "+", "-", "COUNT", "1"),
    "xadd": ("XADD", _KEY, "0-0", "-", "-"),  # id 0-0: always invalid
    "xdel": ("XDEL", _KEY, "0-0"),
    "xlen": ("XLEN", _KEY),
    "xinfo|groups": ("XINFO", "GROUPS", _KEY),
    "xinfo|consumers": ("XINFO", "CONSUMERS", _KEY, _GROUP),
    "xinfo|stream": ("XINFO", "STREAM", _KEY),
    "hset": ("HSET", _KEY, "-", "-"),
    "hsetnx": ("HSETNX", _KEY, "-", "-"),
    "hget": ("HGET", _KEY, "-"),
    "hdel": ("HDEL", _KEY, "-"),
    "hscan": ("HSCAN", _KEY, "0", "COUNT", "1"),
    "pexpire": ("PEXPIRE", _KEY, "1"),
    "get": ("GET", _KEY),
    "set": ("SET", _KEY, "-"),
    "del": ("DEL", _KEY),
    "incr": ("INCR", _KEY),
    "exists": ("EXISTS", _KEY),
    "zadd": ("ZADD", _KEY, "0", "-"),
    "zremrangebyscore": ("ZREMRANGEBYSCORE", _KEY, "-inf", "-inf"),
    "zrange": ("ZRANGE", _KEY, "0", "0"),
    "time": ("TIME",),
}


def _top_level(
    core: StreamCore, key: str | None
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """The commands a script may not run, each in a form that changes nothing.

    ``key``: one the needs name; a cluster client routes EVALSHA by its key.
    """
    raw: Any = core.raw
    unknown = "0" * 40
    keys = [] if key is None else [key]
    return {
        "ping": raw.ping,
        # NOSCRIPT when allowed
        "evalsha": lambda: raw.evalsha(unknown, len(keys), *keys),
        "script|load": lambda: raw.script_load(PERMISSIONS),
        "script|exists": lambda: raw.script_exists(unknown),
        "wait": lambda: raw.wait(0, 0),
    }


#: Every command this module can check (``evalsha_ro``: the check itself).
PROBE_COMMANDS = frozenset(_SCRIPTED) | {
    "ping", "evalsha", "evalsha_ro", "script|load", "script|exists", "wait"
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Need:
    """A command the ACL user must be allowed to run.

    Attributes:
        command: its name as ``ACL SETUSER`` writes it (``"xinfo|groups"``).
        key: the key it runs on (None: it takes none).
        group: the consumer group it names, if any.
    """

    command: str
    key: str | None = None
    group: str = ""

    def __post_init__(self) -> None:
        if self.command not in PROBE_COMMANDS:
            raise ValueError(f"no probe for {self.command!r}")


@dataclass(frozen=True, slots=True)
class Denial:
    """A ``Need`` the ACL refuses.

    Attributes:
        need: what was checked.
        reason: Redis's words for the refusal.
        command: the command refused: the need's, or ``"select"`` when the
            connection itself was (a database other than 0).
    """

    need: Need
    reason: str
    command: str

    def describe(self) -> str:
        """``'xclaim' on agent_output``, or ``key 'x:dlq' (xadd)`` for a key."""
        if "to access" in self.reason:  # the key pattern, not the command
            return f"key {self.need.key!r} ({self.command})"
        where = f" on {self.need.key}" if self.need.key else ""
        return f"'{self.command}'{where}"


async def adenied(core: StreamCore, needs: Iterable[Need]) -> list[Denial]:
    """Which of ``needs`` the ACL user of ``core``'s connections may not run.

    Nothing is written. On a cluster each slot's keys are checked on their node.

    Raises:
        agentstream.errors.ConnectionError: Redis could not be reached.
        agentstream.errors.TransportError: Redis failed otherwise.
    """
    wanted = list(dict.fromkeys(needs))
    top = _top_level(core, next((n.key for n in wanted if n.key), None))
    denials: list[Denial] = []
    for need in wanted:
        if need.command in top:
            denial = await _refusal(core, need, top[need.command])
            if denial is not None and denial.command == "select":
                return [denial]  # connecting is refused: so is everything else
            if denial is not None:
                denials.append(denial)
    scripted = [n for n in wanted if n.command in _SCRIPTED]
    batches: dict[int, list[Need]] = {}
    for need in sorted(scripted, key=lambda n: n.key is None):
        if need.key is None:  # keyless (TIME): along with any keyed batch
            batches.setdefault(next(iter(batches), 0), []).append(need)
            continue
        slot = slot_of(need.key) if core.cluster else 0
        batches.setdefault(slot, []).append(need)
    for batch in batches.values():
        found = await _probe(core, batch)
        denials.extend(found)
        if any(d.need.command == "evalsha_ro" for d in found):
            break  # the probe itself is refused: the next batches would be too
    return denials


async def acheck_permissions(core: StreamCore, needs: Iterable[Need]) -> None:
    """Raise ``PermissionDenied`` naming every need the ACL refuses.

    Raises:
        agentstream.errors.PermissionDenied: one or more needs are refused; its
            ``command`` is the first, its message lists all.
        agentstream.errors.ConnectionError: Redis could not be reached.
    """
    denials = await adenied(core, needs)
    if not denials:
        return
    listed = ", ".join(d.describe() for d in denials)
    first = denials[0].command
    msg = (
        f"Redis at {core.location} denies the ACL user {len(denials)} "
        f"permission(s) this configuration needs: {listed} "
        f"(first refusal: {denials[0].reason}); see the README, Redis ACL users"
    )
    raise errors.PermissionDenied(msg, "acl check", first)


async def _refusal(
    core: StreamCore, need: Need, run: Callable[[], Awaitable[Any]]
) -> Denial | None:
    try:
        await core.acall(need.command, run)
    except errors.PermissionDenied as exc:
        return Denial(need, str(exc), exc.command)
    except errors.ConnectionError:
        raise
    except errors.TransportError:
        pass  # answered otherwise (NOSCRIPT...): the ACL let it through
    return None


async def _probe(core: StreamCore, batch: list[Need]) -> list[Denial]:
    if not batch:
        return []
    keys = list(dict.fromkeys(n.key for n in batch if n.key))
    argv: list[str] = []
    for need in batch:
        args = _SCRIPTED[need.command]
        argv.append(str(len(args)))
        for arg in args:
            if arg is _KEY:
                argv.append(f"k{keys.index(need.key or '') + 1}")
            elif arg is _GROUP:
                argv.append(f"v{need.group}")
            else:
                argv.append(f"v{arg}")
    raw: Any = core.raw

    async def run() -> Any:
        try:
            return await raw.evalsha_ro(_SHA, len(keys), *keys, *argv)
        except NoScriptError:
            pass
        await raw.script_load(PERMISSIONS)
        return await raw.evalsha_ro(_SHA, len(keys), *keys, *argv)

    try:
        replies: list[Any] = await core.acall("acl check", run)
    except errors.PermissionDenied as exc:
        if "to access" not in str(exc):
            # evalsha_ro or script|load refused: nothing else can be checked.
            return [Denial(Need("evalsha_ro"), str(exc), exc.command)]
        # Redis checks the script's declared keys first: find the one refused.
        if len(keys) > 1:
            found: list[Denial] = []
            for key in keys:
                found += await _probe(core, [n for n in batch if n.key == key])
            return found + await _probe(core, [n for n in batch if not n.key])
        return [Denial(need, str(exc), need.command) for need in batch]
    denials = []
    for need, reply in zip(batch, replies, strict=True):
        if reply:
            reason = reply.decode() if isinstance(reply, bytes) else str(reply)
            denials.append(Denial(need, reason, need.command))
    return denials
