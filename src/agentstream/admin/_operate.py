"""``agentstream pending``, ``consumers``, ``workers``, ``group``, ``pause``, ``resume``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agentstream.admin import consumers, pending, subscriptions
from agentstream.admin._common import (
    Context,
    confirm,
    duration,
    err,
    one_line,
    out,
    plural,
    table,
    text,
)
from agentstream.transport.admin_ops import AdminOps

_LIST_DEFAULT = 100


def _ops(args: argparse.Namespace, ctx: Context) -> AdminOps:
    sub = subscriptions.resolve(ctx.settings, args.stream, args.group)
    return ctx.transport(sub.stream, sub.group)


async def _group_exists(ops: AdminOps, as_json: bool, key: str) -> bool:
    """Whether the group exists; if not, say so as an empty listing (like stats)."""
    if await ops.agroup_info() is not None:
        return True
    if as_json:
        out(json.dumps({"stream": ops.stream, "group": ops.group,
                        "group_exists": False, key: []}))  # fmt: skip
    else:
        out(f"no group {ops.group} on {ops.stream} (no stream, or not created yet)")
    return False


# -- pending ---------------------------------------------------------------------


async def run_pending_list(args: argparse.Namespace, ctx: Context) -> int:
    """List pending entries: id, consumer, idle, deliveries."""
    ops = _ops(args, ctx)
    start = f"({args.after}" if args.after else "-"
    filters = pending.PendingFilters(
        args.consumer, args.min_idle_ms, args.min_deliveries, start
    )
    limit = args.count or _LIST_DEFAULT
    if not await _group_exists(ops, args.json, "entries"):
        return 0
    page = await pending.find(ops, filters, limit, scan_limit=1_000_000)
    if args.json:
        rows = [
            {
                "id": e.id,
                "consumer": e.consumer,
                "idle_ms": e.idle_ms,
                "delivery_count": e.delivery_count,
            }
            for e in page.items
        ]
        next_id = page.next_start.lstrip("(") if page.next_start else None
        out(json.dumps({"stream": ops.stream, "group": ops.group, "entries": rows,
                        "next_after": next_id}))  # fmt: skip
        return 0
    if not page.items:
        out(f"no pending entries{' match' if args.consumer or args.min_idle_ms or args.min_deliveries else ''} in group {ops.group} of {ops.stream}")  # fmt: skip
        return 0
    rows_text = [
        [e.id, e.consumer, duration(e.idle_ms), str(e.delivery_count)]
        for e in page.items
    ]
    for line in table(["ID", "CONSUMER", "IDLE", "DELIVERIES"], rows_text, {2, 3}):
        out(line)
    if page.next_start:
        err(f"(first {limit} shown; more with --after {page.next_start[1:]})")
    return 0


async def run_pending_show(args: argparse.Namespace, ctx: Context) -> int:
    """Print one pending entry: owner, idle, deliveries, fields, last error."""
    ops = _ops(args, ctx)
    detail = await pending.show(ops, args.id)
    entry = detail.entry
    if args.json:
        out(json.dumps(pending_json(detail)))
        return 0
    out(f"pending entry {entry.id} in group {ops.group} of {ops.stream}")
    out(f"consumer        {entry.consumer}")
    out(f"idle            {duration(entry.idle_ms)}")
    out(f"deliveries      {entry.delivery_count}")
    if detail.fields is None:
        out("fields          (gone: trimmed or deleted from the stream)")
    for name, value in (detail.fields or {}).items():
        out(f"{text(name):<15} {one_line(text(value))}")
    first, *rest = (detail.last_error or "(none recorded)").splitlines() or [""]
    out(f"last error      {first}")
    for line in rest:
        out(f"                {line}")
    return 0


def pending_json(detail: pending.PendingDetail) -> dict[str, Any]:
    """One pending entry as JSON."""
    e = detail.entry
    fields = None
    if detail.fields is not None:
        fields = {text(k): text(v) for k, v in detail.fields.items()}
    return {
        "id": e.id,
        "consumer": e.consumer,
        "idle_ms": e.idle_ms,
        "delivery_count": e.delivery_count,
        "fields": fields,
        "last_error": detail.last_error,
    }


async def run_pending_claim(args: argparse.Namespace, ctx: Context) -> int:
    """Hand stuck entries to the parking consumer for redelivery by a reaper."""
    ops = _ops(args, ctx)
    ids = list(dict.fromkeys(args.ids))
    moved = await pending.redeliver(ops, ids, ctx.settings.reaper.max_backoff_ms)
    for entry_id in moved:
        out(f"{entry_id} -> redelivery")
    out(
        f"handed {plural(len(moved), 'entry')} to the reaper of group {ops.group} "
        f"of {ops.stream}"
    )
    missing = [i for i in ids if i not in moved]
    for entry_id in missing:
        err(f"agentstream: {entry_id} is not pending")
    return 1 if missing else 0


async def run_pending_ack(args: argparse.Namespace, ctx: Context) -> int:
    """Acknowledge pending entries: they will not be handled."""
    ops = _ops(args, ctx)
    ids = list(dict.fromkeys(args.ids))
    confirm(
        f"Acknowledge {plural(len(ids), 'entry')} in group {ops.group} of "
        f"{ops.stream} without handling?",
        args.yes,
        "pending ack drops entries unhandled",
    )
    acked = await pending.acknowledge(ops, ids)
    out(f"acknowledged {plural(acked, 'entry')} in group {ops.group} of {ops.stream}")
    if acked < len(ids):
        err(f"agentstream: {len(ids) - acked} of the ids were not pending")
        return 1
    return 0


# -- consumers, workers, group -------------------------------------------------


async def run_consumers_list(args: argparse.Namespace, ctx: Context) -> int:
    """List a group's consumers with their owning worker."""
    ops = _ops(args, ctx)
    if not await _group_exists(ops, args.json, "consumers"):
        return 0
    rows = await consumers.list_consumers(ops)
    if args.json:
        listed = [
            {
                "name": c.name,
                "pending": c.pending,
                "idle_ms": c.idle_ms,
                "inactive_ms": c.inactive_ms,
                "worker": c.worker,
                "stale": c.stale,
            }
            for c in rows
        ]
        out(json.dumps({"stream": ops.stream, "group": ops.group, "consumers": listed}))
        return 0
    if not rows:
        out(f"no consumers in group {ops.group} of {ops.stream}")
        return 0
    cells = [
        [
            c.name,
            str(c.pending),
            duration(c.idle_ms),
            "-" if c.inactive_ms is None else duration(c.inactive_ms),
            c.worker or "-",
            "stale" if c.stale else "",
        ]
        for c in rows
    ]
    headers = ["CONSUMER", "PENDING", "IDLE", "INACTIVE", "WORKER", "STATE"]
    for line in table(headers, cells, right={1, 2, 3}):
        out(line)
    return 0


async def run_consumers_remove(args: argparse.Namespace, ctx: Context) -> int:
    """Remove consumers that own nothing."""
    ops = _ops(args, ctx)
    for name in dict.fromkeys(args.names):
        await consumers.remove_consumer(ops, name)
        out(f"removed consumer {name} from group {ops.group} of {ops.stream}")
    return 0


async def run_workers(args: argparse.Namespace, ctx: Context) -> int:
    """List the running workers of every subscription, from the name leases."""
    found = []
    for sub in ctx.settings.subscriptions:
        ops = ctx.transport(sub.stream, sub.group)
        found += [(sub.stream, sub.group, w) for w in await consumers.list_workers(ops)]
    if args.json:
        listed = [
            {"stream": s, "group": g, "name": w.name, "lease_ms_left": w.lease_ms_left,
             "consumers": w.consumers, "pending": w.pending}
            for s, g, w in found
        ]  # fmt: skip
        out(json.dumps({"workers": listed}))
        return 0
    if not found:
        out("no running workers")
        return 0
    cells = [
        [s, g, w.name, str(len(w.consumers)), str(w.pending), duration(w.lease_ms_left)]
        for s, g, w in found
    ]
    headers = ["STREAM", "GROUP", "WORKER", "CONSUMERS", "PENDING", "LEASE LEFT"]
    for line in table(headers, cells, right={3, 4, 5}):
        out(line)
    return 0


async def run_group_reset(args: argparse.Namespace, ctx: Context) -> int:
    """Move a group's last-delivered id, after confirmation."""
    ops = _ops(args, ctx)
    what = {"0": "every entry of the stream will be delivered again",
            "$": "entries not yet delivered will be skipped"}.get(
        args.id, f"entries after {args.id} will be delivered next")  # fmt: skip
    confirm(
        f"Reset group {ops.group} of {ops.stream} to {args.id} ({what})?",
        args.yes,
        f"group reset moves the last-delivered id of {ops.group}",
    )
    old, new = await consumers.reset_group(ops, args.id)
    out(f"group {ops.group} of {ops.stream}: last-delivered id {old} -> {new}")
    return 0


# -- pause and resume -----------------------------------------------------------


async def run_pause(args: argparse.Namespace, ctx: Context) -> int:
    """Pause a subscription: workers stop reading it within a second."""
    ops = _ops(args, ctx)
    changed = await subscriptions.pause(ops, by=args.by or "agentstream CLI")
    state = "paused" if changed else "was already paused"
    out(f"{ops.stream} (group {ops.group}) {state}")
    return 0


async def run_resume(args: argparse.Namespace, ctx: Context) -> int:
    """Resume a paused subscription."""
    ops = _ops(args, ctx)
    changed = await subscriptions.resume(ops)
    state = "resumed" if changed else "was not paused"
    out(f"{ops.stream} (group {ops.group}) {state}")
    return 0
