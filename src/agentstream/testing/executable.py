"""Which ``redis-server`` (or ``valkey-server``) the kit starts, and what it is."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "SERVER_ENV",
    "ServerNotFound",
    "ServerVersion",
    "server_executable",
    "server_version",
]

#: The environment variable naming the server executable: a name looked up on
#: ``PATH`` or a path (``valkey-server``, ``/opt/redis-8.2/bin/redis-server``).
SERVER_ENV = "AGENTSTREAM_REDIS_SERVER"
_DEFAULT = "redis-server"
# `redis-server --version`: "Redis server v=7.0.15 sha=... malloc=... bits=64 ..."
# `valkey-server --version`: "Valkey server v=8.1.8 sha=... malloc=... bits=64 ..."
_VERSION_RE = re.compile(r"^(?P<name>\S+) server v=(?P<version>\S+)")


class ServerNotFound(RuntimeError):
    """No server executable: none on ``PATH``, or ``AGENTSTREAM_REDIS_SERVER`` is wrong."""


@dataclass(frozen=True, slots=True)
class ServerVersion:
    """A server build: ``name`` ("Redis", "Valkey"), ``version`` ("8.1.8"), ``path``."""

    name: str
    version: str
    path: str

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.path})"


def server_executable(env: Mapping[str, str] | None = None) -> str:
    """The absolute path of the server the kit starts.

    From ``AGENTSTREAM_REDIS_SERVER`` (a name on ``PATH`` or a path) when set,
    else ``redis-server`` on ``PATH``.

    Raises:
        ServerNotFound: the named executable does not exist or is not executable.
    """
    env = os.environ if env is None else env
    wanted = env.get(SERVER_ENV) or _DEFAULT
    found = shutil.which(wanted)
    if found is not None:
        return os.path.abspath(found)
    if env.get(SERVER_ENV):
        raise ServerNotFound(
            f"{SERVER_ENV}={wanted!r} is not an executable (a name on PATH or a path)"
        )
    raise ServerNotFound(
        f"{_DEFAULT} not found on PATH; install Redis, or set {SERVER_ENV} to a "
        "redis-server or valkey-server executable"
    )


@functools.cache
def server_version(executable: str) -> ServerVersion:
    """What ``executable --version`` says it is.

    Raises:
        ServerNotFound: it does not run or does not answer like a Redis server.
    """
    try:
        proc = subprocess.run(
            [executable, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerNotFound(f"{executable} --version failed: {exc}") from None
    match = _VERSION_RE.match(proc.stdout.strip())
    if proc.returncode != 0 or match is None:
        said = (proc.stdout + proc.stderr).strip()[:200]
        raise ServerNotFound(f"{executable} is not a Redis server: {said!r}")
    return ServerVersion(match["name"], match["version"], executable)
