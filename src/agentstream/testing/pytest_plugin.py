"""The pytest plugin (entry point ``pytest11``): throwaway redis-server fixtures.

Fixtures (each skips the test when no server executable is found, and fails it
instead when the ``CI`` environment variable is set):

- ``redis_server_bin`` (session): the executable's path.
- ``redis_server`` (session): one :class:`RedisServer` shared by the session;
  tests keep apart by unique stream names (``stream_name``).
- ``redis_url`` (session): its URL.
- ``fresh_redis``: a server of the test's own, free to kill, restart or reconfigure.
- ``redis_factory``: ``redis_factory(**options)`` starts a server with
  :class:`RedisServer` options (``appendonly``, ``password``, ``unix_socket``,
  ``tls``, ``extra_args``...); all are stopped at teardown.
- ``stream_name``: a unique stream key, ``test:<hex>``.

The header names the server, e.g. ``redis-server: Valkey 8.1.8 (/usr/bin/valkey-server)``.
A fixture of the same name in a ``conftest.py`` wins over these.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

import pytest

from agentstream.testing.executable import (
    ServerNotFound,
    server_executable,
    server_version,
)
from agentstream.testing.server import RedisServer, TlsFiles

__all__ = ["RedisServerFactory"]


class RedisServerFactory(Protocol):
    """What the ``redis_factory`` fixture returns: start a server with these options.

    The options are :class:`RedisServer`'s; ``executable`` defaults to ``redis_server_bin``.
    """

    def __call__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        unix_socket: bool = False,
        tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
    ) -> RedisServer: ...


def pytest_report_header() -> str:
    try:
        return f"redis-server: {server_version(server_executable())}"
    except ServerNotFound as exc:
        return f"redis-server: none ({exc})"


def _require_server() -> str:
    try:
        return server_executable()
    except ServerNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(f"a Redis server is required in CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(name="redis_server_bin", scope="session")
def _redis_server_bin() -> str:
    """The server executable, for tests that build a RedisServer themselves."""
    return _require_server()


@pytest.fixture(name="redis_server", scope="session")
def _redis_server(
    tmp_path_factory: pytest.TempPathFactory, redis_server_bin: str
) -> Iterator[RedisServer]:
    """One server for the session; tests keep apart by unique stream names."""
    with RedisServer(
        tmp_path_factory.mktemp("redis-session"), executable=redis_server_bin
    ) as server:
        yield server


@pytest.fixture(name="redis_url", scope="session")
def _redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(name="stream_name")
def _stream_name() -> str:
    return f"test:{uuid4().hex}"


@pytest.fixture(name="fresh_redis")
def _fresh_redis(tmp_path: Path, redis_server_bin: str) -> Iterator[RedisServer]:
    """A started server of this test's own, free to kill, restart or reconfigure."""
    with RedisServer(tmp_path / "fresh-redis", executable=redis_server_bin) as server:
        yield server


@pytest.fixture(name="redis_factory")
def _redis_factory(
    tmp_path: Path, redis_server_bin: str
) -> Iterator[RedisServerFactory]:
    """Start servers with special options; all are stopped at teardown."""
    servers: list[RedisServer] = []
    counter = itertools.count()

    def factory(**options: Any) -> RedisServer:
        options.setdefault("executable", redis_server_bin)
        server = RedisServer(tmp_path / f"redis-{next(counter)}", **options)
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()
