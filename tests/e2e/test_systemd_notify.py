"""sd_notify from a real worker process to a test notify socket."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_harness import (
    WorkerProcess,
    base_config,
    worker_env,
    write_app,
    write_config,
)

from redis_server import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(name="notify_socket")
def _notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    yield sock, path
    sock.close()


def test_ready_watchdog_and_stopping(
    tmp_path: Path,
    redis_url: str,
    stream_name: str,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    """The worker sends READY=1, then WATCHDOG=1 while healthy, then STOPPING=1."""
    sock, path = notify_socket
    write_app(tmp_path)
    config = write_config(tmp_path, base_config(redis_url, stream_name))
    env = worker_env(
        redis_url,
        stream_name,
        {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"},
    )
    worker = WorkerProcess(["--config", str(config)], cwd=tmp_path, env=env)
    messages: list[str] = []

    def received(line: str) -> bool:
        try:
            messages.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            pass
        return line in messages

    try:
        wait_for(lambda: received("READY=1"), timeout=15, message=worker.tail())
        wait_for(lambda: received("WATCHDOG=1"), timeout=5, message=worker.tail())
        assert any(m.startswith("STATUS=") for m in messages)
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: received("STOPPING=1"), timeout=10, message=worker.tail())
        assert worker.wait(timeout=15) == 0
    finally:
        worker.close()
    assert messages.index("READY=1") < messages.index("STOPPING=1")


def test_multi_process_parent_speaks_for_its_children(
    tmp_path: Path,
    redis_url: str,
    stream_name: str,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    """With processes=2 the parent sends READY, WATCHDOG and STOPPING itself."""
    sock, path = notify_socket
    write_app(tmp_path)
    config = write_config(
        tmp_path, base_config(redis_url, stream_name, {"processes": 2})
    )
    env = worker_env(
        redis_url,
        stream_name,
        {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"},
    )
    worker = WorkerProcess(["--config", str(config)], cwd=tmp_path, env=env)
    messages: list[str] = []

    def received(line: str) -> bool:
        try:
            messages.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            pass
        return line in messages

    try:
        wait_for(lambda: received("READY=1"), timeout=15, message=worker.tail())
        wait_for(lambda: received("WATCHDOG=1"), timeout=5, message=worker.tail())
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: received("STOPPING=1"), timeout=10, message=worker.tail())
        assert worker.wait(timeout=20) == 0
    finally:
        worker.close()
    assert messages.count("READY=1") == 1, "only the parent may report READY"
