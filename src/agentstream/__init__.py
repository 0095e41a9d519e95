"""agentstream: a resilient Redis Streams worker pool for agent event streams."""

from __future__ import annotations

from agentstream._version import __version__
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
