"""Whether Redis answers, as every loop of one worker process sees it.

One ``RedisState`` per process is the pool's ``CallObserver``: every command any
transport of the process sends reports to it, so the first loop that sees Redis
answer again wakes every loop waiting for it.
"""

from __future__ import annotations

import time

import anyio
import structlog

from agentstream.errors import (
    ConnectionError,
    PermissionDenied,
    Refused,
    TransportError,
)
from agentstream.worker.consumer import describe_error

__all__ = ["REFUSAL_WINDOW_S", "RedisState", "redis_cause"]

log = structlog.get_logger("agentstream.supervisor")

#: How long after the last refusal readiness still reports it, in seconds.
REFUSAL_WINDOW_S = 60.0


def redis_cause(exc: BaseException) -> BaseException:
    """The Redis error behind ``exc``, or ``exc`` when it is not only that.

    Task groups wrap failures in (nested) exception groups: one of a single
    exception is that exception; one whose leaves are all ``TransportError``
    (two consumers of a task group losing the connection at once) stands for
    its first leaf, a refusal before a lost connection, a lost connection before
    any other Redis error.
    """
    leaves: list[BaseException] = []
    todo = [exc]
    while todo:
        item = todo.pop()
        if isinstance(item, BaseExceptionGroup):
            todo.extend(reversed(item.exceptions))
        else:
            leaves.append(item)
    if len(leaves) == 1:
        return leaves[0]
    if not leaves or not all(isinstance(e, TransportError) for e in leaves):
        return exc
    for kind in (Refused, ConnectionError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


class RedisState:
    """Whether Redis answers, and whether it refuses commands.

    Three states: up; down (unreachable: ``ConnectionError``); refusing (it
    answers, but refused a command within ``REFUSAL_WINDOW_S``: OOM, READONLY,
    MISCONF, BUSY, NOPERM...). Each change is logged once; a failure already
    reported (the same exception object, seen again by a supervising loop) is
    not counted twice.
    """

    def __init__(self) -> None:
        self.up = True
        self.refusal: str | None = None
        self.refusal_reason: str | None = None
        self.refused_at = 0.0
        self.errors: dict[str, int] = {}
        self.refusals: dict[str, int] = {}
        self.reconnects = 0
        #: Unix time of the last call Redis answered (0: none yet).
        self.last_contact_s = 0.0
        self._answer: anyio.Event | None = None  # made by the first waiter
        self._last: BaseException | None = None

    # -- CallObserver --------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """Record a failed Redis call (unreachable, or refused)."""
        if exc is self._last:
            return
        self._last = exc
        operation = getattr(exc, "operation", "other")
        self.errors[operation] = self.errors.get(operation, 0) + 1
        if isinstance(exc, Refused):
            self._refused(exc)
            return
        if not isinstance(exc, ConnectionError) and isinstance(exc, TransportError):
            return  # Redis answered: an error of the command, not of the server
        if self.up:
            self.up = False
            log.error("redis_unavailable", error=describe_error(exc))

    def answered(self) -> None:
        """Record that Redis answered a call; wakes every ``wait_answer()``."""
        self.last_contact_s = time.time()
        if not self.up:
            self.up = True
            self.reconnects += 1
            if self._answer is not None:
                self._answer.set()
                self._answer = None
            log.info("redis_available")

    # -- readers ---------------------------------------------------------------------

    def _refused(self, exc: Refused) -> None:
        now = time.monotonic()
        self.refusals[exc.reason] = self.refusals.get(exc.reason, 0) + 1
        fresh = now - self.refused_at > REFUSAL_WINDOW_S
        if fresh or self.refusal != str(exc):
            if isinstance(exc, PermissionDenied):
                log.error(
                    "redis_permission_denied",
                    reason=exc.reason,
                    command=exc.command,
                    error=describe_error(exc),
                )
            else:
                log.error("redis_refused", reason=exc.reason, error=describe_error(exc))
        self.refusal = str(exc)
        self.refusal_reason = exc.reason
        self.refused_at = now
        self.answered()  # a refusal is an answer: the server is reachable

    def recent_refusal(self, within_s: float = REFUSAL_WINDOW_S) -> str | None:
        """The last refusal's message if it happened within ``within_s``."""
        if self.refusal is None or time.monotonic() - self.refused_at > within_s:
            return None
        return self.refusal

    def recent_refusal_reason(self, within_s: float = REFUSAL_WINDOW_S) -> str | None:
        """The last refusal's code (``"OOM"``...) if it happened within ``within_s``."""
        return None if self.recent_refusal(within_s) is None else self.refusal_reason

    async def wait_answer(self) -> None:
        """Return once Redis answers (at once while it is up)."""
        if self.up:
            return
        if self._answer is None:
            self._answer = anyio.Event()
        await self._answer.wait()

    def take(self) -> tuple[dict[str, int], int, dict[str, int]]:
        """Errors by operation, reconnects and refusals by reason since last call."""
        errors, self.errors = self.errors, {}
        reconnects, self.reconnects = self.reconnects, 0
        refusals, self.refusals = self.refusals, {}
        return errors, reconnects, refusals
