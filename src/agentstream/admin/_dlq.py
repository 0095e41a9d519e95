"""``agentstream dlq``: list, show, replay and purge dead letters."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from agentstream.admin._common import (
    CommandFailed,
    Context,
    UsageError,
    err,
    field,
    one_line,
    out,
    plural,
    table,
    text,
)
from agentstream.config import Settings
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.core import RawFields
from agentstream.transport.keys import (
    derived_key,
    partition_streams,
    physical_subscriptions,
)
from agentstream.transport.permissions import Need, acheck_permissions

#: Entries read per XRANGE while filtering.
_PAGE = 500
#: Entries moved or deleted per MULTI / XDEL.
_CHUNK = 100
#: What ``dlq list`` shows without ``--count``.
_LIST_DEFAULT = 100
_DLQ_PREFIX = b"dlq_"

Entry = tuple[str, RawFields]


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters a command applies to."""

    type: str | None = None
    reason: str | None = None
    start: str = "-"
    end: str = "+"
    count: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filters:
        return cls(args.type, args.reason, args.start, args.end, args.count)

    @property
    def given(self) -> bool:
        return self != Filters()

    def matches(self, fields: RawFields) -> bool:
        """Whether an entry's type and reason match (shell-style wildcards)."""
        if self.type is not None and not fnmatchcase(field(fields, "type"), self.type):
            return False
        return self.reason is None or fnmatchcase(
            field(fields, "dlq_reason"), self.reason
        )


def dead_letter_key(settings: Settings, stream: str | None) -> str:
    """The dead-letter stream of ``stream`` (default: the first subscription's).

    A partitioned subscription has one dead-letter stream per partition: name
    the partition (``orders:{3}``); ``agentstream stats`` shows each and the total.

    Raises:
        UsageError: ``stream`` names a partitioned stream, not one partition.
    """
    cluster = settings.redis.is_cluster
    logical = settings.subscriptions
    if stream is None:
        stream = logical[0].stream
    for sub in logical:
        if sub.stream == stream and sub.partitions > 1:
            first, *_, last = partition_streams(sub.stream, sub.partitions)
            raise UsageError(
                f"{stream} has {sub.partitions} partitions, each with its own "
                f"dead-letter stream: name one with --stream ({first} ... {last})"
            )
        for physical in physical_subscriptions(sub, cluster=cluster):
            if physical.stream == stream:
                return physical.dead_letter_key
    return derived_key(stream, "dlq", cluster=cluster)


async def _select(
    transport: AdminOps, key: str, filters: Filters, limit: int | None
) -> AsyncIterator[Entry]:
    """Yield up to ``limit`` matching entries of ``key``, oldest first."""
    start, found = filters.start, 0
    while limit is None or found < limit:
        rows = await transport.arange_raw(key, start, filters.end, _PAGE)
        for entry_id, fields in rows:
            if filters.matches(fields):
                yield entry_id, fields
                found += 1
                if limit is not None and found >= limit:
                    return
        if len(rows) < _PAGE:
            return
        start = f"({rows[-1][0]}"


async def _get(transport: AdminOps, key: str, entry_id: str) -> RawFields:
    rows = await transport.arange_raw(key, entry_id, entry_id, 1)
    if not rows:
        raise CommandFailed(f"no dead letter {entry_id} in {key}")
    return rows[0][1]


def _none_match(key: str, filters: Filters) -> str:
    return f"no dead letters{' match' if filters.given else ''} in {key}"


async def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """List dead letters, oldest first: one line each."""
    key = dead_letter_key(ctx.settings, args.stream)
    transport = ctx.transport(key)
    filters = Filters.from_args(args)
    limit = filters.count or _LIST_DEFAULT
    # One more than shown, to tell whether there are more.
    entries = [e async for e in _select(transport, key, filters, limit + 1)]
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
            one_line(field(fields, "dlq_error").strip().partition("\n")[0]),
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
    fields = await _get(ctx.transport(key), key, args.id)
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


def _move(entry_id: str, fields: RawFields) -> tuple[str, bytes, RawFields] | str:
    """The move that replays an entry, or why it cannot be replayed.

    The target is the ``dlq_stream`` field's bytes as they are: a stream name
    that is not UTF-8 is replayed to that very key, not to a decoded look-alike.
    """
    target = fields.get(b"dlq_stream")
    if not target:
        return f"{entry_id} has no dlq_stream field"
    original = {k: v for k, v in fields.items() if not k.startswith(_DLQ_PREFIX)}
    if not original:
        return f"{entry_id} kept no event fields"
    return entry_id, target, original


async def run_replay(args: argparse.Namespace, ctx: Context) -> int:
    """Put dead letters back on their original streams; print the new ids."""
    key = dead_letter_key(ctx.settings, args.stream)
    transport = ctx.transport(key)
    filters = Filters.from_args(args)
    if args.ids:
        entries = [(i, await _get(transport, key, i)) for i in dict.fromkeys(args.ids)]
    else:
        entries = [e async for e in _select(transport, key, filters, filters.count)]
    moves, problems = [], []
    for entry_id, fields in entries:
        move = _move(entry_id, fields)
        if isinstance(move, str):
            problems.append(move)
        else:
            moves.append(move)
    if args.ids and problems:
        raise CommandFailed(f"cannot replay: {problems[0]}; nothing replayed")
    if not entries:
        out(_none_match(key, filters))
        return 0
    # An XDEL refused after its XADD would leave an entry in both streams:
    # the ACL is asked first, without writing (transport.permissions).
    targets = sorted({text(target) for _, target, _ in moves})
    await acheck_permissions(
        transport, [Need("xdel", key), *(Need("xadd", t) for t in targets)]
    )
    replayed = 0
    for i in range(0, len(moves), _CHUNK):
        chunk = moves[i : i + _CHUNK]
        new_ids = await transport.amove_entries(key, chunk)
        for (entry_id, target, _), new_id in zip(chunk, new_ids, strict=True):
            if new_id is None:
                problems.append(f"{entry_id}: already replayed or deleted")
                continue
            if not isinstance(new_id, str):  # refused: still in the DLQ
                problems.append(f"{entry_id}: {new_id}")
                continue
            out(f"{entry_id} -> {text(target)} {new_id}")
            replayed += 1
    out(f"replayed {plural(replayed, 'dead letter')} from {key}")
    for problem in problems:
        err(f"agentstream: not replayed: {problem}")
    return 1 if problems else 0


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


async def run_purge(args: argparse.Namespace, ctx: Context) -> int:
    """Delete matching dead letters (all without filters), after confirmation."""
    key = dead_letter_key(ctx.settings, args.stream)
    if not args.yes and not sys.stdin.isatty():
        raise UsageError(
            f"dlq purge deletes dead letters from {key}: add --yes to confirm "
            "(stdin is not a terminal, so it cannot ask)"
        )
    transport = ctx.transport(key)
    filters = Filters.from_args(args)
    ids = [i async for i, _ in _select(transport, key, filters, filters.count)]
    if not ids:
        out(_none_match(key, filters))
        return 0
    question = f"Delete {plural(len(ids), 'dead letter')} from {key}?"
    if not args.yes and not _confirm(question):
        raise CommandFailed("nothing deleted")
    deleted = 0
    for i in range(0, len(ids), _CHUNK * 10):
        deleted += await transport.adelete_entries(key, ids[i : i + _CHUNK * 10])
    out(f"deleted {plural(deleted, 'dead letter')} from {key}")
    return 0
