"""``agentstream publish`` and ``agentstream tail``."""

from __future__ import annotations

import argparse
import sys
from contextlib import aclosing

from agentstream.admin._common import Context, err, field, json_object, one_line, out
from agentstream.transport.core import RawFields


async def run_publish(args: argparse.Namespace, ctx: Context) -> int:
    """Publish one event; print its id."""
    data = json_object(args.data, "JSON_DATA")
    metadata = json_object(args.metadata, "--metadata") if args.metadata else None
    transport = ctx.transport(args.stream)
    # A subscribed stream in processed retention must not be trimmed by length.
    if any(
        sub.stream == args.stream and sub.retention.mode == "processed"
        for sub in ctx.settings.subscriptions
    ):
        transport.retention = "processed"
    out(await transport.apublish(args.type, data, metadata))
    return 0


def event_line(entry_id: str, fields: RawFields) -> str:
    """``id type data-json [metadata-json]``, as the wire holds them."""
    parts = [entry_id, field(fields, "type", "unknown"), field(fields, "data", "{}")]
    if b"metadata" in fields:
        parts.append(field(fields, "metadata"))
    return " ".join(one_line(part) for part in parts)


async def run_tail(args: argparse.Namespace, ctx: Context) -> int:
    """Print events as they arrive, until Ctrl-C or ``--count`` events."""
    transport = ctx.transport(args.stream)
    # Resolve "$" now, so that nothing published after the line below is missed.
    after = args.start or await transport.alast_generated_id()
    err(f"following {args.stream} after {after} (Ctrl-C to stop)")
    seen = 0
    async with aclosing(transport.asubscribe_raw(after)) as events:
        async for entry_id, fields in events:
            out(event_line(entry_id, fields))
            sys.stdout.flush()
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return 0
