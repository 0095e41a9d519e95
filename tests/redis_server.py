"""Kept for tests written before the kit: import from ``agentstream.testing`` instead."""

from __future__ import annotations

from agentstream.testing import HOST, RedisServer, await_for, free_port, wait_for
from agentstream.testing.pytest_plugin import RedisServerFactory

__all__ = [
    "HOST",
    "RedisServer",
    "RedisServerFactory",
    "await_for",
    "free_port",
    "wait_for",
]
