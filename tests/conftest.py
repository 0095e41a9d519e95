"""Shared fixtures: the anyio backend and real redis-server processes."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import uuid4

import pytest

from redis_server import RedisServer, RedisServerFactory


@pytest.fixture(name="anyio_backend", scope="session")
def _anyio_backend() -> str:
    # redis-py's async client runs on asyncio only.
    return "asyncio"


#: Names the server executable the tests run (a redis-server or valkey-server);
#: unset: the redis-server on the PATH.
SERVER_ENV = "AGENTSTREAM_REDIS_SERVER"


def pytest_configure(config: pytest.Config) -> None:
    # The helpers that start servers look up "redis-server" on the PATH: put a
    # link of that name to the chosen executable first on it.
    exe = os.environ.get(SERVER_ENV)
    if not exe:
        return
    if not os.access(exe, os.X_OK):
        raise pytest.UsageError(f"{SERVER_ENV}={exe} is not an executable file")
    link_dir = Path(tempfile.mkdtemp(prefix="agentstream-server-"))
    (link_dir / "redis-server").symlink_to(Path(exe).resolve())
    os.environ["PATH"] = f"{link_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    config.add_cleanup(lambda: shutil.rmtree(link_dir, ignore_errors=True))


def _require_redis_server() -> str:
    """Skip without redis-server; in CI (``CI`` set) a missing one is a failure.

    ``AGENTSTREAM_REDIS_SERVER`` names the executable; unset, the PATH's.
    """
    exe = os.environ.get(SERVER_ENV) or shutil.which("redis-server")
    if exe is not None:
        return exe
    if os.environ.get("CI"):
        pytest.fail("redis-server is required in CI but is not on PATH")
    pytest.skip("redis-server not found on PATH")


@pytest.fixture(name="redis_server_bin", scope="session")
def _redis_server_bin() -> str:
    """The redis-server path, for tests that build a RedisServer themselves."""
    return _require_redis_server()


@pytest.fixture(name="redis_server", scope="session")
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the session; tests keep apart by unique stream names."""
    _require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis-session"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(name="redis_url", scope="session")
def _redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(name="stream_name")
def _stream_name() -> str:
    return f"test:{uuid4().hex}"


@pytest.fixture(name="fresh_redis")
def _fresh_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started server of this test's own, free to kill, restart or reconfigure."""
    _require_redis_server()
    server = RedisServer(tmp_path / "fresh-redis")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(name="redis_factory")
def _redis_factory(tmp_path: Path) -> Iterator[RedisServerFactory]:
    """Build and start servers with special options; all stopped at teardown."""
    _require_redis_server()
    servers: list[RedisServer] = []
    counter = itertools.count()

    def factory(
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> RedisServer:
        server = RedisServer(
            tmp_path / f"redis-{next(counter)}",
            port=port,
            appendonly=appendonly,
            appendfsync=appendfsync,
            password=password,
            extra_args=extra_args,
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()
