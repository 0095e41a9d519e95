"""The benchmark's server: the testing kit's throwaway ``RedisServer``, with a client."""

from __future__ import annotations

import os

import redis

from agentstream.testing import SERVER_ENV, RedisServer

__all__ = ["BenchRedis", "clear_agentstream_env"]


class BenchRedis(RedisServer):
    """``with BenchRedis(tmp_dir) as server:`` runs a server without persistence.

    The binary is ``AGENTSTREAM_REDIS_SERVER`` (default ``redis-server`` on PATH).
    """

    def client(self) -> redis.Redis:
        """A new synchronous client returning bytes (hiredis parses replies)."""
        return redis.Redis(host=self.host, port=self.port, socket_timeout=60)

    def describe(self) -> str:
        """The server's name and version, e.g. "Redis 7.0.15"."""
        version = self.version
        return f"{version.name} {version.version}"


def clear_agentstream_env() -> None:
    """Drop AGENTSTREAM_* settings from the environment, so that only the files
    the benchmark writes configure what it runs; the server binary's stays."""
    for key in [k for k in os.environ if k.startswith("AGENTSTREAM_")]:
        if key != SERVER_ENV:
            del os.environ[key]
