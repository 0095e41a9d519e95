"""One warning per event type that no handler takes, per process."""

from __future__ import annotations

import time

import structlog

__all__ = ["UnhandledTypes", "warn_unhandled"]

log = structlog.get_logger("agentstream.consumer")

#: Distinct types remembered; past it, a summary line at most once a minute.
MAX_REMEMBERED = 1000
SUMMARY_INTERVAL_S = 60.0


class UnhandledTypes:
    """Remembers which unhandled types were logged, so each is logged once.

    A typo such as ``@app.handler("tool-call")`` otherwise acknowledges every
    ``tool_call`` without a word. Producers may invent types without end, so at
    most ``MAX_REMEMBERED`` are remembered; the rest are summed in one line a
    minute.
    """

    def __init__(self, max_remembered: int = MAX_REMEMBERED) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._max = max_remembered
        self._more = 0
        self._summary_at = 0.0

    def seen(self, stream: str, event_type: str, action: str) -> None:
        """Record one event of a type without a handler; log it if new."""
        key = (stream, event_type)
        if key in self._seen:
            return
        if len(self._seen) < self._max:
            self._seen.add(key)
            log.warning(
                "event_type_unhandled",
                stream=stream,
                type=event_type[:200],
                action=action,
                hint="no handler matches this type (a typo in @app.handler?); "
                "logged once per type",
            )
            return
        self._more += 1
        now = time.monotonic()
        if now - self._summary_at >= SUMMARY_INTERVAL_S:
            self._summary_at = now
            log.warning("event_types_unhandled_more", events=self._more)
            self._more = 0


_PROCESS = UnhandledTypes()


def warn_unhandled(stream: str, event_type: str, action: str) -> None:
    """Log an unhandled type once per process (see `UnhandledTypes`)."""
    _PROCESS.seen(stream, event_type, action)
