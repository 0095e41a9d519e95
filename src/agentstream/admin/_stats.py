"""``agentstream stats``: streams, groups, pending entries, consumers, DLQs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agentstream.admin._common import Context, duration, out, table, text
from agentstream.config import SubscriptionSettings
from agentstream.errors import PermissionDenied
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.retention import eviction_line


def _ms_part(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


async def _subscription_stats(
    transport: AdminOps, sub: SubscriptionSettings, now_ms: int
) -> dict[str, Any]:
    """What one subscription looks like now; the keys are the same every time."""
    exists = await transport.aexists()
    group = await transport.agroup_info() if exists else None
    pending = await transport.apending_summary() if group is not None else None
    consumers = await transport.agroup_consumers() if group is not None else None
    oldest = pending["min_id"] if pending else None
    lag = group.get("lag") if group else None
    entries_read = group.get("entries-read") if group else None
    return {
        "stream": sub.stream,
        "group": sub.group,
        "stream_exists": exists,
        "group_exists": group is not None,
        "length": await transport.alength() if exists else 0,
        "lag": None if lag is None else int(lag),
        "pending": pending["count"] if pending else None,
        "oldest_pending_id": oldest,
        "oldest_pending_age_ms": (
            None if oldest is None else max(now_ms - _ms_part(oldest), 0)
        ),
        "last_delivered_id": text(group["last-delivered-id"]) if group else None,
        "entries_read": None if entries_read is None else int(entries_read),
        "dead_letter_stream": sub.dead_letter_key,
        "dead_letters": await transport.alength(sub.dead_letter_key),
        "consumers": [
            {"name": c["name"], "pending": c["pending"], "idle_ms": c["idle"]}
            for c in consumers or ()
        ],
    }


def _status(stats: dict[str, Any]) -> str:
    if not stats["stream_exists"]:
        return "no stream"
    return "ok" if stats["group_exists"] else "no group"


def _cell(value: Any, missing: str = "-") -> str:
    return missing if value is None else str(value)


def _render(subscriptions: list[dict[str, Any]]) -> list[str]:
    rows = []
    for s in subscriptions:
        age = s["oldest_pending_age_ms"]
        rows.append(
            [
                s["stream"],
                s["group"],
                _status(s),
                str(s["length"]) if s["stream_exists"] else "-",
                _cell(s["lag"], "unknown") if s["group_exists"] else "-",
                _cell(s["pending"]),
                "-" if age is None else duration(age),
                s["dead_letter_stream"],
                str(s["dead_letters"]),
            ]
        )
    headers = [
        "STREAM",
        "GROUP",
        "STATUS",
        "LENGTH",
        "LAG",
        "PENDING",
        "OLDEST PENDING",
        "DEAD-LETTER STREAM",
        "DEAD LETTERS",
    ]
    lines = table(headers, rows, right={3, 4, 5, 6, 8})
    consumers = [
        [s["stream"], s["group"], c["name"], str(c["pending"]), duration(c["idle_ms"])]
        for s in subscriptions
        for c in s["consumers"]
    ]
    lines.append("")
    if consumers:
        headers = ["STREAM", "GROUP", "CONSUMER", "PENDING", "IDLE"]
        lines += table(headers, consumers, right={3, 4})
    else:
        lines.append("no consumers")
    return lines


async def _memory_policy(transport: AdminOps) -> str | None:
    """Redis's maxmemory-policy, or None when the user may not run INFO."""
    try:
        return await transport.amaxmemory_policy()
    except PermissionDenied:
        return None


async def run_stats(args: argparse.Namespace, ctx: Context) -> int:
    """Print the state of every subscription, as a table or as JSON."""
    subscriptions = []
    now_ms: int | None = None
    policy: str | None = None
    for sub in ctx.settings.subscriptions:
        transport = ctx.transport(sub.stream, sub.group)
        if now_ms is None:
            # The server's clock: the ids are its milliseconds, not ours.
            now_ms = await transport.aserver_time_ms()
            policy = await _memory_policy(transport)
        subscriptions.append(await _subscription_stats(transport, sub, now_ms))
    if args.json:
        out(
            json.dumps(
                {"maxmemory_policy": policy, "subscriptions": subscriptions},
                indent=2,
            )
        )
    else:
        for line in _render(subscriptions):
            out(line)
        out("")
        out(eviction_line(policy))
    return 0
