"""A throwaway real ``redis-server`` process for tests, and polling helpers."""

from __future__ import annotations

import inspect
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, Self
from urllib.parse import quote

import anyio

__all__ = [
    "RedisServer",
    "RedisServerFactory",
    "await_for",
    "free_port",
    "wait_for",
]

HOST = "127.0.0.1"
_APPENDFSYNC = frozenset({"always", "everysec", "no"})
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_PROBE_TIMEOUT_S = 0.5
# A port picked by free_port() can be taken before redis-server binds it.
_BIND_ATTEMPTS = 5


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.01,
    message: str = "",
) -> None:
    """Poll *predicate* until it is true; raise AssertionError after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


async def await_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    # Mirrors wait_for(); raising AssertionError is the point, not fail_after's
    # TimeoutError.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.01,
    message: str = "",
) -> None:
    """Async :func:`wait_for`; *predicate* may be sync or return an awaitable."""
    deadline = anyio.current_time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if anyio.current_time() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await anyio.sleep(interval)


class RedisServerFactory(Protocol):
    """What the ``redis_factory`` fixture returns: build and start a server."""

    def __call__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> RedisServer: ...


class _ReplyError(Exception):
    """Redis answered with an error reply (``-LOADING``, ``-NOAUTH``...)."""


class _BindRaceError(Exception):
    """redis-server lost the race for the port free_port() picked."""


def _encode(*args: str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _read_reply(stream: BinaryIO) -> bytes | int:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise _ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return b"" if size < 0 else stream.read(size + 2)[:-2]
    raise ConnectionError(f"unexpected reply {line!r}")


def _probe(port: int, password: str | None) -> dict[str, str] | None:
    """PING the server on *port*; return its INFO fields once it is ready."""
    try:
        with (
            socket.create_connection((HOST, port), timeout=_PROBE_TIMEOUT_S) as sock,
            sock.makefile("rb") as stream,
        ):
            if password is not None:
                sock.sendall(_encode("AUTH", password))
                _read_reply(stream)
            sock.sendall(_encode("PING"))
            if _read_reply(stream) != b"PONG":
                return None
            sock.sendall(_encode("INFO", "server", "persistence"))
            info = _read_reply(stream)
    except (OSError, _ReplyError):
        return None
    if not isinstance(info, bytes):
        return None
    fields = {}
    for line in info.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


class RedisServer:
    """A ``redis-server`` child process bound to 127.0.0.1 for one test or session.

    Only ever signals its own process, by pid. ``with RedisServer(...) as s:``
    starts it if needed and stops it on exit.
    """

    host = HOST

    def __init__(
        self,
        tmp_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if appendfsync not in _APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {sorted(_APPENDFSYNC)}")
        self._dir = Path(tmp_dir).resolve()
        self._dir.mkdir(parents=True, exist_ok=True)
        # Only a port we picked ourselves may be swapped when the bind races.
        self._may_repick_port = port is None
        self._port = free_port() if port is None else port
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._password = password
        self._extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        # Where the current attempt's output starts: restarts append to the logs.
        self._log_offset = 0
        self._stdio_offset = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        return f"redis://{auth}{HOST}:{self._port}/0"

    @property
    def pid(self) -> int:
        """The pid of the current process, or of the last one once stopped."""
        if self._proc is None:
            raise RuntimeError("redis-server was never started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ping(self) -> bool:
        """Whether this server (not another one on the port) answers PING."""
        info = _probe(self._port, self._password)
        return self.is_running() and info is not None and self._is_ours(info)

    def start(self) -> None:
        """Spawn redis-server and return once it answers PING; idempotent."""
        if self.is_running():
            return
        attempts = _BIND_ATTEMPTS if self._may_repick_port else 1
        for attempt in range(1, attempts + 1):
            try:
                self._spawn_and_wait()
            except _BindRaceError:
                if attempt == attempts:
                    raise RuntimeError(
                        f"redis-server could not bind a port in {attempts} tries"
                        f"\n{self._log_tail()}"
                    ) from None
                self._port = free_port()
            else:
                self._may_repick_port = False
                return

    def stop(self) -> None:
        """SIGTERM the server and wait; with appendonly its data is kept."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server and wait, as a crash would end it."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self) -> None:
        """Stop if running, then start on the same port and dir (AOF reloads)."""
        self.stop()
        self._may_repick_port = False
        self.start()

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

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {HOST}:{self._port} {state} dir={self._dir}>"

    def _argv(self, exe: str) -> list[str]:
        argv = [
            exe,
            "--bind", HOST,
            "--port", str(self._port),
            "--save", "",
            "--dir", str(self._dir),
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._appendfsync,
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        if self._password is not None:
            argv += ["--requirepass", self._password]
        argv += self._extra_args
        return argv

    def _spawn_and_wait(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found on PATH")
        self._log_offset = self._size(self.log_path)
        self._stdio_offset = self._size(self._stdio_path)
        # Config errors go to stderr before the logfile is opened.
        with self._stdio_path.open("ab") as stdio:
            self._proc = subprocess.Popen(
                self._argv(exe),
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                tail = self._log_tail()
                if "Address already in use" in tail and self._may_repick_port:
                    raise _BindRaceError
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode} "
                    f"on port {self._port}\n{tail}"
                )
            info = _probe(self._port, self._password)
            if info is not None and self._is_ours(info):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not answer PING on port {self._port} "
                    f"within {_START_TIMEOUT_S}s\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _is_ours(self, info: dict[str, str]) -> bool:
        # Another server may own the port; and wait for the AOF to load.
        return (
            self._proc is not None
            and info.get("process_id") == str(self._proc.pid)
            and info.get("loading", "0") == "0"
        )

    def _signal_and_wait(self, signum: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signum)  # by pid, and only if not yet reaped
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def _stdio_path(self) -> Path:
        return self._dir / "redis.stdout"

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_tail(self, lines: int = 20) -> str:
        parts = []
        for path, offset in (
            (self._stdio_path, self._stdio_offset),
            (self.log_path, self._log_offset),
        ):
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    text = fh.read().decode(errors="replace")
            except FileNotFoundError:
                continue
            tail = text.splitlines()[-lines:]
            if tail:
                parts.append(f"--- {path.name} ---\n" + "\n".join(tail))
        return "\n".join(parts) or "(redis-server wrote no log)"
