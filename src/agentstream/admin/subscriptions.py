"""Subscription-level operations shared by the CLI and the web console.

Which subscription an operator means, its state (``agentstream stats`` and the
console's overview), and pausing and resuming it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from agentstream.admin._common import CommandFailed, Context, text
from agentstream.config import Settings, SubscriptionSettings
from agentstream.transport.admin_ops import AdminOps

__all__ = ["pause", "resolve", "resume", "state", "states"]


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


async def state(
    ops: AdminOps, sub: SubscriptionSettings, now_ms: int
) -> dict[str, Any]:
    """What one subscription looks like now; the keys are the same every time.

    Ages are on the Redis server's clock (``now_ms``, from TIME): entry ids
    carry its milliseconds. ``lag`` is None when Redis cannot tell.
    """
    exists = await ops.aexists()
    group = await ops.agroup_info() if exists else None
    pending = await ops.apending_summary() if group is not None else None
    consumers = await ops.aconsumer_rows() if group is not None else None
    oldest = pending["min_id"] if pending else None
    lag = group.get("lag") if group else None
    entries_read = group.get("entries-read") if group else None
    last_delivered = text(group["last-delivered-id"]) if group else None
    undelivered = None
    if last_delivered is not None and lag != 0:
        undelivered = await _oldest_undelivered(ops, last_delivered)
    note = _pause_note(await ops.apause_state())

    def age(entry_id: str | None) -> int | None:
        return None if entry_id is None else max(now_ms - _ms_part(entry_id), 0)

    return {
        "stream": sub.stream,
        "group": sub.group,
        "stream_exists": exists,
        "group_exists": group is not None,
        "paused": note is not None,
        "paused_by": None if note is None else note.get("by"),
        "paused_at": None if note is None else note.get("at"),
        "length": await ops.alength() if exists else 0,
        "lag": None if lag is None else int(lag),
        "pending": pending["count"] if pending else None,
        "oldest_pending_id": oldest,
        "oldest_pending_age_ms": age(oldest),
        "oldest_undelivered_id": undelivered,
        "oldest_undelivered_age_ms": age(undelivered),
        "last_delivered_id": last_delivered,
        "entries_read": None if entries_read is None else int(entries_read),
        "dead_letter_stream": sub.dead_letter_key,
        "dead_letters": await ops.alength(sub.dead_letter_key),
        "consumers": [
            {"name": c["name"], "pending": c["pending"], "idle_ms": c["idle_ms"]}
            for c in consumers or ()
        ],
    }


async def states(ctx: Context) -> list[dict[str, Any]]:
    """The state of every configured subscription, in configuration order."""
    result = []
    now_ms: int | None = None
    for sub in ctx.settings.subscriptions:
        ops = ctx.transport(sub.stream, sub.group)
        if now_ms is None:
            # The server's clock: the ids are its milliseconds, not ours.
            now_ms = await ops.aserver_time_ms()
        result.append(await state(ops, sub, now_ms))
    return result


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
