"""Subscription-level operations shared by the CLI and the web console.

Which subscription an operator means, its state (``agentstream stats`` and the
console's overview), and pausing and resuming it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from agentstream.admin._common import CommandFailed, Context
from agentstream.config import Settings, SubscriptionSettings
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.group_state import GroupState, aread_group_state
from agentstream.transport.keys import physical_subscriptions

__all__ = ["pause", "physical", "resolve", "resume", "state", "states"]


def resolve(
    settings: Settings, stream: str | None, group: str | None = None
) -> SubscriptionSettings:
    """The subscription an operator names: the configured one of ``stream``
    (and ``group``), else the first one; an unconfigured stream is taken as
    given, with group ``agents`` unless ``group`` says otherwise.
    """
    subs = settings.subscriptions
    if stream is None:
        matching = [s for s in subs if group is None or s.group == group]
        if not matching:
            return SubscriptionSettings(stream=subs[0].stream, group=group or "agents")
        return matching[0]
    for sub in subs:
        if sub.stream == stream and (group is None or sub.group == group):
            return sub
    return SubscriptionSettings(stream=stream, group=group or "agents")


def _ms_part(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _pause_note(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        note = json.loads(raw)
    except ValueError:
        note = None
    return note if isinstance(note, dict) else {"by": raw}


async def _oldest_undelivered(ops: AdminOps, last_delivered: str) -> str | None:
    """The id of the first entry after the group's last-delivered id."""
    rows = await ops.arange_raw(None, f"({last_delivered}", "+", 1)
    return rows[0][0] if rows else None


async def state(ops: AdminOps, sub: SubscriptionSettings) -> dict[str, Any]:
    """What one subscription (one stream key) looks like now; the keys are the
    same every time.

    The group's figures are read at one instant and checked against the stream
    (``agentstream.transport.group_state``): a lag that cannot be known is
    None, never a number that contradicts the stream. Ages are on the Redis
    server's clock: entry ids carry its milliseconds.
    """
    read = await aread_group_state(ops)
    group = read if isinstance(read, GroupState) else None
    consumers = await ops.aconsumer_rows() if group is not None else None
    undelivered = None
    if group is not None and group.lag != 0:
        undelivered = await _oldest_undelivered(ops, group.last_delivered_id)
    note = _pause_note(await ops.apause_state())

    def age(entry_id: str | None) -> int | None:
        if entry_id is None or group is None:
            return None
        return max(group.server_time_ms - _ms_part(entry_id), 0)

    return {
        "stream": sub.stream,
        "group": sub.group,
        "stream_exists": read is not False,
        "group_exists": group is not None,
        "paused": note is not None,
        "paused_by": None if note is None else note.get("by"),
        "paused_at": None if note is None else note.get("at"),
        "length": group.length if group else await ops.alength(),
        "lag": group.lag if group else None,
        "redis_lag": group.redis_lag if group else None,
        "pending": group.pending if group else None,
        "oldest_pending_id": group.oldest_pending_id if group else None,
        "oldest_pending_age_ms": group.oldest_pending_age_ms if group else None,
        "oldest_undelivered_id": undelivered,
        "oldest_undelivered_age_ms": age(undelivered),
        "last_delivered_id": group.last_delivered_id if group else None,
        "entries_read": group.entries_read if group else None,
        "dead_letter_stream": sub.dead_letter_key,
        "dead_letters": await ops.alength(sub.dead_letter_key),
        "consumers": [
            {"name": c["name"], "pending": c["pending"], "idle_ms": c["idle_ms"]}
            for c in consumers or ()
        ],
    }


def physical(
    ctx: Context,
) -> list[tuple[SubscriptionSettings, list[SubscriptionSettings]]]:
    """Each configured subscription with its stream keys (one per partition)."""
    cluster = ctx.settings.redis.is_cluster
    return [
        (sub, physical_subscriptions(sub, cluster=cluster))
        for sub in ctx.settings.subscriptions
    ]


async def states(ctx: Context) -> list[dict[str, Any]]:
    """The state of every stream key (each partition), in configuration order."""
    return [
        await state(ctx.transport(part.stream, part.group), part)
        for _, parts in physical(ctx)
        for part in parts
    ]


async def pause(ops: AdminOps, by: str) -> bool:
    """Pause the subscription: every worker stops reading it within a second.

    The state is a key in Redis (``{stream}:paused:{group}``) that every worker
    process polls, so all replicas obey. Entries in flight are finished.
    Returns False when it was already paused.

    Raises:
        CommandFailed: the stream or its group does not exist.
    """
    if await ops.agroup_info() is None:
        raise CommandFailed(
            f"stream {ops.stream!r} has no consumer group {ops.group!r}"
        )
    note = json.dumps({"by": by, "at": round(time.time(), 3)})
    return await ops.aset_pause(note)


async def resume(ops: AdminOps) -> bool:
    """Resume a paused subscription; returns False when it was not paused."""
    return await ops.aset_pause(None)
