"""A throwaway ``redis-server`` process: a free loopback port or a Unix socket, no persistence."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from agentstream.testing._resp import probe
from agentstream.testing.executable import (
    ServerVersion,
    server_executable,
    server_version,
)

__all__ = [
    "HOST",
    "RedisServer",
    "TlsFiles",
    "TlsUnavailable",
    "free_port",
]

#: The only address the kit's servers listen on.
HOST = "127.0.0.1"
_APPENDFSYNC = frozenset({"always", "everysec", "no"})
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
# A port picked by free_port() can be taken before the server binds it.
_BIND_ATTEMPTS = 5
# sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
_MAX_SOCKET_PATH = 100
_RESERVED_PORTS = frozenset({6379})  # never the machine's own Redis


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _RESERVED_PORTS:
            return port


class TlsUnavailable(RuntimeError):
    """The server executable cannot serve TLS (built without it)."""


class _BindRaceError(Exception):
    """The server lost the race for the port free_port() picked."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for a TLS-only server: its certificate, its key, the CA it trusts.

    The server listens with TLS only (``--port 0 --tls-port P``) and asks
    clients for no certificate unless ``auth_clients`` is ``"yes"``/``"optional"``.
    """

    cert: Path
    key: Path
    ca: Path
    auth_clients: str = "no"


class RedisServer:
    """A ``redis-server`` child process for one test, one session, or a script.

    ``with RedisServer(tmp_dir) as server:`` starts it on a free 127.0.0.1 port
    (or a Unix socket), without persistence unless ``appendonly``, and stops it
    on exit. It only ever signals its own process, by pid. The executable is
    :func:`~agentstream.testing.server_executable`'s (``AGENTSTREAM_REDIS_SERVER``)
    unless ``executable`` is given.

    Args:
        tmp_dir: where the server's log, AOF files and socket go (created).
        port: a fixed port; by default a free one, picked again if it is lost.
        appendonly: write an AOF (``restart()`` then reloads the data).
        appendfsync: ``always``, ``everysec`` or ``no``.
        password: ``requirepass``; the URL carries it.
        unix_socket: listen on a Unix socket only (``unix://`` URL), no TCP port.
        tls: listen with TLS only (``rediss://`` URL).
        extra_args: more ``--option value`` arguments, last (they win).
        executable: the server binary to run.
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
        unix_socket: bool = False,
        tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
    ) -> None:
        if appendfsync not in _APPENDFSYNC:
            raise ValueError(f"appendfsync must be one of {sorted(_APPENDFSYNC)}")
        if unix_socket and tls is not None:
            raise ValueError("a Unix socket server is not served over TLS here")
        self._dir = Path(tmp_dir).resolve()
        self._dir.mkdir(parents=True, exist_ok=True)
        # Only a port we picked ourselves may be swapped when the bind races.
        self._may_repick_port = port is None and not unix_socket
        self._port = 0 if unix_socket else free_port() if port is None else port
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._password = password
        self._socket_dir: Path | None = None
        self._socket = self._socket_path() if unix_socket else None
        self._tls = tls
        self._extra_args = tuple(extra_args)
        self._executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        # Where the current attempt's output starts: restarts append to the logs.
        self._log_offset = 0
        self._stdio_offset = 0

    @property
    def port(self) -> int:
        """The TCP port (the TLS port with ``tls``; 0 with a Unix socket)."""
        return self._port

    @property
    def unix_socket(self) -> Path | None:
        """The socket path of a ``unix_socket`` server, else None."""
        return self._socket

    @property
    def url(self) -> str:
        """The URL to reach this server, with its password (database 0)."""
        auth = "" if self._password is None else f":{quote(self._password, safe='')}@"
        if self._socket is not None:
            return f"unix://{auth}{self._socket}"
        scheme = "redis" if self._tls is None else "rediss"
        return f"{scheme}://{auth}{HOST}:{self._port}/0"

    @property
    def pid(self) -> int:
        """The pid of the current process, or of the last one once stopped."""
        if self._proc is None:
            raise RuntimeError("redis-server was never started")
        return self._proc.pid

    @property
    def executable(self) -> str:
        """The server binary this instance runs."""
        if self._executable is None:
            self._executable = server_executable()
        return self._executable

    @property
    def version(self) -> ServerVersion:
        """What the binary is: ``str(server.version)`` is e.g. "Valkey 8.1.8 (path)"."""
        return server_version(self.executable)

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ping(self) -> bool:
        """Whether this server (not another one on the port) answers PING."""
        info = self._probe()
        return self.is_running() and info is not None and self._is_ours(info)

    def start(self) -> None:
        """Spawn the server and return once it answers PING; idempotent.

        Raises:
            ServerNotFound: no server executable (see ``AGENTSTREAM_REDIS_SERVER``).
            TlsUnavailable: ``tls`` was asked of a server built without TLS.
            RuntimeError: it exited or did not answer in time; quotes its log.
        """
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
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server and wait, as a crash would end it."""
        self._signal_and_wait(signal.SIGKILL)

    def restart(self) -> None:
        """Stop if running, then start on the same port and dir (AOF reloads)."""
        self._signal_and_wait(signal.SIGTERM)
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
        where = self._socket or f"{HOST}:{self._port}"
        return f"<RedisServer {where} {state} dir={self._dir}>"

    def _socket_path(self) -> Path:
        path = self._dir / "redis.sock"
        if len(str(path)) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="agentstream-redis-"))
            path = self._socket_dir / "redis.sock"
        return path

    def _listen_args(self) -> list[str]:
        if self._socket is not None:
            return ["--port", "0", "--unixsocket", str(self._socket),
                    "--unixsocketperm", "700"]  # fmt: skip
        if self._tls is not None:
            tls = self._tls
            return [
                "--port", "0",
                "--tls-port", str(self._port),
                "--tls-cert-file", str(tls.cert),
                "--tls-key-file", str(tls.key),
                "--tls-ca-cert-file", str(tls.ca),
                "--tls-auth-clients", tls.auth_clients,
            ]  # fmt: skip
        return ["--port", str(self._port)]

    def _argv(self) -> list[str]:
        argv = [
            self.executable,
            "--bind", HOST,
            *self._listen_args(),
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

    def _probe(self) -> dict[str, str] | None:
        return probe(
            HOST,
            self._port,
            password=self._password,
            unix_socket=self._socket,
            tls=self._tls is not None,
        )

    def _spawn_and_wait(self) -> None:
        argv = self._argv()
        self._log_offset = self._size(self.log_path)
        self._stdio_offset = self._size(self._stdio_path)
        # Config errors go to stderr before the logfile is opened.
        with self._stdio_path.open("ab") as stdio:
            self._proc = subprocess.Popen(
                argv,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                self._raise_exited()
            info = self._probe()
            if info is not None and self._is_ours(info):
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not answer PING at {self.url} "
                    f"within {_START_TIMEOUT_S}s\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _raise_exited(self) -> None:
        assert self._proc is not None
        tail = self._log_tail()
        if "Address already in use" in tail and self._may_repick_port:
            raise _BindRaceError
        if self._tls is not None and "tls" in tail.lower():
            raise TlsUnavailable(f"redis-server cannot serve TLS:\n{tail}")
        raise RuntimeError(
            f"redis-server exited with {self._proc.returncode} ({self.url})\n{tail}"
        )

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
