"""App: the registry of event handlers, filled by a decorator."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agentstream.errors import HandlerConflict
from agentstream.event import Event

__all__ = ["ANY_STREAM", "ANY_TYPE", "App", "Handler", "OrderKey"]

#: The stream key of handlers registered without ``stream=``.
ANY_STREAM = ""
#: The event type of a fallback handler.
ANY_TYPE = "*"

# A partition "name:{3}" of a partitioned stream (transport.keys).
_PARTITION_RE = re.compile(r"^(?P<stream>.+):\{\d+\}$")

HandlerFunc = Callable[[Event], Awaitable[None]] | Callable[[Event], None]
#: Returns an event's ordering key, or None for an event that needs no order.
OrderKey = Callable[[Event], str | None]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler function and what it was registered for."""

    func: Callable[[Event], Any]
    is_async: bool
    stream: str
    event_type: str

    @property
    def name(self) -> str:
        """The handler's qualified name, for logs and listings."""
        module = getattr(self.func, "__module__", "?")
        return f"{module}.{getattr(self.func, '__qualname__', repr(self.func))}"


class App:
    """The set of event handlers a worker runs.

    Example:
        >>> app = App()
        >>> @app.handler("token")
        ... async def on_token(event: Event) -> None: ...

    A handler registered without ``stream=`` serves every subscribed stream; one
    with ``stream=`` serves that stream only and wins over the former. The type
    ``"*"`` registers a fallback for types that have no handler of their own.

    Args:
        order_key: a function of the event returning its ordering key (a
            ``str``) or None. Within one worker process, events with the same
            key start in stream order and never overlap. A subscription's own
            ``order_key`` setting wins over it for that stream. The function
            runs on the event loop for every event: keep it cheap; if it
            raises, the event is handled with no key and the error logged.
    """

    def __init__(self, *, order_key: OrderKey | None = None) -> None:
        self.order_key = order_key
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._cache: dict[tuple[str, str], Handler | None] = {}

    def handler(self, *event_types: str, stream: str | None = None) -> Callable[[F], F]:
        """Register the decorated function for ``event_types`` (on ``stream``).

        Async functions run on the event loop; plain functions run in a worker
        thread so that they cannot stall it.

        Raises:
            HandlerConflict: a handler is already registered for one of the
                types on the same stream.
            ValueError: no event type was given.
        """
        if not event_types:
            raise ValueError("app.handler() needs at least one event type")
        for event_type in event_types:
            if not isinstance(event_type, str) or not event_type:
                raise ValueError(
                    f"event types must be non-empty strings: {event_type!r}"
                )
        key_stream = stream or ANY_STREAM

        def register(func: F) -> F:
            is_async = inspect.iscoroutinefunction(func)
            for event_type in event_types:
                key = (key_stream, event_type)
                existing = self._handlers.get(key)
                if existing is not None:
                    where = f"stream {stream!r}" if stream else "any stream"
                    new = Handler(func, is_async, key_stream, event_type)
                    raise HandlerConflict(
                        f"two handlers for event type {event_type!r} on {where}: "
                        f"{existing.name} and {new.name}"
                    )
                self._handlers[key] = Handler(func, is_async, key_stream, event_type)
            self._cache.clear()
            return func

        return register

    def event_types(self) -> frozenset[str]:
        """The event types with a handler of their own (not the ``*`` fallback)."""
        return frozenset(h.event_type for h in self._handlers.values()) - {ANY_TYPE}

    def resolve(self, stream: str, event_type: str) -> Handler | None:
        """Return the handler for an event, or None when nothing matches.

        Order: the stream's own handler for the type, then the any-stream one,
        then the stream's ``"*"`` fallback, then the any-stream ``"*"``. A
        partition ``name:{3}`` of a partitioned stream resolves as ``name``.
        """
        key = (stream, event_type)
        try:
            return self._cache[key]
        except KeyError:
            pass
        handlers = self._handlers
        partition = _PARTITION_RE.match(stream)
        if partition is not None and stream not in self.streams():
            stream = partition["stream"]
        found = (
            handlers.get((stream, event_type))
            or handlers.get((ANY_STREAM, event_type))
            or handlers.get((stream, ANY_TYPE))
            or handlers.get((ANY_STREAM, ANY_TYPE))
        )
        if len(self._cache) < 10_000:  # producers may invent unbounded types
            self._cache[key] = found
        return found

    @property
    def handlers(self) -> list[Handler]:
        """Every registered handler, in registration order."""
        return list(self._handlers.values())

    def streams(self) -> set[str]:
        """The streams named explicitly by handlers."""
        return {h.stream for h in self._handlers.values() if h.stream}
