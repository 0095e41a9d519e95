"""The testing kit's throwaway server, its executable setting and its waiting helpers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import agentstream.testing.server as server_module
from agentstream.testing import (
    SERVER_ENV,
    RedisServer,
    ServerNotFound,
    ServerVersion,
    await_for,
    free_port,
    server_executable,
    server_version,
    wait_for,
)
from agentstream.testing.pytest_plugin import RedisServerFactory, pytest_report_header


def _raw_ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64)


@pytest.mark.redis
@pytest.mark.usefixtures("redis_server_bin")
class TestRedisServer:
    def test_start_answers_ping(self, fresh_redis: RedisServer) -> None:
        """A started server answers a raw PING on its own loopback port."""
        assert fresh_redis.is_running()
        assert fresh_redis.host == "127.0.0.1"
        assert fresh_redis.url == f"redis://127.0.0.1:{fresh_redis.port}/0"
        assert _raw_ping(fresh_redis.port) == b"+PONG\r\n"
        with redis.Redis.from_url(fresh_redis.url) as client:
            assert client.info("server")["process_id"] == fresh_redis.pid

    def test_session_server_is_shared(
        self, redis_server: RedisServer, redis_url: str, stream_name: str
    ) -> None:
        """The session server is up, its URL matches and stream names are unique."""
        assert redis_url == redis_server.url
        assert redis_server.ping()
        assert stream_name.startswith("test:")

    def test_stop_ends_the_process(self, fresh_redis: RedisServer) -> None:
        """stop() terminates the process so its port no longer answers."""
        fresh_redis.stop()

        assert not fresh_redis.is_running()
        assert not fresh_redis.ping()
        with pytest.raises(OSError):
            _raw_ping(fresh_redis.port)

    def test_kill_then_restart_keeps_aof_data(
        self, redis_factory: RedisServerFactory
    ) -> None:
        """After SIGKILL, restart() reuses port and dir and reloads the AOF."""
        server = redis_factory(appendonly=True, appendfsync="always")
        port, old_pid = server.port, server.pid
        with redis.Redis.from_url(server.url) as client:
            client.set("key", "value")

        server.kill()
        assert not server.is_running()
        server.restart()

        assert (server.port, server.is_running()) == (port, True)
        assert server.pid != old_pid
        with redis.Redis.from_url(server.url) as client:
            assert client.get("key") == b"value"

    def test_stop_then_restart_keeps_aof_data(
        self, redis_factory: RedisServerFactory
    ) -> None:
        """A SIGTERM stop flushes the AOF, so everysec data survives a restart."""
        server = redis_factory(appendonly=True)
        with redis.Redis.from_url(server.url) as client:
            client.set("key", "value")

        server.restart()

        with redis.Redis.from_url(server.url) as client:
            assert client.get("key") == b"value"

    def test_password_is_required(self, redis_factory: RedisServerFactory) -> None:
        """With a password, unauthenticated commands fail and the URL carries it."""
        server = redis_factory(password="s3cret/pw")
        assert server.url == f"redis://:s3cret%2Fpw@127.0.0.1:{server.port}/0"

        assert _raw_ping(server.port).startswith(b"-NOAUTH")
        with redis.Redis.from_url(server.url) as client:
            assert client.ping() is True

    def test_context_manager_starts_and_stops(self, tmp_path: Path) -> None:
        """Leaving the with block stops a server the block started."""
        with RedisServer(tmp_path) as server:
            assert server.ping()

        assert not server.is_running()

    def test_lost_port_race_retries_on_a_new_port(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        taken_port: int,
    ) -> None:
        """When the picked port is taken before redis binds it, start() picks again."""
        ports = iter([taken_port])
        real_free_port = server_module.free_port
        monkeypatch.setattr(
            server_module,
            "free_port",
            lambda: next(ports, None) or real_free_port(),
        )

        with RedisServer(tmp_path) as server:
            assert server.port != taken_port
            assert server.ping()

    def test_taken_fixed_port_fails_with_the_log(
        self, tmp_path: Path, taken_port: int
    ) -> None:
        """A port the caller chose is not swapped; the error quotes the log."""
        server = RedisServer(tmp_path, port=taken_port)

        with pytest.raises(RuntimeError, match="Address already in use"):
            server.start()
        assert not server.is_running()


@pytest.fixture(name="taken_port")
def _taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket that never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


class TestWaiting:
    def test_free_port_is_bindable(self) -> None:
        """free_port() returns a loopback port that can be bound right away."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", free_port()))

    def test_wait_for_returns_once_true(self) -> None:
        """wait_for() polls until the predicate holds."""
        calls = iter([False, False, True])

        wait_for(lambda: next(calls), timeout=1)

    def test_wait_for_times_out_with_message(self) -> None:
        """wait_for() raises AssertionError with the given message on timeout."""
        with pytest.raises(AssertionError, match="never ready"):
            wait_for(lambda: False, timeout=0.05, message="never ready")

    @pytest.mark.anyio
    async def test_await_for_accepts_async_and_sync_predicates(self) -> None:
        """await_for() awaits an async predicate and calls a sync one."""
        calls = iter([False, True])

        async def ready() -> bool:
            return next(calls)

        await await_for(ready, timeout=1)
        await await_for(lambda: True, timeout=1)
        with pytest.raises(AssertionError, match="never ready"):
            await await_for(lambda: False, timeout=0.05, message="never ready")


def _fake_server(directory: Path, banner: str) -> Path:
    """An executable that answers ``--version`` with ``banner``."""
    path = directory / "fake-server"
    path.write_text(f"#!/bin/sh\necho '{banner}'\n", encoding="utf-8")
    path.chmod(0o755)
    return path


class TestExecutable:
    def test_default_is_redis_server_on_path(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Without AGENTSTREAM_REDIS_SERVER, redis-server is looked up on PATH."""
        fake = _fake_server(tmp_path, "Redis server v=7.2.4 sha=0 malloc=libc")
        fake.rename(tmp_path / "redis-server")
        monkeypatch.setenv("PATH", str(tmp_path))
        assert server_executable({}) == str(tmp_path / "redis-server")

    def test_env_names_a_path_or_a_name_on_path(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """AGENTSTREAM_REDIS_SERVER takes a path, or a name looked up on PATH."""
        fake = _fake_server(tmp_path, "Valkey server v=8.1.8 sha=0 malloc=libc")
        assert server_executable({SERVER_ENV: str(fake)}) == str(fake)
        monkeypatch.setenv("PATH", str(tmp_path))
        assert server_executable({SERVER_ENV: "fake-server"}) == str(fake)

    @pytest.mark.parametrize(
        "env", [{SERVER_ENV: "/nonexistent/valkey-server"}, {SERVER_ENV: "nope"}]
    )
    def test_wrong_setting_names_the_variable(self, env: dict[str, str]) -> None:
        """A setting that names no executable is an error that names the setting."""
        with pytest.raises(ServerNotFound, match=SERVER_ENV):
            server_executable(env)

    def test_missing_default_says_how_to_fix_it(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """No redis-server on PATH: the error says to install one or set the variable."""
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(ServerNotFound, match=f"not found on PATH.*{SERVER_ENV}"):
            server_executable({})

    @pytest.mark.parametrize(
        ("banner", "name", "version"),
        [
            (
                "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0",
                "Redis",
                "7.0.15",
            ),
            (
                "Valkey server v=8.1.8 sha=00000000:1 malloc=libc bits=64",
                "Valkey",
                "8.1.8",
            ),
            (
                "Redis server v=8.2.3 sha=b5d43ceb:0 malloc=jemalloc-5.3.0",
                "Redis",
                "8.2.3",
            ),
        ],
    )
    def test_version_and_header(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        banner: str,
        name: str,
        version: str,
    ) -> None:
        """The header names the server and version from ``--version``, and its path."""
        fake = _fake_server(tmp_path, banner)
        assert server_version(str(fake)) == ServerVersion(name, version, str(fake))
        monkeypatch.setenv(SERVER_ENV, str(fake))
        header = pytest_report_header()
        assert header == f"redis-server: {name} {version} ({fake})"

    def test_header_without_a_server(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a server the header says so, and why."""
        monkeypatch.setenv(SERVER_ENV, "/nonexistent/redis-server")
        header = pytest_report_header()
        assert header.startswith("redis-server: none (") and SERVER_ENV in header

    def test_not_a_redis_server(self, tmp_path: Path) -> None:
        """An executable that does not answer like a Redis server is refused."""
        fake = _fake_server(tmp_path, "hello")
        with pytest.raises(ServerNotFound, match="not a Redis server"):
            server_version(str(fake))

    def test_server_runs_the_configured_binary(
        self, tmp_path: Path, redis_server_bin: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """RedisServer starts the binary the setting names; INFO confirms it."""
        monkeypatch.setenv(SERVER_ENV, redis_server_bin)
        with RedisServer(tmp_path) as server:
            assert server.executable == redis_server_bin
            with redis.Redis.from_url(server.url) as client:
                info = client.info("server")
            assert info["executable"] == redis_server_bin
            assert str(server.version).endswith(f"({redis_server_bin})")
