"""Dead-letter operations shared by the CLI and the web console.

Find (paginated, filtered, bounded), show, replay, purge, and group errors.
Each reads or changes Redis through :class:`AdminOps`; none prints anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from agentstream.admin._common import CommandFailed, UsageError, text
from agentstream.admin._common import field as field_text
from agentstream.admin._paging import READ, Page, collect
from agentstream.config import Settings
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.core import RawFields
from agentstream.transport.keys import (
    derived_key,
    partition_streams,
    physical_subscriptions,
)
from agentstream.transport.permissions import Need, acheck_permissions

__all__ = [
    "DeadLetterPage",
    "Entry",
    "ErrorGroup",
    "Filters",
    "ReplayResult",
    "dead_letter_key",
    "error_groups",
    "find",
    "first_line",
    "get",
    "purge",
    "replay",
]

#: Entries moved per pipeline, or deleted per XDEL.
_CHUNK = 100
_DLQ_PREFIX = b"dlq_"

Entry = tuple[str, RawFields]


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters an operation applies to.

    ``type`` and ``reason`` are shell-style patterns (``max*``); ``text`` is a
    case-insensitive substring of the error; ``start`` and ``end`` are
    dead-letter ids, inclusive (``(id`` exclusive), as XRANGE takes them.
    """

    type: str | None = None
    reason: str | None = None
    text: str | None = None
    start: str = "-"
    end: str = "+"

    @property
    def given(self) -> bool:
        """Whether anything narrows the selection."""
        return self != Filters()

    def matches(self, fields: RawFields) -> bool:
        """Whether an entry's type, reason and error match."""
        if self.type and not fnmatchcase(field_text(fields, "type"), self.type):
            return False
        if self.reason and not fnmatchcase(
            field_text(fields, "dlq_reason"), self.reason
        ):
            return False
        return not self.text or (
            self.text.casefold() in field_text(fields, "dlq_error").casefold()
        )


DeadLetterPage = Page[Entry]


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


def first_line(fields: RawFields) -> str:
    """The first line of a dead letter's error (its ``Type: message``)."""
    return field_text(fields, "dlq_error").strip().partition("\n")[0]


async def find(
    ops: AdminOps,
    key: str,
    filters: Filters,
    limit: int | None,
    scan_limit: int | None = None,
) -> DeadLetterPage:
    """Up to ``limit`` matching entries of ``key``, oldest first.

    XRANGE in pages of 500, at most ``scan_limit`` entries examined (None: no
    bound); ``next_start`` says where to go on.
    """

    async def fetch(start: str, count: int) -> list[Entry]:
        return await ops.arange_raw(key, start, filters.end, count)

    return await collect(
        fetch, lambda e: e[0], lambda e: filters.matches(e[1]),
        filters.start, limit, scan_limit,
    )  # fmt: skip


async def get(ops: AdminOps, key: str, entry_id: str) -> RawFields:
    """One dead letter's fields.

    Raises:
        CommandFailed: there is no entry ``entry_id`` in ``key``.
    """
    rows = await ops.arange_raw(key, entry_id, entry_id, 1)
    if not rows:
        raise CommandFailed(f"no dead letter {entry_id} in {key}")
    return rows[0][1]


@dataclass(slots=True)
class ReplayResult:
    """What a replay did: ``(dead-letter id, stream, new id)`` and what it could not."""

    replayed: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


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


def replay_problems(entries: Sequence[Entry]) -> list[str]:
    """Why some of ``entries`` cannot be replayed (empty when all can)."""
    return [m for i, f in entries if isinstance(m := _move(i, f), str)]


async def replay(ops: AdminOps, key: str, entries: Sequence[Entry]) -> ReplayResult:
    """Put each entry back on its original stream, atomically per entry.

    The original fields are added to ``dlq_stream`` (XADD) and, only once that
    succeeded, the dead letter deleted (XDEL), in one Lua script and only if it
    was still there: an entry replayed twice at once is added once, and one
    whose XADD is refused stays in the dead-letter stream (a problem).
    """
    result = ReplayResult()
    moves = []
    for entry_id, fields in entries:
        move = _move(entry_id, fields)
        if isinstance(move, str):
            result.problems.append(move)
        else:
            moves.append(move)
    if moves:
        # An XDEL refused after its XADD would leave an entry in both streams:
        # the ACL is asked first, without writing (transport.permissions).
        targets = sorted({text(target) for _, target, _ in moves})
        await acheck_permissions(
            ops, [Need("xdel", key), *(Need("xadd", t) for t in targets)]
        )
    for i in range(0, len(moves), _CHUNK):
        chunk = moves[i : i + _CHUNK]
        new_ids = await ops.amove_entries(key, chunk)
        for (entry_id, target, _), new_id in zip(chunk, new_ids, strict=True):
            if new_id is None:
                result.problems.append(f"{entry_id}: already replayed or deleted")
            elif not isinstance(new_id, str):  # refused: still in the DLQ
                result.problems.append(f"{entry_id}: {new_id}")
            else:
                result.replayed.append((entry_id, text(target), new_id))
    return result


async def purge(ops: AdminOps, key: str, ids: Sequence[str]) -> int:
    """Delete dead letters by id (XDEL, 1,000 per call); returns how many existed."""
    deleted = 0
    for i in range(0, len(ids), _CHUNK * 10):
        deleted += await ops.adelete_entries(key, ids[i : i + _CHUNK * 10])
    return deleted


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Dead letters whose errors share a first line."""

    first_line: str
    count: int
    latest_id: str


async def error_groups(
    ops: AdminOps, key: str, scan_limit: int
) -> tuple[list[ErrorGroup], int]:
    """The newest ``scan_limit`` dead letters grouped by their error's first line.

    Most common first. Returns the groups and how many entries were read
    (XREVRANGE in pages of 500).
    """
    counts: Counter[str] = Counter()
    latest: dict[str, str] = {}
    end, scanned = "+", 0
    while scanned < scan_limit:
        want = min(READ, scan_limit - scanned)
        rows = await ops.arevrange_raw(key, end, "-", want)
        for entry_id, fields in rows:
            line = first_line(fields) or "(no error recorded)"
            counts[line] += 1
            latest.setdefault(line, entry_id)
        scanned += len(rows)
        if len(rows) < want:
            break
        end = f"({rows[-1][0]}"
    groups = [ErrorGroup(line, n, latest[line]) for line, n in counts.most_common()]
    return groups, scanned
