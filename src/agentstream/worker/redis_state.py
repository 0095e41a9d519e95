"""Whether Redis answers, as every loop of one worker process sees it."""

from __future__ import annotations

import time

import structlog

from agentstream.errors import PermissionDenied
from agentstream.worker.consumer import describe_error

__all__ = ["RedisState"]

log = structlog.get_logger("agentstream.supervisor")


class RedisState:
    """Whether Redis answers; logs once per change of state, not per failure."""

    def __init__(self) -> None:
        self.up = True
        self.denial: str | None = None
        self.denied_at = 0.0
        self.errors: dict[str, int] = {}
        self.reconnects = 0
        #: Unix time of the last call Redis answered (0: none yet).
        self.last_contact_s = 0.0

    def failed(self, exc: BaseException) -> None:
        """Record a failed Redis call."""
        operation = getattr(exc, "operation", "other")
        self.errors[operation] = self.errors.get(operation, 0) + 1
        if self.up:
            self.up = False
            log.error("redis_unavailable", error=describe_error(exc))

    def denied(self, exc: PermissionDenied) -> None:
        """Record a command the ACL refused (logged once per message)."""
        self.errors[exc.operation] = self.errors.get(exc.operation, 0) + 1
        if self.denial != str(exc):
            log.error("redis_permission_denied", error=describe_error(exc))
        self.denial = str(exc)
        self.denied_at = time.monotonic()

    def recent_denial(self, within_s: float = 60.0) -> str | None:
        """The last ACL refusal if it happened within ``within_s``."""
        if self.denial is None or time.monotonic() - self.denied_at > within_s:
            return None
        return self.denial

    def answered(self) -> None:
        """Record a successful Redis call."""
        self.last_contact_s = time.time()
        if not self.up:
            self.up = True
            self.reconnects += 1
            log.info("redis_available")

    def take(self) -> tuple[dict[str, int], int]:
        """Errors by operation and reconnects since the last call."""
        errors, self.errors = self.errors, {}
        reconnects, self.reconnects = self.reconnects, 0
        return errors, reconnects
