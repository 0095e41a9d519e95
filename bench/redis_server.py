"""A throwaway ``redis-server`` on a free loopback port, stopped by its pid."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

__all__ = ["BenchRedis"]

HOST = "127.0.0.1"
_RESERVED = {6379}  # never the machine's own Redis


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _RESERVED:
            return port


class BenchRedis:
    """``with BenchRedis(tmp_dir) as server:`` runs a server without persistence."""

    def __init__(self, tmp_dir: Path) -> None:
        self.dir = tmp_dir
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def client(self) -> redis.Redis:
        """A new synchronous client returning bytes (hiredis parses replies)."""
        return redis.Redis(host=HOST, port=self.port, socket_timeout=60)

    def version(self) -> str:
        info = self.client().info("server")
        return str(info["redis_version"])

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on the PATH")
        argv = [
            exe,
            "--bind", HOST,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        self._proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = self.client()
        while True:
            try:
                pid = int(client.info("server")["process_id"])
            except redis.RedisError:
                pid = -1
            if pid == self._proc.pid:
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {self.dir}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
