"""The ACL permissions a worker configuration needs, on the keys it will use.

The worker checks them at start and ``--check`` does too (see
``transport.permissions``), so that a missing rule is named at once instead of
failing one code path hours later. The list follows the code paths: the
README's worker rules (tests/security/acl_rules.py) grant exactly these.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentstream.config import Settings, SubscriptionSettings
from agentstream.transport.keys import derived_key, partition_streams
from agentstream.transport.permissions import Need
from agentstream.transport.worker_ops import WorkerOps

__all__ = ["worker_needs"]

#: On the stream: group creation at start, reads, acknowledgements, the reaper's
#: pending list and claims (Lua), idle-consumer removal (Lua).
_ON_STREAM = (
    "xinfo|groups",
    "xgroup|create",
    "xreadgroup",
    "xack",
    "xpending",
    "xrange",
    "xclaim",
    "xinfo|consumers",
    "xgroup|delconsumer",
)
#: On the error records: written at each failure, read by the reaper, dropped
#: with each XACK and dead letter, pruned (HSCAN in Lua).
_ON_ERRORS = ("hset", "pexpire", "hget", "hdel", "hsetnx", "hscan", "del")
#: On a consumer-name lease (Lua): take, renew, release.
_ON_NAME_LEASE = ("get", "set", "del")
#: Top level: the probe loop pings; the scripts run with EVALSHA and are loaded
#: on NOSCRIPT; the group figures (and this check) are a read-only script.
_TOP_LEVEL = ("ping", "evalsha", "evalsha_ro", "script|load")


def worker_needs(
    settings: Settings,
    subscriptions: Sequence[SubscriptionSettings],
    transports: Sequence[WorkerOps],
    name_base: str,
    *,
    check: bool = False,
) -> list[Need]:
    """What the worker runs for ``settings``, as ``Need``s on their keys.

    Args:
        settings: the configuration (metrics and ordered subscriptions add needs).
        subscriptions: the physical subscriptions (one per partition).
        transports: their transports, in the same order.
        name_base: the consumer-name base whose lease the worker takes.
        check: add what ``--check`` runs besides (XREVRANGE of recent types).
    """
    needs = [Need(command) for command in _TOP_LEVEL]
    # (partition stream, group) -> its logical stream, for ordered subscriptions
    ordered = {
        (stream, logical.group): logical.stream
        for logical in settings.subscriptions
        if logical.ordered
        for stream in partition_streams(logical.stream, logical.partitions)
    }
    for sub, transport in zip(subscriptions, transports, strict=True):
        stream, group = transport.stream_name, transport.consumer_group
        needs += [Need(c, stream, group) for c in _ON_STREAM]
        needs.append(Need("xadd", sub.dead_letter_key))
        needs += [Need(c, transport.errors_key) for c in _ON_ERRORS]
        lease = transport.lease_key(name_base)
        needs += [Need(c, lease) for c in _ON_NAME_LEASE]
        if settings.metrics.enabled:  # the group's figures (Lua), the DLQ's length
            needs += [Need(c, stream, group) for c in ("xinfo|stream", "exists")]
            needs += [Need("time"), Need("xlen", sub.dead_letter_key)]
        if check:
            needs.append(Need("xrevrange", stream))
        if (stream, group) in ordered:
            needs += _ordered_needs(transport, ordered[stream, group])
    return needs


def _ordered_needs(transport: WorkerOps, logical_stream: str) -> list[Need]:
    """Partition leases with fencing tokens, and the members' sorted set (Lua)."""
    group = transport.consumer_group
    lease = transport.derived_key(f"lease:{group}")
    fence = transport.derived_key(f"fence:{group}")
    members = derived_key(logical_stream, f"members:{group}", cluster=transport.cluster)
    return [
        *(Need(c, lease) for c in ("get", "set", "pexpire", "del")),
        Need("incr", fence),
        Need("time"),
        *(Need(c, members) for c in ("zadd", "zremrangebyscore", "pexpire", "zrange")),
    ]
