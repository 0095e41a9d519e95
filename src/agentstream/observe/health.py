"""Health: liveness and readiness, served as /healthz and /readyz."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import anyio

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_STALE_S",
    "STATUS_DIR_ENV",
    "Check",
    "Health",
    "Heartbeat",
    "ProcessStatus",
    "check_children",
    "check_loops",
    "read_status",
    "write_status",
]

#: A probe: whether the condition holds, and why (or why not).
Check = Callable[[], tuple[bool, str]]

HEARTBEAT_INTERVAL_S = 0.5
#: An event loop that has not run the heartbeat for this long is stuck.
HEARTBEAT_STALE_S = 5.0


class Heartbeat:
    """A timestamp that a task on the event loop keeps fresh.

    Read from the server thread: a stale beat means the loop stopped running
    tasks (a blocking call, a busy loop), whatever each consumer reports.
    """

    def __init__(self) -> None:
        self.at = time.monotonic()

    async def run(self) -> None:
        """Beat every ``HEARTBEAT_INTERVAL_S`` until cancelled."""
        while True:
            self.at = time.monotonic()
            await anyio.sleep(HEARTBEAT_INTERVAL_S)

    def check(self, now: float | None = None) -> tuple[bool, str]:
        """Whether the loop beat within ``HEARTBEAT_STALE_S``."""
        age = (time.monotonic() if now is None else now) - self.at
        if age > HEARTBEAT_STALE_S:
            return False, f"event loop unresponsive for {age:.1f}s"
        return True, "ok"


def check_loops(
    loops: Iterable[tuple[str, float, float]], now: float | None = None
) -> tuple[bool, str]:
    """Whether every loop ticked in time; each loop is ``(name, tick, deadline_s)``.

    ``tick`` is a ``time.monotonic()`` value.
    """
    now = time.monotonic() if now is None else now
    stale = [
        f"{name} ({now - tick:.0f}s > {deadline_s:.0f}s)"
        for name, tick, deadline_s in loops
        if now - tick > deadline_s
    ]
    if stale:
        return False, "loops not ticking: " + ", ".join(stale)
    return True, "ok"


class Health:
    """Routes ``/healthz`` and ``/readyz`` to two checks, the rest to an app.

    Checks run in the server's thread; they must only read state, never await.
    """

    def __init__(self, liveness: Check, readiness: Check) -> None:
        self._routes = {"/healthz": liveness, "/readyz": readiness}

    def wrap(self, app: WSGIApplication) -> WSGIApplication:
        """Return a WSGI app serving the probes in front of ``app``."""

        def routed(
            environ: WSGIEnvironment, start_response: StartResponse
        ) -> Iterable[bytes]:
            check = self._routes.get(environ.get("PATH_INFO", ""))
            if check is None:
                return app(environ, start_response)
            return self._probe(check, start_response)

        return routed

    @staticmethod
    def _probe(check: Check, start_response: StartResponse) -> list[bytes]:
        try:
            ok, reason = check()
        except Exception as exc:  # noqa: BLE001 - a failing check is a "no"
            ok, reason = False, f"check failed: {type(exc).__name__}: {exc}"
        body = f"{'ok' if ok else 'unavailable'}: {reason}\n".encode()
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]


# -- several worker processes --------------------------------------------------

#: Where a multi-process parent's children write their status files.
STATUS_DIR_ENV = "AGENTSTREAM_STATUS_DIR"


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """What one worker process says of itself, written every heartbeat.

    ``at`` is a ``time.monotonic()`` value (one clock for every process of the
    machine): a child whose event loop stops (SIGSTOP, a blocking call) stops
    writing, and its status goes stale.
    """

    pid: int
    at: float
    started: bool
    live: bool
    live_reason: str
    ready: bool
    ready_reason: str


def write_status(path: Path, status: ProcessStatus) -> None:
    """Replace ``path`` with ``status`` atomically (write, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(status)), encoding="utf-8")
    os.replace(tmp, path)


def read_status(path: Path) -> ProcessStatus | None:
    """The status in ``path``, or None when it is missing or unreadable."""
    try:
        return ProcessStatus(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def check_children(
    children: dict[int, tuple[int, ProcessStatus | None]],
    expected: int,
    now: float | None = None,
) -> tuple[tuple[bool, str], tuple[bool, str], bool]:
    """Liveness, readiness, and whether all reached Redis, from children's statuses.

    ``children`` maps a process index to its pid and last status. A child that
    has not written yet (just started) counts as live but not ready; a status
    older than ``HEARTBEAT_STALE_S`` means a stuck or stopped child.
    """
    now = time.monotonic() if now is None else now
    dead: list[str] = []
    unready: list[str] = []
    started = len(children) == expected
    for index in range(expected):
        if index not in children:
            unready.append(f"process {index}: not running")
            continue
        pid, status = children[index]
        if status is None or status.pid != pid:
            unready.append(f"process {index}: starting")
            started = False
            continue
        age = now - status.at
        if age > HEARTBEAT_STALE_S:
            dead.append(f"process {index} (pid {pid}) unresponsive for {age:.1f}s")
            unready.append(f"process {index}: unresponsive")
            continue
        started = started and status.started
        if not status.live:
            dead.append(f"process {index}: {status.live_reason}")
        if not status.ready:
            unready.append(f"process {index}: {status.ready_reason}")
    live = (False, "; ".join(dead)) if dead else (True, "ok")
    ready = (False, "; ".join(unready)) if unready else (True, "ok")
    return live, ready, started
