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

from agentstream.testing import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(name="notify_socket")
def _notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    yield sock, path
    sock.close()


class NotifyRun:
    """A worker process started with a notify socket, and what it sent there."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        stream: str,
        sock: socket.socket,
        path: Path,
        overrides: dict[str, object] | None = None,
    ) -> None:
        write_app(tmp_path)
        config = write_config(tmp_path, base_config(redis_url, stream, overrides))
        env = worker_env(
            redis_url, stream, {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        )
        self.sock = sock
        self.messages: list[str] = []
        self.worker = WorkerProcess(["--config", str(config)], cwd=tmp_path, env=env)

    def received(self, line: str) -> bool:
        try:
            self.messages.extend(self.sock.recv(4096).decode().splitlines())
        except TimeoutError:
            pass
        return line in self.messages

    def wait_for(self, line: str, timeout: float) -> None:
        wait_for(lambda: self.received(line), timeout, message=self.worker.tail())

    def ready_watchdog_stopping(self) -> None:
        """Wait for READY and WATCHDOG, send SIGTERM, wait for STOPPING and exit 0."""
        try:
            self.wait_for("READY=1", 15)
            self.wait_for("WATCHDOG=1", 5)
            self.worker.send_signal(signal.SIGTERM)
            self.wait_for("STOPPING=1", 10)
            assert self.worker.wait(timeout=20) == 0
        finally:
            self.worker.close()


def test_ready_watchdog_and_stopping(
    tmp_path: Path,
    redis_url: str,
    stream_name: str,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    """The worker sends READY=1, then WATCHDOG=1 while healthy, then STOPPING=1."""
    run = NotifyRun(tmp_path, redis_url, stream_name, *notify_socket)
    run.ready_watchdog_stopping()
    assert any(m.startswith("STATUS=") for m in run.messages)
    assert run.messages.index("READY=1") < run.messages.index("STOPPING=1")


def test_multi_process_parent_speaks_for_its_children(
    tmp_path: Path,
    redis_url: str,
    stream_name: str,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    """With processes=2 the parent sends READY, WATCHDOG and STOPPING itself."""
    run = NotifyRun(
        tmp_path, redis_url, stream_name, *notify_socket, overrides={"processes": 2}
    )
    run.ready_watchdog_stopping()
    assert run.messages.count("READY=1") == 1, "only the parent may report READY"
