"""Bounded, filtered paging over an ordered Redis range (XRANGE, XPENDING)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

#: Items read per call.
READ = 500


@dataclass(slots=True)
class Page(Generic[T]):
    """Matching items in range order; ``next_start`` (an exclusive bound such as
    ``(1-0``) when more may follow; ``scanned``: how many were examined."""

    items: list[T] = field(default_factory=list)
    next_start: str | None = None
    scanned: int = 0


async def collect(
    fetch: Callable[[str, int], Awaitable[list[T]]],
    id_of: Callable[[T], str],
    keep: Callable[[T], bool],
    start: str,
    limit: int | None,
    scan_limit: int | None = None,
) -> Page[T]:
    """Read ``fetch(start, count)`` pages until ``limit`` items pass ``keep``.

    Stops after ``scan_limit`` items examined (None: no bound), so that a filter
    matching little cannot make one call read a whole stream; ``next_start``
    then says where to go on.
    """
    page: Page[T] = Page()
    while limit is None or len(page.items) < limit:
        want = READ if scan_limit is None else min(READ, scan_limit - page.scanned)
        if want <= 0:
            page.next_start = start
            return page
        rows = await fetch(start, want)
        for i, item in enumerate(rows):
            page.scanned += 1
            if keep(item):
                page.items.append(item)
                if limit is not None and len(page.items) >= limit:
                    if i + 1 < len(rows) or len(rows) == want:
                        page.next_start = f"({id_of(item)}"
                    return page
        if len(rows) < want:
            return page
        start = f"({id_of(rows[-1])}"
    return page
