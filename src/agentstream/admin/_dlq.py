"""``agentstream dlq``: list, show, replay and purge dead letters."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from agentstream.admin import dead_letters
from agentstream.admin._common import (
    CommandFailed,
    Context,
    confirm,
    err,
    field,
    one_line,
    out,
    plural,
    table,
    text,
)
from agentstream.admin.dead_letters import Filters, dead_letter_key

#: What ``dlq list`` shows without ``--count``.
_LIST_DEFAULT = 100


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(args.type, args.reason, args.text, args.start, args.end)


def _none_match(key: str, filters: Filters) -> str:
    return f"no dead letters{' match' if filters.given else ''} in {key}"


async def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """List dead letters, oldest first: one line each."""
    key = dead_letter_key(ctx.settings, args.stream)
    filters = _filters(args)
    limit = args.count or _LIST_DEFAULT
    # One more than shown, to tell whether there are more.
    page = await dead_letters.find(ctx.transport(key), key, filters, limit + 1)
    entries = page.items
    if args.json:
        listed = [dead_letter_json(i, f) for i, f in entries[:limit]]
        more = entries[limit][0] if len(entries) > limit else None
        out(json.dumps({"dead_letter_stream": key, "entries": listed, "next": more}))
        return 0
    if not entries:
        out(_none_match(key, filters))
        return 0
    rows = [
        [
            entry_id,
            field(fields, "dlq_id", "-"),
            field(fields, "type", "-"),
            field(fields, "dlq_reason", "-"),
            field(fields, "dlq_delivery_count", "-"),
            one_line(dead_letters.first_line(fields)),
        ]
        for entry_id, fields in entries[:limit]
    ]
    headers = ["ID", "ORIGINAL ID", "TYPE", "REASON", "DELIVERIES", "ERROR"]
    for line in table(headers, rows, right={4}):
        out(line)
    if len(entries) > limit:
        err(f"(first {limit} shown; more from --from {entries[limit][0]})")
    return 0


def _when(value: str) -> str:
    try:
        moment = datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        return value
    return f"{value}  ({moment:%Y-%m-%d %H:%M:%S} UTC)"


async def run_show(args: argparse.Namespace, ctx: Context) -> int:
    """Print one dead letter in full: every field, the error in full."""
    key = dead_letter_key(ctx.settings, args.stream)
    fields = await dead_letters.get(ctx.transport(key), key, args.id)
    out(f"dead letter {args.id} in {key}")
    names = [text(name) for name in fields]
    width = max(len(name) for name in names) if names else 0
    for name, value in zip(names, fields.values(), strict=True):
        shown = text(value)
        if name in ("timestamp", "dlq_at"):
            shown = _when(shown)
        first, *rest = shown.splitlines() or [""]
        out(f"{name.ljust(width)}  {first}".rstrip())
        for line in rest:
            out(f"{' ' * width}  {line}".rstrip())
    return 0


async def run_replay(args: argparse.Namespace, ctx: Context) -> int:
    """Put dead letters back on their original streams; print the new ids."""
    key = dead_letter_key(ctx.settings, args.stream)
    transport = ctx.transport(key)
    filters = _filters(args)
    if args.ids:
        entries = [
            (i, await dead_letters.get(transport, key, i))
            for i in dict.fromkeys(args.ids)
        ]
        problems = dead_letters.replay_problems(entries)
        if problems:
            raise CommandFailed(f"cannot replay: {problems[0]}; nothing replayed")
    else:
        page = await dead_letters.find(transport, key, filters, args.count)
        entries = page.items
    if not entries:
        out(_none_match(key, filters))
        return 0
    result = await dead_letters.replay(transport, key, entries)
    for entry_id, target, new_id in result.replayed:
        out(f"{entry_id} -> {target} {new_id}")
    out(f"replayed {plural(len(result.replayed), 'dead letter')} from {key}")
    for problem in result.problems:
        err(f"agentstream: not replayed: {problem}")
    return 1 if result.problems else 0


async def run_purge(args: argparse.Namespace, ctx: Context) -> int:
    """Delete matching dead letters (all without filters), after confirmation."""
    key = dead_letter_key(ctx.settings, args.stream)
    what = f"dlq purge deletes dead letters from {key}"
    confirm(None, args.yes, what)  # off a terminal, refuse before reading
    transport = ctx.transport(key)
    filters = _filters(args)
    page = await dead_letters.find(transport, key, filters, args.count)
    ids = [i for i, _ in page.items]
    if not ids:
        out(_none_match(key, filters))
        return 0
    confirm(f"Delete {plural(len(ids), 'dead letter')} from {key}?", args.yes, what)
    deleted = await dead_letters.purge(transport, key, ids)
    out(f"deleted {plural(deleted, 'dead letter')} from {key}")
    return 0


def dead_letter_json(entry_id: str, fields: dict[bytes, bytes]) -> dict[str, str]:
    """A dead letter as JSON: ``id`` and every field, decoded for display."""
    return {"id": entry_id} | {text(k): text(v) for k, v in fields.items()}
