"""Test your handlers against a real Redis: a throwaway server and an in-process worker.

    from agentstream.testing import RedisServer, run_worker

    with RedisServer(tmp_path) as server:
        async with run_worker(app, server.url, streams=["agent_output"]) as worker:
            entry_id = await worker.publish("token", {"token": "hi"})
            await worker.drained()
            assert (await worker.outcome(entry_id)).acked

Installed with agentstream, a pytest plugin provides the fixtures
``redis_server`` (one per session), ``redis_url``, ``fresh_redis`` (one per
test), ``redis_factory``, ``redis_server_bin`` and ``stream_name``; see
:mod:`agentstream.testing.pytest_plugin`. The server binary comes from
``AGENTSTREAM_REDIS_SERVER`` (default: ``redis-server`` on ``PATH``).
"""

from __future__ import annotations

from agentstream.testing.executable import (
    SERVER_ENV,
    ServerNotFound,
    ServerVersion,
    server_executable,
    server_version,
)
from agentstream.testing.server import (
    HOST,
    RedisServer,
    TlsFiles,
    TlsUnavailable,
    free_port,
)
from agentstream.testing.waiting import await_for, wait_for
from agentstream.testing.worker import (
    HandlerCall,
    NotDrained,
    Outcome,
    RunningWorker,
    run_worker,
    worker_settings,
)

__all__ = [
    "HOST",
    "SERVER_ENV",
    "HandlerCall",
    "NotDrained",
    "Outcome",
    "RedisServer",
    "RunningWorker",
    "ServerNotFound",
    "ServerVersion",
    "TlsFiles",
    "TlsUnavailable",
    "await_for",
    "free_port",
    "run_worker",
    "server_executable",
    "server_version",
    "wait_for",
    "worker_settings",
]
