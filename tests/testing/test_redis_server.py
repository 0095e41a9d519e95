"""The testing kit's throwaway server, its executable setting and its waiting helpers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import agentstream.testing.server as server_module
from agentstream.testing import (
    RedisServer,
    await_for,
    free_port,
    wait_for,
)
from agentstream.testing.pytest_plugin import RedisServerFactory


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
