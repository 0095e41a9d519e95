"""agentstream: a resilient Redis Streams worker pool for agent event streams.

The names below load on first use (PEP 562), so that ``import agentstream``
costs nothing until one is used; in particular the console scripts' Ctrl-C
handling (``agentstream._entry``) is in force from their first moments on.
"""

from __future__ import annotations

from agentstream._version import __version__

# Not typing.TYPE_CHECKING: importing typing (re, enum...) is what takes time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agentstream.app import App
    from agentstream.config import Settings, load_settings
    from agentstream.errors import (
        AgentStreamError,
        AuthenticationError,
        ConfigError,
        ConnectionError,
        DeadLetter,
        HandlerConflict,
        PermissionDenied,
        Retry,
        TransportError,
    )
    from agentstream.event import Event
    from agentstream.transport import RedisStreamTransport
    from agentstream.transport.pool import RedisConnectionPool

__all__ = [
    "AgentStreamError",
    "App",
    "AuthenticationError",
    "ConfigError",
    "ConnectionError",
    "DeadLetter",
    "Event",
    "HandlerConflict",
    "PermissionDenied",
    "RedisConnectionPool",
    "RedisStreamTransport",
    "Retry",
    "Settings",
    "TransportError",
    "__version__",
    "load_settings",
]

_ERRORS = (
    "AgentStreamError",
    "AuthenticationError",
    "ConfigError",
    "ConnectionError",
    "DeadLetter",
    "HandlerConflict",
    "PermissionDenied",
    "Retry",
    "TransportError",
)
_HOMES: dict[str, str] = {
    "App": "agentstream.app",
    "Settings": "agentstream.config",
    "load_settings": "agentstream.config",
    "Event": "agentstream.event",
    "RedisStreamTransport": "agentstream.transport",
    "RedisConnectionPool": "agentstream.transport.pool",
    **dict.fromkeys(_ERRORS, "agentstream.errors"),
}


def __getattr__(name: str) -> Any:
    import importlib

    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'agentstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
