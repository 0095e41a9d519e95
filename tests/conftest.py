"""Shared fixtures: the anyio backend.

The redis-server fixtures (``redis_server``, ``redis_url``, ``fresh_redis``,
``redis_factory``, ``redis_server_bin``, ``stream_name``) come from the
``agentstream.testing`` pytest plugin, which users get too.
"""

from __future__ import annotations

import pytest


@pytest.fixture(name="anyio_backend", scope="session")
def _anyio_backend() -> str:
    # redis-py's async client runs on asyncio only.
    return "asyncio"
