"""Pending-entry operations shared by the CLI and the web console.

Browse a group's pending entries list (by consumer, idle time and delivery
count), look at one entry with the last error the worker recorded for it, hand
a stuck entry back for redelivery, or acknowledge it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentstream.admin._common import CommandFailed, no_group
from agentstream.admin._paging import Page, collect
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.core import NoGroup, PendingEntry, RawFields
from agentstream.transport.keys import RETRY_CONSUMER

__all__ = [
    "PendingDetail",
    "PendingFilters",
    "PendingPage",
    "acknowledge",
    "find",
    "redeliver",
    "show",
]


@dataclass(frozen=True, slots=True)
class PendingFilters:
    """Which pending entries to list.

    ``consumer``: owned by this consumer; ``min_idle_ms``: idle at least this
    long (XPENDING IDLE); ``min_deliveries``: delivered at least this many times;
    ``start``: an XPENDING bound (``(id`` exclusive) to page on from.
    """

    consumer: str | None = None
    min_idle_ms: int | None = None
    min_deliveries: int | None = None
    start: str = "-"


PendingPage = Page[PendingEntry]


async def find(
    ops: AdminOps, filters: PendingFilters, limit: int, scan_limit: int = 10_000
) -> PendingPage:
    """Up to ``limit`` pending entries matching ``filters``, oldest id first.

    XPENDING filters by consumer and idle time itself; the delivery count is
    checked here, over at most ``scan_limit`` entries per call.

    Raises:
        CommandFailed: the stream or the group does not exist.
    """

    async def fetch(start: str, count: int) -> list[PendingEntry]:
        try:
            return await ops.apending_page(
                count,
                start=start,
                consumer=filters.consumer,
                min_idle_ms=filters.min_idle_ms,
            )
        except NoGroup:
            raise no_group(ops) from None

    least = filters.min_deliveries or 0
    return await collect(
        fetch, lambda e: e.id, lambda e: e.delivery_count >= least,
        filters.start, limit, scan_limit,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PendingDetail:
    """One pending entry: who holds it, its fields (None if trimmed), last error."""

    entry: PendingEntry
    fields: RawFields | None
    last_error: str | None


async def show(ops: AdminOps, entry_id: str) -> PendingDetail:
    """One pending entry in full.

    Raises:
        CommandFailed: the group is missing, or ``entry_id`` is not pending.
    """
    try:
        rows = await ops.apending_page(1, start=entry_id, end=entry_id)
    except NoGroup:
        raise no_group(ops) from None
    if not rows:
        raise CommandFailed(
            f"{entry_id} is not pending in group {ops.group!r} of {ops.stream!r}"
        )
    data = await ops.arange_raw(None, entry_id, entry_id, 1)
    (error,) = await ops.alast_errors([entry_id])
    return PendingDetail(rows[0], data[0][1] if data else None, error)


async def redeliver(ops: AdminOps, ids: list[str], idle_ms: int) -> list[str]:
    """Hand pending ``ids`` to the parking consumer, due for redelivery now.

    The entries go to ``agentstream-retry`` as if idle for ``idle_ms`` (pass
    ``reaper.max_backoff_ms``, above any backoff), so the next reaper sweep of
    any running worker claims and handles them; the delivery count stays.
    Returns the ids handed over (ids not pending are skipped).

    Raises:
        CommandFailed: the stream or the group does not exist.
    """
    try:
        return await ops.ahand_over(ids, RETRY_CONSUMER, idle_ms)
    except NoGroup:
        raise no_group(ops) from None


async def acknowledge(ops: AdminOps, ids: list[str]) -> int:
    """Acknowledge pending ``ids`` (XACK): they will not be handled again.

    Returns how many were pending.

    Raises:
        CommandFailed: the stream or the group does not exist.
    """
    try:
        return await ops.aacknowledge(ids)
    except NoGroup:
        raise no_group(ops) from None
