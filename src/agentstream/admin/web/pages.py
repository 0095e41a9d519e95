"""The console's pages: overview, consumers, pending entries, dead letters, tail.

Every list is one bounded read (a page of ``web.page_size``, or a scan of at
most ``_SCAN_LIMIT`` entries when a filter is applied), so pages stay fast on
streams of millions of entries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentstream.admin import consumers, dead_letters, pending, subscriptions
from agentstream.admin._common import CommandFailed
from agentstream.admin.web.support import (
    BadInput,
    NotFound,
    console_of,
    entry_id,
    fields_view,
    int_param,
    render,
)
from agentstream.errors import TransportError

__all__ = ["exception_handlers", "routes"]

log = structlog.get_logger("agentstream.web")

#: Entries examined per request when a filter narrows a list.
_SCAN_LIMIT = 10_000
#: Dead letters grouped by error on the dead-letter page (the newest).
_GROUP_SCAN = 10_000
#: Entries the live tail shows.
_TAIL_ROWS = 50


async def overview(request: Request) -> Response:
    return render(request, "overview.html", await _overview(request))


async def overview_table(request: Request) -> Response:
    return render(request, "_overview_table.html", await _overview(request))


async def _overview(request: Request) -> dict[str, Any]:
    console = console_of(request)
    states = await subscriptions.states(console.ctx)
    rates = [console.sampler.rates(i) for i in range(len(states))]
    return {
        "states": list(enumerate(zip(states, rates, strict=True))),
        "refresh_s": console.settings.web.refresh_s,
    }


async def consumers_page(request: Request) -> Response:
    index = request.path_params["index"]
    console = console_of(request)
    ops = console.ops(index)
    rows = await consumers.list_consumers(ops)
    workers = await consumers.list_workers(ops)
    return render(
        request,
        "consumers.html",
        {"index": index, "sub": console.subscription(index), "consumers": rows,
         "workers": workers},
    )  # fmt: skip


async def pending_page(request: Request) -> Response:
    index = request.path_params["index"]
    console = console_of(request)
    ops = console.ops(index)
    params = request.query_params
    after = params.get("after", "").strip()
    filters = pending.PendingFilters(
        consumer=params.get("consumer", "").strip() or None,
        min_idle_ms=int_param(request, "min_idle_ms"),
        min_deliveries=int_param(request, "min_deliveries", 1),
        start=f"({entry_id(after, 'after')}" if after else "-",
    )
    size = console.settings.web.page_size
    page = await pending.find(ops, filters, size, scan_limit=_SCAN_LIMIT)
    names = [c.name for c in await consumers.list_consumers(ops)]
    return render(
        request,
        "pending.html",
        {"index": index, "sub": console.subscription(index), "page": page,
         "filters": filters, "consumer_names": names,
         "next_after": page.next_start[1:] if page.next_start else None,
         "query": _query(request, "after")},
    )  # fmt: skip


async def pending_entry(request: Request) -> Response:
    index = request.path_params["index"]
    console = console_of(request)
    the_id = entry_id(request.path_params["entry_id"])
    detail = await pending.show(console.ops(index), the_id)
    return render(
        request,
        "pending_entry.html",
        {"index": index, "sub": console.subscription(index), "detail": detail,
         "fields": fields_view(detail.fields)},
    )  # fmt: skip


def dlq_filters(request: Request) -> dead_letters.Filters:
    """The dead-letter filters of a request's query (or form) parameters."""
    params = request.query_params

    def get(name: str) -> str | None:
        return params.get(name, "").strip() or None

    until = get("until")
    return dead_letters.Filters(
        type=get("type"),
        reason=get("reason"),
        text=get("q"),
        end=entry_id(until, "until") if until else "+",
    )


async def dead_letters_page(request: Request) -> Response:
    index = request.path_params["index"]
    console = console_of(request)
    sub = console.subscription(index)
    ops = console.ops(index)
    key = sub.dead_letter_key
    filters = dlq_filters(request)
    after = request.query_params.get("after", "").strip()
    if after:
        filters = dead_letters.Filters(
            filters.type, filters.reason, filters.text,
            f"({entry_id(after, 'after')}", filters.end,
        )  # fmt: skip
    size = console.settings.web.page_size
    page = await dead_letters.find(
        ops, key, filters, size, scan_limit=_SCAN_LIMIT if filters.given else None
    )
    groups, grouped = await dead_letters.error_groups(ops, key, _GROUP_SCAN)
    total = await ops.alength(key)
    rows = [
        {"id": i, "fields": dict(fields_view(f)), "error": dead_letters.first_line(f)}
        for i, f in page.items
    ]
    return render(
        request,
        "dead_letters.html",
        {"index": index, "sub": sub, "key": key, "rows": rows, "page": page,
         "total": total, "groups": groups[:20], "grouped": grouped,
         "filters": filters, "filtered": any((filters.type, filters.reason,
                                               filters.text)),
         "next_after": page.next_start[1:] if page.next_start else None,
         "query": _query(request, "after")},
    )  # fmt: skip


async def dead_letter_page(request: Request) -> Response:
    index = request.path_params["index"]
    console = console_of(request)
    sub = console.subscription(index)
    the_id = entry_id(request.path_params["entry_id"])
    fields = await dead_letters.get(console.ops(index), sub.dead_letter_key, the_id)
    view = fields_view(fields)
    return render(
        request,
        "dead_letter.html",
        {"index": index, "sub": sub, "id": the_id, "fields": view,
         "f": dict(view)},
    )  # fmt: skip


async def tail_page(request: Request) -> Response:
    index = request.path_params["index"]
    console = console_of(request)
    after = await console.ops(index).alast_generated_id()
    return render(
        request,
        "tail.html",
        {"index": index, "sub": console.subscription(index), "after": after},
    )


async def tail_rows(request: Request) -> Response:
    index = request.path_params["index"]
    console = console_of(request)
    after = entry_id(request.query_params.get("after", ""), "after")
    rows = await console.ops(index).arevrange_raw(None, "+", f"({after}", _TAIL_ROWS)
    return render(
        request,
        "_tail_rows.html",
        {"index": index, "after": after,
         "rows": [(i, dict(fields_view(f))) for i, f in rows]},
    )  # fmt: skip


def _query(request: Request, *drop: str) -> str:
    """The request's query string without ``drop`` (for pagination links)."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in drop]
    return urlencode(kept)


def routes() -> list[Route]:
    """The page routes."""
    s = "/s/{index:int}"
    return [
        Route("/", overview),
        Route("/partials/overview", overview_table),
        Route(f"{s}/consumers", consumers_page),
        Route(f"{s}/pending", pending_page),
        Route(f"{s}/pending/{{entry_id}}", pending_entry),
        Route(f"{s}/dead-letters", dead_letters_page),
        Route(f"{s}/dead-letters/{{entry_id}}", dead_letter_page),
        Route(f"{s}/tail", tail_page),
        Route(f"{s}/tail/rows", tail_rows),
    ]


def _problem(status: int, title: str) -> Callable[[Request, Exception], Awaitable[Response]]:  # fmt: skip
    async def handler(request: Request, exc: Exception) -> Response:
        if isinstance(exc, TransportError):
            log.warning("web_redis_error", path=request.url.path, error=str(exc))
        return render(
            request, "problem.html", {"title": title, "message": str(exc)}, status
        )

    return handler


async def _http_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = "Not found" if exc.status_code == 404 else "Request refused"
    return render(
        request, "problem.html", {"title": title, "message": exc.detail},
        exc.status_code,
    )  # fmt: skip


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:  # fmt: skip
    """Bad input, missing things and Redis failures as pages, never tracebacks."""
    return {
        BadInput: _problem(400, "Bad request"),
        NotFound: _problem(404, "Not found"),
        CommandFailed: _problem(404, "Not found"),
        TransportError: _problem(503, "Redis unavailable"),
        HTTPException: _http_problem,
    }
