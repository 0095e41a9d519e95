"""Health, readiness, READY=1 and the watchdog say the same with 1 or 2 processes.

With ``processes = 2`` the parent serves the probes and speaks to systemd: it
must derive them from every child's own state, as one process does from its own.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import (
    WorkerProcess,
    base_config,
    http_get,
    worker_env,
    write_app,
    write_config,
)

from redis_server import RedisServerFactory, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def probe(port: int, path: str) -> tuple[int | None, str]:
    return http_get(port, path)


class Notified:
    """The sd_notify lines a worker sent to a test socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.lines: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.lines.extend(self.sock.recv(4096).decode().splitlines())
            except BlockingIOError:
                return self.lines

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(name="notified")
def _notified(tmp_path: Path) -> Iterator[Notified]:
    notified = Notified(tmp_path / "notify.sock")
    yield notified
    notified.close()


def start(
    tmp_path: Path, redis_url: str, stream: str, processes: int, port: int
) -> WorkerProcess:
    write_app(tmp_path)
    overrides = {
        "processes": processes,
        "consumers": 1,
        "metrics": {"enabled": True, "port": port},
        "reaper": {"interval_s": 0.2},
    }
    config = write_config(tmp_path, base_config(redis_url, stream, overrides))
    env = worker_env(
        redis_url,
        stream,
        {
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "1000000",
            "TMPDIR": str(tmp_path),
        },
    )
    return WorkerProcess(["--config", str(config)], cwd=tmp_path, env=env)


@pytest.mark.parametrize("processes", [1, 2])
def test_ready_only_once_redis_answers_and_not_ready_while_it_is_down(
    tmp_path: Path,
    redis_factory: RedisServerFactory,
    stream_name: str,
    notified: Notified,
    processes: int,
) -> None:
    """Started with Redis down: no READY=1, /readyz 503; READY=1 once it answers;
    /readyz 503 naming Redis while it is down again, 200 once it is back."""
    server = redis_factory()
    server.stop()
    port = free_port()
    worker = start(tmp_path, server.url, stream_name, processes, port)
    try:
        worker.wait_for_log("redis_unavailable", 30)
        wait_for(lambda: probe(port, "/readyz")[0] == 503, 20, message=worker.tail())
        assert "READY=1" not in notified.drain()
        server.start()
        wait_for(lambda: "READY=1" in notified.drain(), 30, message=worker.tail())
        wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, message=worker.tail())

        server.stop()
        wait_for(
            lambda: "redis unavailable" in probe(port, "/readyz")[1],
            30,
            message=worker.tail(),
        )
        assert probe(port, "/readyz")[0] == 503
        server.start()
        wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, message=worker.tail())
        assert notified.drain().count("READY=1") == 1
        worker.terminate()
        assert worker.wait(20) == 0, worker.tail()
    finally:
        worker.close()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stopped_process_fails_health_and_stops_the_watchdog(
    tmp_path: Path,
    redis_url: str,
    stream_name: str,
    notified: Notified,
    processes: int,
) -> None:
    """SIGSTOP the (or one child) process: /healthz fails and WATCHDOG=1 stops;
    SIGCONT: both come back."""
    port = free_port()
    worker = start(tmp_path, redis_url, stream_name, processes, port)
    try:
        wait_for(lambda: probe(port, "/readyz")[0] == 200, 30, message=worker.tail())
        wait_for(lambda: "WATCHDOG=1" in notified.drain(), 10, message=worker.tail())
        if processes == 1:
            target = worker.pid
        else:
            wait_for(lambda: len(worker.descendants()) >= 2, 10)
            target = worker.descendants()[0]
        os.kill(target, signal.SIGSTOP)
        try:
            wait_for(
                lambda: probe(port, "/healthz")[0] != 200, 20, message=worker.tail()
            )
            if processes > 1:
                # The parent itself runs on: it withholds the watchdog, saying why.
                worker.wait_for_log("watchdog_withheld", 10)
            notified.drain()
            seen = len(notified.lines)
            assert probe(port, "/healthz")[0] != 200
            assert "WATCHDOG=1" not in notified.drain()[seen:]
        finally:
            os.kill(target, signal.SIGCONT)
        wait_for(lambda: probe(port, "/healthz")[0] == 200, 20, message=worker.tail())
        seen = len(notified.drain())
        wait_for(
            lambda: "WATCHDOG=1" in notified.drain()[seen:], 10, message=worker.tail()
        )
        worker.terminate()
        assert worker.wait(20) == 0, worker.tail()
    finally:
        worker.close()
