"""``agentstream stats``: streams, groups, pending entries, consumers, DLQs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agentstream.admin._common import Context, duration, out, table
from agentstream.admin.subscriptions import states


def _status(stats: dict[str, Any]) -> str:
    if not stats["stream_exists"]:
        return "no stream"
    if not stats["group_exists"]:
        return "no group"
    return "paused" if stats["paused"] else "ok"


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


async def run_stats(args: argparse.Namespace, ctx: Context) -> int:
    """Print the state of every subscription, as a table or as JSON."""
    subscriptions = await states(ctx)
    if args.json:
        out(json.dumps({"subscriptions": subscriptions}, indent=2))
    else:
        for line in _render(subscriptions):
            out(line)
    return 0
