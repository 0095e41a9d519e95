"""Health: liveness and readiness, served as /healthz and /readyz."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import anyio

__all__ = [
    "HEARTBEAT_INTERVAL_S",
    "HEARTBEAT_STALE_S",
    "Check",
    "Health",
    "Heartbeat",
    "check_loops",
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
