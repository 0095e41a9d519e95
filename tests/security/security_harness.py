"""What the security tests share: the e2e worker harness, CLI runs, scrapes.

Kept out of a ``conftest.py`` on purpose (mypy would see two ``conftest``
modules). pytest puts ``tests/security`` on ``sys.path`` for the tests here;
this module puts ``tests/e2e`` there too, for ``worker_harness``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_E2E_DIR = str(Path(__file__).resolve().parent.parent / "e2e")
if _E2E_DIR not in sys.path:
    sys.path.insert(0, _E2E_DIR)

from worker_harness import (
    E2E,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_START,
    GROUP,
    Recorder,
    WorkerProcess,
    base_config,
    dead_letters,
    deep_merge,
    drained,
    pending_count,
    publish_raw,
    to_toml,
    worker_env,
    write_app,
    write_config,
    xadd_events,
)

from agentstream.testing import wait_for

__all__ = [
    "CLI",
    "E2E",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_START",
    "GROUP",
    "WORKER",
    "Recorder",
    "WorkerProcess",
    "base_config",
    "dead_letters",
    "deep_merge",
    "drained",
    "one_error_line",
    "pending_count",
    "publish_raw",
    "run",
    "scrape",
    "to_toml",
    "wait_until",
    "worker_env",
    "write_app",
    "write_config",
    "xadd_events",
]

BIN = Path(sys.executable).parent
#: The console scripts, next to this interpreter.
WORKER = str(BIN / "agentstream-worker")
CLI = str(BIN / "agentstream")


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end with its outputs captured as text."""
    return subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def without_target(err: str) -> str:
    """stderr of ``agentstream`` without its first line naming the target Redis."""
    return re.sub(r"^redis: \S+( \(user \S+\))?\n", "", err, count=1)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert stderr is exactly one line and no traceback was printed; return it.

    ``agentstream``'s first line naming the target Redis is not counted.
    """
    lines = [line for line in without_target(proc.stderr).splitlines() if line.strip()]
    context = (
        f"status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr + proc.stdout, context
    assert len(lines) == 1, context
    return lines[0]


def scrape(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the worker's metrics server: (status, body)."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *workers: WorkerProcess,
) -> None:
    """wait_for() whose failure names ``what`` and shows the workers' output."""
    try:
        wait_for(predicate, timeout=timeout, interval=0.02)
    except AssertionError:
        tails = "".join(f"\n{w.tail()}" for w in workers)
        raise AssertionError(f"{what}: not reached within {timeout}s{tails}") from None
