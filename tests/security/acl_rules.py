"""The least-privilege Redis ACL users of agentstream, as the README gives them.

Three users, for streams whose names start with ``agent_output`` (the stream,
``<stream>:dlq``, ``<stream>:errors:<group>``, ``<stream>:owner:*`` and, for
ordered subscriptions, ``<stream>:lease:*``, ``<stream>:fence:*`` and
``<stream>:members:*`` keys):

- :data:`WORKER_RULES`, for ``agentstream-worker`` and its ``--check``: reads
  through its consumer group, acknowledges, dead-letters, records last errors,
  holds consumer-name leases, runs the Lua scripts of
  ``agentstream.transport.scripts``, and checks these very permissions at start
  (a read-only script). Redis checks every command a script runs against the
  caller's ACL, so the commands inside the scripts are granted too; keys stay
  confined to the pattern. Ordered subscriptions add :data:`ORDERED_COMMANDS`.
- :data:`READONLY_RULES`, for ``agentstream stats``, ``dlq list``/``show`` and
  ``tail``: read commands on the same keys (``%R~``), nothing that writes;
  ``stats`` reads a group's figures in one read-only Lua script (EVALSHA_RO).
- :data:`OPERATOR_RULES`, for every ``agentstream`` command: the read-only
  user's commands on read-write keys, plus ``publish`` (XADD; add ``+wait``
  with ``wait_replicas`` above 0), ``dlq replay`` (a Lua script in a pipeline: EVALSHA and
  SCRIPT EXISTS; inside it XADD and XDEL) and ``dlq purge`` (XDEL).

Each rule is needed: test_acl.py removes each in turn and finds the command it
grants named by ``--check`` (the worker) or by the refusal of an
``agentstream`` command (its CLI_NEEDS: each command but ``web``, with the
rules it needs), and runs the worker through every path with ``ACL LOG``
staying empty. Of the operators' rules, no command needs ``+xrevrange`` (the
web console's), and ``stats`` runs without ``+info`` (the policy is then
unknown).

Not granted, on purpose: EVAL and its siblings (redis-py runs scripts with
EVALSHA and loads them with SCRIPT LOAD on NOSCRIPT), MULTI (no transaction is
used), FLUSH*, KEYS, CONFIG, DEBUG, ACL, any pub/sub channel, and keys outside
the pattern. ``CLIENT SETINFO`` (sent by redis-py on connect, ignored when
refused) is left out: Redis 7.0 does not know it, so ``ACL SETUSER`` would
reject the rule; on Redis 7.2 and later add ``+client|setinfo`` to keep
``ACL LOG`` quiet.
"""

from __future__ import annotations

__all__ = [
    "KEY_PATTERN",
    "OPERATOR_COMMANDS",
    "OPERATOR_RULES",
    "OPERATOR_USER",
    "ORDERED_COMMANDS",
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
OPERATOR_USER = "agentstream-operator"

#: Streams ``agent_output``, ``agent_output:dlq``, and the worker's own keys
#: ``agent_output:errors:<group>`` and ``agent_output:owner:<group>:<name>``.
KEY_PATTERN = "agent_output*"

#: What the worker runs, at top level or inside its Lua scripts.
WORKER_COMMANDS: tuple[str, ...] = (
    # connection: the probe loop and --check ping; SELECT for a database other
    # than 0
    "+ping",
    "+select",
    # the consumer group: created at start (with MKSTREAM) when missing
    "+xinfo|groups",
    "+xgroup|create",
    # reading, acknowledging, pending lists, claims, dead letters
    "+xreadgroup",
    "+xack",
    "+xpending",
    "+xclaim",
    "+xrange",
    "+xadd",
    "+xinfo|consumers",
    "+xgroup|delconsumer",
    # error records (HSET, PEXPIRE, HGET; HDEL with each XACK; HSETNX, HSCAN,
    # DEL in scripts) and consumer-name leases (GET, SET, DEL)
    "+hset",
    "+hsetnx",
    "+hget",
    "+hdel",
    "+hscan",
    "+pexpire",
    "+get",
    "+set",
    "+del",
    # the Lua scripts; EVALSHA_RO runs the permission check and the group's
    # figures for the metrics (XINFO STREAM, EXISTS, TIME; XLEN of the DLQ)
    "+evalsha",
    "+evalsha_ro",
    "+script|load",
    "+xinfo|stream",
    "+exists",
    "+time",
    "+xlen",
    # --check: the event types of the stream's latest entries
    "+xrevrange",
    # maxmemory-policy from INFO memory, at start and with the metrics
    "+info",
)

#: What ordered subscriptions add: partition leases with a fencing counter
#: (INCR) and the members of a group (a sorted set).
ORDERED_COMMANDS: tuple[str, ...] = ("+incr", "+zadd", "+zremrangebyscore", "+zrange")

#: What ``agentstream stats``, ``dlq list``/``show``, ``tail``, ``pending
#: list``/``show``, ``consumers list``, ``workers`` and a read-only web console
#: run (GET: the pause state; HMGET: last errors; SCAN and PTTL: the name
#: leases; XREVRANGE: newest dead letters first).
READONLY_COMMANDS: tuple[str, ...] = (
    # SELECT for a database other than 0
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

#: What every ``agentstream`` command runs: the read-only user's, plus writes.
OPERATOR_COMMANDS: tuple[str, ...] = (
    *READONLY_COMMANDS,
    # publish (add +wait with wait_replicas above 0); replay moves entries in
    # a Lua script (XADD, XDEL) sent in a pipeline (SCRIPT EXISTS first); purge
    "+xadd",
    "+xdel",
    "+evalsha",
    "+script|exists",
    # pending claim/ack, consumers remove, group reset, pause/resume
    "+xack",
    "+xclaim",
    "+xgroup|delconsumer",
    "+xgroup|setid",
    "+set",
    "+del",
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

#: ``ACL SETUSER agentstream-operator <rules> >password``
OPERATOR_RULES: tuple[str, ...] = (
    "reset",
    "on",
    "resetchannels",
    f"~{KEY_PATTERN}",
    *OPERATOR_COMMANDS,
)


def setuser_line(user: str, rules: tuple[str, ...], password: str) -> str:
    """The ``ACL SETUSER`` command line for ``user``, as typed in redis-cli."""
    return " ".join(["ACL", "SETUSER", user, *rules, f">{password}"])
