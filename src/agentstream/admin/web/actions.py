"""The console's actions: replay, purge, claim, acknowledge, remove, pause.

Each is a POST with the CSRF token, in two steps: the first shows what it will
touch and how many, the second (``confirmed=1``) does it through the same
operation the CLI uses, and writes an audit line (who, what, how many).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentstream.admin import consumers, dead_letters, pending, subscriptions
from agentstream.admin._common import CommandFailed, plural
from agentstream.admin.web.support import (
    BadInput,
    Console,
    console_of,
    csrf_ok,
    entry_id,
    render,
)

__all__ = ["routes"]

audit = structlog.get_logger("agentstream.web.audit")

#: A dead-letter action over a filter touches at most this many entries.
_MAX_MATCH = 1_000_000


@dataclass
class Plan:
    """What an action will do: a sentence, how many it touches, and the doing."""

    summary: str
    count: int
    run: Callable[[], Awaitable[str]]
    back: str
    #: For an action over a filter: the newest entry it touches, so that the
    #: confirmed step touches no entry added after the operator saw the count.
    until: str | None = None


async def _dlq_selection(
    console: Console, index: int, form: FormData
) -> tuple[str, list[dead_letters.Entry], str, bool]:
    """The dead letters a form names: ``ids``, or all matching its filters."""
    sub = console.subscription(index)
    key = sub.dead_letter_key
    ops = console.ops(index)
    ids = [entry_id(str(i)) for i in form.getlist("ids")]
    if ids:
        entries = [(i, await dead_letters.get(ops, key, i)) for i in dict.fromkeys(ids)]
        return key, entries, f"{plural(len(entries), 'dead letter')} selected", False
    if form.get("all") != "1":
        raise BadInput("select dead letters, or choose all that match the filter")

    def get(name: str) -> str | None:
        return str(form.get(name, "")).strip() or None

    until = get("until")
    filters = dead_letters.Filters(
        get("type"), get("reason"), get("q"), "-",
        entry_id(until, "until") if until else "+",
    )  # fmt: skip
    page = await dead_letters.find(ops, key, filters, _MAX_MATCH)
    described = ", ".join(
        f"{name} {value!r}"
        for name, value in (("type", filters.type), ("reason", filters.reason),
                            ("error text", filters.text))
        if value
    ) or "no filter"  # fmt: skip
    return key, page.items, f"all dead letters matching {described}", True


async def _plan(request: Request, action: str, form: FormData) -> Plan:
    console = console_of(request)
    index = request.path_params["index"]
    sub = console.subscription(index)
    ops = console.ops(index)
    where = f"{sub.stream} (group {sub.group})"
    base = f"/s/{index}"

    if action in ("dlq-replay", "dlq-purge"):
        key, entries, what, by_filter = await _dlq_selection(console, index, form)
        ids = [i for i, _ in entries]
        until = ids[-1] if by_filter and ids else None
        if action == "dlq-replay":
            problems = dead_letters.replay_problems(entries)
            if problems and form.getlist("ids"):
                raise CommandFailed(f"cannot replay: {problems[0]}")

            async def replay() -> str:
                result = await dead_letters.replay(ops, key, entries)
                note = (
                    f"; {len(result.problems)} not replayed" if result.problems else ""
                )
                return f"replayed {plural(len(result.replayed), 'dead letter')} from {key}{note}"  # fmt: skip

            return Plan(f"Replay {what} from {key} onto their streams", len(ids),
                        replay, f"{base}/dead-letters", until)  # fmt: skip

        async def purge() -> str:
            deleted = await dead_letters.purge(ops, key, ids)
            return f"deleted {plural(deleted, 'dead letter')} from {key}"

        return Plan(f"Delete {what} from {key}", len(ids), purge,
                    f"{base}/dead-letters", until)  # fmt: skip

    if action in ("pending-claim", "pending-ack"):
        ids = list(dict.fromkeys(entry_id(str(i)) for i in form.getlist("ids")))
        if not ids:
            raise BadInput("no pending entry selected")
        for the_id in ids:
            await pending.show(ops, the_id)  # raises when not pending
        if action == "pending-claim":
            idle_ms = console.settings.reaper.max_backoff_ms

            async def claim() -> str:
                moved = await pending.redeliver(ops, ids, idle_ms)
                return f"handed {plural(len(moved), 'entry')} of {where} to the reaper for redelivery"  # fmt: skip

            return Plan(f"Hand {plural(len(ids), 'pending entry')} of {where} to "
                        "the reaper for redelivery", len(ids), claim,
                        f"{base}/pending")  # fmt: skip

        async def ack() -> str:
            acked = await pending.acknowledge(ops, ids)
            return f"acknowledged {plural(acked, 'entry')} of {where}"

        return Plan(f"Acknowledge {plural(len(ids), 'pending entry')} of {where} "
                    "without handling it", len(ids), ack, f"{base}/pending")  # fmt: skip

    if action == "consumer-remove":
        name = str(form.get("name", "")).strip()
        if not name:
            raise BadInput("no consumer named")

        async def remove() -> str:
            await consumers.remove_consumer(ops, name)
            return f"removed consumer {name} from {where}"

        return Plan(f"Remove consumer {name} (it owns nothing) from {where}", 1,
                    remove, f"{base}/consumers")  # fmt: skip

    if action in ("pause", "resume"):
        who = request.state.user

        async def toggle() -> str:
            if action == "pause":
                changed = await subscriptions.pause(ops, by=f"web:{who}")
                return f"{where} {'paused' if changed else 'was already paused'}"
            changed = await subscriptions.resume(ops)
            return f"{where} {'resumed' if changed else 'was not paused'}"

        verb = "Pause" if action == "pause" else "Resume"
        summary = (
            f"{verb} {where}: workers stop reading it within a second"
            if action == "pause"
            else f"{verb} {where}: workers read it again"
        )
        return Plan(summary, 1, toggle, "/")
    raise HTTPException(404, f"no action {action!r}")


async def act(request: Request) -> Response:
    """Check, confirm, do and audit one action."""
    console = console_of(request)
    if console.settings.web.read_only:
        raise HTTPException(403, "this console is read-only (web.read_only = true)")
    form = await request.form()
    if not csrf_ok(request, form):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")  # fmt: skip
    action = request.path_params["action"]
    try:
        plan = await _plan(request, action, form)
    except CommandFailed as exc:
        return render(request, "problem.html",
                      {"title": "Cannot do that", "message": str(exc)}, 409)  # fmt: skip
    if form.get("confirmed") != "1":
        hidden = [(k, str(v)) for k, v in form.multi_items()
                  if k not in ("csrf", "confirmed", "until")]  # fmt: skip
        if plan.until is not None:
            hidden.append(("until", plan.until))
        elif form.get("until"):
            hidden.append(("until", str(form["until"])))
        return render(request, "confirm.html",
                      {"plan": plan, "hidden": hidden, "action": request.url.path})  # fmt: skip
    try:
        message = await plan.run()
    except CommandFailed as exc:
        audit.warning("web_action_failed", who=request.state.user, action=action,
                      count=plan.count, error=str(exc))  # fmt: skip
        return render(request, "problem.html",
                      {"title": "Cannot do that", "message": str(exc)}, 409)  # fmt: skip
    audit.info(
        "web_action",
        who=request.state.user,
        action=action,
        subscription=request.path_params["index"],
        count=plan.count,
        result=message,
    )
    return render(request, "done.html", {"message": message, "back": plan.back})


def routes() -> list[Route]:
    """The action routes (POST only)."""
    return [Route("/s/{index:int}/actions/{action}", act, methods=["POST"])]
