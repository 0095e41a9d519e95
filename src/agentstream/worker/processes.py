"""Several worker processes on one machine, kept alive by a parent."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio
import anyio.abc
import structlog

from agentstream.config import Settings
from agentstream.errors import StartupError
from agentstream.observe.health import (
    STATUS_DIR_ENV,
    Health,
    Heartbeat,
    check_children,
    read_status,
)
from agentstream.observe.metrics import (
    MULTIPROC_ENV,
    mark_process_dead,
    multiprocess_registry,
    start_server,
)
from agentstream.observe.systemd import SystemdNotifier
from agentstream.worker.supervisor import jittered

__all__ = ["run_processes"]

log = structlog.get_logger("agentstream.processes")

# Children exiting with these will fail the same way again: stop them all.
_FATAL = {3, 78}
_MAX_BACKOFF_S = 30.0
# The parent alone talks to systemd; children must not try (NotifyAccess=main).
_SYSTEMD_ENV = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


class _Parent:
    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.children: dict[int, anyio.abc.Process] = {}
        self.stopping = anyio.Event()
        self.status = 0
        self.all_exited = anyio.Event()
        self._alive = 0
        self.heartbeat = Heartbeat()
        self.systemd = SystemdNotifier()
        self.all_started = anyio.Event()
        self.metrics_dir: str | None = None
        self.status_dir = ""
        # How often the parent looks at its children's status files, in seconds.
        self.poll_s = 0.2

    def command(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agentstream.cli",
            *self.argv,
            "--process-index",
            str(index),
        ]

    async def run(self) -> int:
        self.status_dir = tempfile.mkdtemp(prefix="agentstream-status-")
        try:
            return await self._serve_and_run()
        finally:
            shutil.rmtree(self.status_dir, ignore_errors=True)

    async def _serve_and_run(self) -> int:
        metrics = self.settings.metrics
        if not metrics.enabled:
            return await self._run()
        self.metrics_dir = tempfile.mkdtemp(prefix="agentstream-metrics-")
        health = Health(self.liveness, self.readiness)
        serve = partial(
            start_server,
            multiprocess_registry(self.metrics_dir),
            metrics.host,
            metrics.port,
            health.wrap,
        )
        try:
            server = await anyio.to_thread.run_sync(serve)
        except OSError as exc:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            reason = exc.strerror or str(exc)
            raise StartupError(
                f"cannot serve metrics on {metrics.host}:{metrics.port}: {reason}"
            ) from None
        log.info("metrics_serving", host=metrics.host, port=server.port)
        try:
            return await self._run()
        finally:
            await server.aclose()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def notify_systemd(self) -> None:
        # The parent is the service's main process: it speaks for its children.
        # READY=1 once every child reached Redis, as one process would send it.
        await self.all_started.wait()
        while not self.children_state()[2]:  # noqa: ASYNC110 - other processes' files
            await anyio.sleep(self.poll_s)
        self.systemd.notify("READY=1", f"STATUS={self.status_line()}")
        interval_s = (self.systemd.watchdog_s or 60.0) / 2
        while not self.stopping.is_set():
            lines = [f"STATUS={self.status_line()}"]
            live, reason = self.liveness()
            if self.systemd.watchdog_s and live:
                lines.append("WATCHDOG=1")
            elif not live:
                log.warning("watchdog_withheld", reason=reason)
            self.systemd.notify(*lines)
            with anyio.move_on_after(interval_s):
                await self.stopping.wait()

    def status_line(self) -> str:
        return f"{len(self.children)} of {self.settings.processes} processes running"

    def children_state(self) -> tuple[tuple[bool, str], tuple[bool, str], bool]:
        # Runs in the metrics server's thread too: reads files, never awaits.
        children = {
            index: (process.pid, read_status(Path(self.status_dir, f"{index}.json")))
            for index, process in list(self.children.items())
        }
        return check_children(children, self.settings.processes)

    def liveness(self) -> tuple[bool, str]:
        live = self.heartbeat.check()
        if not live[0]:
            return live
        return self.children_state()[0]

    def readiness(self) -> tuple[bool, str]:
        if self.stopping.is_set():
            return False, "stopping"
        return self.children_state()[1]

    async def _run(self) -> int:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.heartbeat.run)
            tg.start_soon(self.watch_signals)
            for index in range(self.settings.processes):
                tg.start_soon(self.keep_alive, index)
            if self.systemd.enabled:
                tg.start_soon(self.notify_systemd)
            await self.stopping.wait()
            self.systemd.notify("STOPPING=1", "STATUS=stopping worker processes")
            with anyio.move_on_after(self.settings.shutdown_timeout_s + 5) as scope:
                await self.all_exited.wait()
            if scope.cancelled_caught:
                self.signal_all(signal.SIGKILL)
            tg.cancel_scope.cancel()
        return self.status

    async def keep_alive(self, index: int) -> None:
        self._alive += 1
        try:
            await self._keep_alive(index)
        finally:
            self._alive -= 1
            if self._alive == 0:
                self.all_exited.set()

    async def _keep_alive(self, index: int) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            # A session of its own: a Ctrl-C on the terminal reaches only the
            # parent, which forwards one SIGTERM (two would force a stop).
            env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
            env[STATUS_DIR_ENV] = self.status_dir
            if self.metrics_dir is not None:
                env[MULTIPROC_ENV] = self.metrics_dir
            process = await anyio.open_process(
                self.command(index),
                stdin=None,
                stdout=None,
                stderr=None,
                start_new_session=True,
                env=env,
            )
            self.children[index] = process
            if len(self.children) == self.settings.processes:
                self.all_started.set()
            log.info("process_started", process=index, pid=process.pid)
            try:
                status = await process.wait()
            finally:
                self.children.pop(index, None)
                if self.metrics_dir is not None:
                    mark_process_dead(process.pid, self.metrics_dir)
            if self.stopping.is_set():
                return
            if status in _FATAL:
                log.error("process_failed", process=index, status=status)
                self.status = status
                self.stop()
                return
            if time.monotonic() - started > 60:
                delay = 0.5
            log.warning("process_exited", process=index, status=status, delay_s=delay)
            with anyio.move_on_after(jittered(delay)):
                await self.stopping.wait()
            delay = min(delay * 2, _MAX_BACKOFF_S)

    def stop(self) -> None:
        self.stopping.set()
        self.signal_all(signal.SIGTERM)

    def signal_all(self, signum: signal.Signals) -> None:
        for process in list(self.children.values()):
            if process.returncode is None:
                process.send_signal(signum)

    async def watch_signals(self) -> None:
        # SIGHUP stops gracefully, as in a single process (supervisor.py).
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with anyio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                log.info("signal_received", signal=signal.Signals(signum).name)
                if self.stopping.is_set():
                    self.status = 128 + signum  # forced: exit non-zero
                # A second signal reaches the children as their second: they
                # stop at once.
                self.stop()


def run_processes(settings: Settings, argv: Sequence[str]) -> int:
    """Run ``settings.processes`` worker processes until a signal stops them.

    A child that dies for any reason (even ``kill -9``) is started again with a
    capped backoff; a child that fails on configuration or startup stops all.
    The parent serves the metrics of all children, summed (prometheus-client's
    multiprocess mode, in a directory made fresh at start and removed at exit).

    Raises:
        StartupError: the metrics port cannot be bound.
    """
    return anyio.run(_Parent(settings, argv).run, backend="asyncio")
