"""``agentstream stats``: streams, groups, pending entries, consumers, DLQs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agentstream.admin._common import Context, duration, out, table
from agentstream.admin.subscriptions import physical, state
from agentstream.config import SubscriptionSettings
from agentstream.errors import PermissionDenied
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.retention import eviction_line


def _status(stats: dict[str, Any]) -> str:
    if not stats["stream_exists"]:
        return "no stream"
    if not stats["group_exists"]:
        return "no group"
    return "paused" if stats["paused"] else "ok"


def _cell(value: Any, missing: str = "-") -> str:
    return missing if value is None else str(value)


def _age(stats: dict[str, Any]) -> str:
    if not stats["pending"]:
        return "-"
    age = stats["oldest_pending_age_ms"]
    if age is not None:
        return duration(age)
    # A pending id past the server's clock: not a publish time.
    return "unknown" if stats["oldest_pending_id"] else "-"


def _render(subscriptions: list[dict[str, Any]]) -> list[str]:
    rows = [
        [
            s["stream"],
            s["group"],
            _status(s),
            str(s["length"]) if s["stream_exists"] else "-",
            _cell(s["lag"], "unknown") if s["group_exists"] else "-",
            _cell(s["pending"]),
            _age(s),
            s["dead_letter_stream"],
            str(s["dead_letters"]),
        ]
        for s in subscriptions
    ]
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


def _total(
    logical: SubscriptionSettings, parts: list[dict[str, Any]]
) -> dict[str, Any]:
    """A partitioned subscription's sums over its partitions (lag: None if any is)."""

    def summed(name: str) -> int | None:
        values = [p[name] for p in parts]
        return None if None in values else sum(values)

    return {
        "stream": logical.stream,
        "group": logical.group,
        "partitions": len(parts),
        "length": sum(p["length"] for p in parts),
        "lag": summed("lag"),
        "pending": summed("pending"),
        "dead_letters": sum(p["dead_letters"] for p in parts),
    }


async def _memory_policy(transport: AdminOps) -> str | None:
    """Redis's maxmemory-policy, or None when the user may not run INFO."""
    try:
        return await transport.amaxmemory_policy()
    except PermissionDenied:
        return None


async def run_stats(args: argparse.Namespace, ctx: Context) -> int:
    """Print the state of every stream key (each partition) and partition totals."""
    subscriptions: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    first = ctx.settings.subscriptions[0]
    policy = await _memory_policy(ctx.transport(first.stream, first.group))
    for logical, physical_subs in physical(ctx):
        parts = [
            await state(ctx.transport(sub.stream, sub.group), sub)
            for sub in physical_subs
        ]
        subscriptions += parts
        if logical.partitions > 1:
            totals.append(_total(logical, parts))
    if args.json:
        report = {
            "maxmemory_policy": policy,
            "subscriptions": subscriptions,
            "totals": totals,
        }
        out(json.dumps(report, indent=2))
        return 0
    for line in _render(subscriptions):
        out(line)
    if totals:
        rows = [
            [t["stream"], t["group"], str(t["partitions"]), str(t["length"]),
             _cell(t["lag"], "unknown"), _cell(t["pending"]), str(t["dead_letters"])]
            for t in totals
        ]  # fmt: skip
        headers = ["STREAM", "GROUP", "PARTITIONS", "LENGTH", "LAG", "PENDING"]
        out("")
        for line in table([*headers, "DEAD LETTERS"], rows, right={2, 3, 4, 5, 6}):
            out(line)
    out("")
    out(eviction_line(policy))
    return 0
