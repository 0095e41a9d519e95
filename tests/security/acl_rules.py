"""The least-privilege Redis ACL users of agentstream, as tested in test_acl.py.

Two users, for streams whose names start with ``agent_output`` (the stream,
``<stream>:dlq``, ``<stream>:errors:<group>`` and ``<stream>:owner:*`` keys):

- :data:`WORKER_RULES`, for ``agentstream-worker``: reads through its consumer
  group, acknowledges, dead-letters, records last errors, holds consumer-name
  leases, and runs the Lua scripts of ``agentstream.transport.scripts``. Redis checks
  every command a script runs against the caller's ACL, so the commands inside
  the scripts are granted too (XPENDING, XRANGE, XACK, XCLAIM, XINFO CONSUMERS,
  XGROUP DELCONSUMER, GET, SET, DEL, HDEL, HSETNX, HSCAN); keys stay confined to
  the pattern.
- :data:`READONLY_RULES`, for ``agentstream stats``, ``dlq list``/``show`` and
  ``tail``: read commands on the same keys (``%R~``), nothing that writes;
  ``stats`` reads a group's figures in one read-only Lua script (EVALSHA_RO).

Found empirically: the tests run the worker through every path (handled,
failed -> retried -> dead-lettered, Retry, DeadLetter, malformed, unhandled,
handler timeout, lease renewal, reaper claims, idle-consumer removal, a clean
shutdown, metrics) and find ``ACL LOG`` empty; dropping a rule breaks a path.

Not granted, on purpose: EVAL and SCRIPT LOAD's siblings (redis-py runs
scripts with EVALSHA and loads them with SCRIPT LOAD on NOSCRIPT), FLUSH*,
KEYS, CONFIG, DEBUG, any pub/sub channel, and keys outside the pattern.
``CLIENT SETINFO`` (sent by redis-py on connect, ignored when refused) is left
out: Redis 7.0 does not know it, so ``ACL SETUSER`` would reject the rule; on
Redis 7.2 and later add ``+client|setinfo`` to keep ``ACL LOG`` quiet.
"""

from __future__ import annotations

__all__ = [
    "KEY_PATTERN",
    "OPERATOR_COMMANDS",
    "OPERATOR_RULES",
    "OPERATOR_USER",
    "READONLY_COMMANDS",
    "READONLY_RULES",
    "READONLY_USER",
    "WORKER_COMMANDS",
    "WORKER_RULES",
    "WORKER_USER",
    "setuser_line",
]

WORKER_USER = "agentstream-worker"
READONLY_USER = "agentstream-readonly"

#: Streams ``agent_output``, ``agent_output:dlq``, and the worker's own keys
#: ``agent_output:errors:<group>`` and ``agent_output:owner:<group>:<name>``.
KEY_PATTERN = "agent_output*"

#: What the worker runs, at top level or inside its Lua scripts.
WORKER_COMMANDS: tuple[str, ...] = (
    # connection: --check pings; SELECT for a database other than 0
    "+ping",
    "+select",
    # the consumer group: created at start (with MKSTREAM) when missing
    "+xgroup|create",
    # reading, acknowledging, pending lists, claims, dead letters
    "+xreadgroup",
    "+xack",
    "+xpending",
    "+xclaim",
    "+xrange",
    # --check: the event types of the stream's newest entries
    "+xrevrange",
    "+xadd",
    "+xlen",
    "+xinfo|groups",
    "+xinfo|consumers",
    "+xgroup|delconsumer",
    # re-reading a consumer's own pending entries with their delivery counts
    "+multi",
    "+exec",
    # error records (HSET, PEXPIRE, HGET; HDEL with each XACK; HSETNX, HSCAN
    # in scripts) and consumer-name leases (GET, SET, DEL)
    "+hset",
    "+hsetnx",
    "+hget",
    "+hdel",
    "+hscan",
    "+pexpire",
    "+get",
    "+set",
    "+del",
    # the Lua scripts; EVALSHA_RO and what it runs (XINFO STREAM, EXISTS,
    # TIME): the group's figures for the metrics
    "+evalsha",
    "+evalsha_ro",
    "+script|load",
    "+xinfo|stream",
    "+exists",
    "+time",
    # maxmemory-policy from INFO memory, at start and with the metrics
    "+info",
)

#: What ``agentstream stats``, ``dlq list``/``show``, ``tail``, ``pending
#: list``/``show``, ``consumers list``, ``workers`` and a read-only web console
#: run (GET: the pause state; HMGET: last errors; SCAN and PTTL: the name
#: leases; XREVRANGE: newest dead letters first).
READONLY_COMMANDS: tuple[str, ...] = (
    "+ping",
    "+select",
    "+time",
    "+exists",
    "+get",
    "+hmget",
    "+scan",
    "+pttl",
    "+xlen",
    "+xpending",
    "+xinfo|stream",
    "+xinfo|groups",
    "+xinfo|consumers",
    "+xrange",
    "+xrevrange",
    "+xread",
    # stats: the group's figures at one instant (a script that only reads)
    "+evalsha_ro",
    "+script|load",
    # stats shows maxmemory-policy (INFO memory)
    "+info",
)

OPERATOR_USER = "agentstream-operator"

#: The read-only commands plus what ``pending claim``/``ack``, ``consumers
#: remove``, ``group reset``, ``pause``/``resume`` and a console that is not
#: read-only change (``dlq replay``/``purge`` also need XADD and XDEL).
OPERATOR_COMMANDS: tuple[str, ...] = (
    *READONLY_COMMANDS,
    "+xack",
    "+xclaim",
    "+xgroup|delconsumer",
    "+xgroup|setid",
    "+set",
    "+del",
    "+evalsha",
    "+script|load",
    "+script|exists",
)

#: ``ACL SETUSER agentstream-operator <rules> >password``
OPERATOR_RULES: tuple[str, ...] = (
    "reset",
    "on",
    "resetchannels",
    f"~{KEY_PATTERN}",
    *OPERATOR_COMMANDS,
)

#: ``ACL SETUSER agentstream-worker <rules> >password``
WORKER_RULES: tuple[str, ...] = (
    "reset",
    "on",
    "resetchannels",
    f"~{KEY_PATTERN}",
    *WORKER_COMMANDS,
)

#: ``ACL SETUSER agentstream-readonly <rules> >password``; ``%R~``: read only.
READONLY_RULES: tuple[str, ...] = (
    "reset",
    "on",
    "resetchannels",
    f"%R~{KEY_PATTERN}",
    *READONLY_COMMANDS,
)


def setuser_line(user: str, rules: tuple[str, ...], password: str) -> str:
    """The ``ACL SETUSER`` command line for ``user``, as typed in redis-cli."""
    return " ".join(["ACL", "SETUSER", user, *rules, f">{password}"])
