"""Subprocesses: the worker under test, the raw consumer, the producer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from bench import GROUP, ROOT

__all__ = ["Child", "WorkerSpec", "bench_module", "rss_kb", "worker"]

APP_MODULE = "bench_worker_app"


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    # No AGENTSTREAM_* override from the caller's shell: the config file rules.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Child:
    """A subprocess with its output in a log file; stopped by its own pid only."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        cwd: Path = ROOT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=_env(env or {}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def wait(self, timeout: float) -> int:
        return self._proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit status."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                return self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        return self._proc.wait()

    def stop_cleanly(self) -> None:
        """Stop; raise with the log's tail unless the exit status was 0."""
        status = self.stop()
        if status != 0:
            raise RuntimeError(f"{self.argv} exited with {status}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(timeout=10)


def bench_module(module: str, args: Sequence[str], log_path: Path) -> Child:
    """Run ``python -m bench.<module> args...`` from the repository root."""
    return Child([sys.executable, "-m", f"bench.{module}", *args], log_path)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One ``agentstream-worker`` configuration under test."""

    processes: int = 1
    consumers: int = 1
    handler: str = "noop"  # a mode of bench/worker_app.py
    concurrency: int = 100  # the default
    event_loop: str = "auto"  # the default: uvloop where installed

    def toml(self, redis_url: str, stream: str) -> str:
        return "\n".join(
            [
                f'app = "{APP_MODULE}:app"',
                f"processes = {self.processes}",
                f"consumers = {self.consumers}",
                f"concurrency = {self.concurrency}",
                f'event_loop = "{self.event_loop}"',
                "batch_size = 100",
                "block_ms = 100",
                "shutdown_timeout_s = 30.0",
                "[[subscriptions]]",
                f'stream = "{stream}"',
                f'group = "{GROUP}"',
                "[redis]",
                f'url = "{redis_url}"',
                "[metrics]",
                "enabled = false",
                "[log]",
                'level = "warning"',
                'format = "json"',
                "",
            ]
        )


def worker_command(config: Path) -> list[str]:
    """The installed ``agentstream-worker`` next to this Python, or its module."""
    exe = Path(sys.executable).with_name("agentstream-worker")
    if exe.exists():
        return [str(exe), "--config", str(config)]
    found = shutil.which("agentstream-worker")
    if found:
        return [found, "--config", str(config)]
    return [sys.executable, "-m", "agentstream.cli", "--config", str(config)]


def worker(
    spec: WorkerSpec,
    redis_url: str,
    stream: str,
    tmp: Path,
    env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> Child:
    """Start ``agentstream-worker`` in ``tmp``, with the bench app beside its config.

    ``wrap`` prefixes the command (a profiler, say).
    """
    shutil.copyfile(Path(__file__).with_name("worker_app.py"), tmp / f"{APP_MODULE}.py")
    name = (
        f"worker-p{spec.processes}-c{spec.consumers}-C{spec.concurrency}"
        f"-{spec.handler}-{spec.event_loop}"
    )
    config = tmp / f"{name}.toml"
    config.write_text(spec.toml(redis_url, stream))
    env = {"BENCH_HANDLER": spec.handler, **(env or {})}
    argv = [*wrap, *worker_command(config)]
    return Child(argv, tmp / f"{name}.log", cwd=tmp, env=env)


def rss_kb(pid: int) -> int:
    """Resident set size of a process (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
