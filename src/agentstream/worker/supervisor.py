"""Supervisor: one worker process's consumers and reapers, restarts and shutdown."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import structlog

from agentstream.app import App
from agentstream.config import Settings, SubscriptionSettings
from agentstream.errors import (
    AuthenticationError,
    PermissionDenied,
    StartupError,
    TransportError,
)
from agentstream.observe.metrics import (
    CollectorRegistry,
    MetricsServer,
)
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker.consumer import Consumer, describe_error
from agentstream.worker.dispatcher import Dispatcher
from agentstream.worker.monitor import Monitor
from agentstream.worker.names import NameLease, NamesExhausted
from agentstream.worker.reaper import Reaper, SweepResult
from agentstream.worker.redis_state import RedisState

__all__ = ["Supervisor"]

log = structlog.get_logger("agentstream.supervisor")

_MAX_BACKOFF_S = 30.0
# A loop that ran this long before failing starts its backoff from scratch.
_HEALTHY_RUN_S = 60.0


def unwrap(exc: BaseException) -> BaseException:
    """The single exception inside nested task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def jittered(delay_s: float) -> float:
    """``delay_s`` with +-25 % jitter, so restarting peers do not stampede."""
    return delay_s * random.uniform(0.75, 1.25)


class Supervisor:
    """Runs every consumer and reaper of one worker process in one task group.

    The first SIGTERM or SIGINT stops reading and lets in-flight handlers finish
    for up to ``shutdown_timeout_s``; a second one cancels everything at once.
    Whatever is not acknowledged stays pending for the reaper: nothing is lost.
    """

    def __init__(
        self,
        settings: Settings,
        app: App,
        process_index: int = 0,
        *,
        handle_signals: bool = True,
        parent_pid: int | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.process_index = process_index
        self.redis = RedisState()
        self.consumers: list[Consumer] = []
        self.dispatcher: Dispatcher | None = None
        self.reapers: list[Reaper] = []
        self.sweeps: list[SweepResult] = []
        self.restarts = 0
        self.started = anyio.Event()
        self._handle_signals = handle_signals
        self._parent_pid = parent_pid
        self._stopping = anyio.Event()
        self._forced = False
        self._exit_status = 0
        self._force = anyio.Event()
        self._running = 0
        self._all_done = anyio.Event()
        self.monitor = Monitor(
            self, CollectorRegistry() if registry is None else registry
        )
        # When each restarted loop began again; None while it waits to restart.
        self.loop_since: dict[str, float | None] = {}
        prefix = settings.name_prefix or socket.gethostname()
        self._name_base = f"{prefix}-{process_index}"

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the worker's metrics are on."""
        return self.monitor.registry

    @property
    def metrics_port(self) -> int | None:
        """The port metrics are served on (None when not serving)."""
        return self.monitor.port

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stopping.is_set()

    @property
    def parent_pid(self) -> int | None:
        """The multi-process parent's pid, for a child; else None."""
        return self._parent_pid

    def _name_lost(self) -> None:
        # Another worker now uses our consumer names: stop, and exit non-zero so
        # that the service manager starts us again under a free name.
        self._exit_status = 1
        self.stop()

    def consumer_name(self, index: int | str) -> str:
        """The stable name of this process's consumer ``index``."""
        return f"{self._name_base}-{index}"

    def stop(self, force: bool = False) -> None:
        """Begin a graceful stop; a second call (or ``force``) stops at once."""
        if force or self._stopping.is_set():
            self._forced = True
            self._force.set()
        self._stopping.set()

    async def run(self) -> int:
        """Run until stopped; returns the process exit status.

        Raises:
            StartupError: Redis refused the credentials or the ACL, or the
                metrics port could not be bound.
        """
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            cause = unwrap(group)
            if isinstance(cause, StartupError):
                raise cause from None
            raise

    async def _run(self) -> int:
        settings = self.settings
        monitor = self.monitor
        pool = pool_from_settings(
            settings.redis,
            socket_timeout_s=settings.block_ms / 1000 + 10,
            max_connections=settings.redis.max_connections
            + settings.consumers * len(settings.subscriptions),
        )
        server: MetricsServer | None = None
        try:
            server = await monitor.serve()
            async with anyio.create_task_group() as tg:
                if server is not None or monitor.systemd.watchdog_s:
                    tg.start_soon(monitor.heartbeat.run)
                if self._handle_signals:
                    tg.start_soon(self._watch_signals)
                if self._parent_pid is not None:
                    tg.start_soon(self._watch_parent)
                tg.start_soon(self._watch_force, tg.cancel_scope)
                transports = await self._open(pool)
                if transports is None:  # stopped while waiting for Redis
                    tg.cancel_scope.cancel()
                    return 0
                lease = NameLease(transports, self._name_base, settings.name_lease_s)
                try:
                    self._name_base = await lease.acquire()
                except (NamesExhausted, AuthenticationError, PermissionDenied) as exc:
                    raise StartupError(str(exc)) from None
                tg.start_soon(lease.keep, self._name_lost)
                self._start_loops(tg, transports)
                if self.settings.metrics.enabled:
                    tg.start_soon(monitor.report, transports)
                self.started.set()
                monitor.systemd.notify("READY=1", f"STATUS={monitor.status()}")
                if monitor.systemd.enabled:
                    tg.start_soon(monitor.notify_systemd)
                log.info(
                    "worker_started",
                    process=self.process_index,
                    consumers=[c.name for c in self.consumers],
                    streams=[t.stream_name for t in transports],
                )
                await self._stopping.wait()
                log.info("worker_stopping", grace_s=settings.shutdown_timeout_s)
                monitor.systemd.notify("STOPPING=1", "STATUS=draining in-flight events")
                for consumer in self.consumers:
                    consumer.stop()
                for reaper in self.reapers:
                    reaper.stop()
                with anyio.move_on_after(settings.shutdown_timeout_s):
                    await self._all_done.wait()
                tg.cancel_scope.cancel()
            if self.settings.metrics.enabled:
                monitor.record_counts()  # the last interval's counts
            if not self._forced and self.redis.up:
                # One short deadline for all cleanup, so that a stop during a
                # network cut still ends well inside the service manager's limit.
                with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                    await self._remove_own_consumers()
                    await lease.release()
            log.info("worker_stopped", forced=self._forced)
            return self._exit_status
        finally:
            with anyio.CancelScope(shield=True):
                if server is not None:
                    await server.aclose()
                await pool.aclose()

    # -- startup -------------------------------------------------------------

    async def _open(self, pool: RedisConnectionPool) -> list[WorkerOps] | None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                transports = [
                    await WorkerOps.aopen(
                        sub.stream, consumer_group=sub.group, pool=pool
                    )
                    for sub in self.settings.subscriptions
                ]
            except (AuthenticationError, PermissionDenied) as exc:
                raise StartupError(str(exc)) from None
            except TransportError as exc:
                self.redis.failed(exc)
                with anyio.move_on_after(jittered(delay)):
                    await self._stopping.wait()
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            self.redis.answered()
            return transports
        return None

    def _start_loops(
        self, tg: anyio.abc.TaskGroup, transports: list[WorkerOps]
    ) -> None:
        dispatcher = self.dispatcher = Dispatcher(
            self.settings.concurrency, self.settings.sync_threads
        )
        subs: list[SubscriptionSettings] = list(self.settings.subscriptions)
        for sub, transport in zip(subs, transports, strict=True):
            own: list[str] = []
            for index in range(self.settings.consumers):
                consumer = self._consumer(index, sub, transport, dispatcher)
                own.append(consumer.name)
                self._spawn(tg, consumer.name, consumer.run)
            reaper_consumer = self._consumer("reaper", sub, transport, dispatcher)
            own.append(reaper_consumer.name)
            reaper = Reaper(reaper_consumer, self.settings.reaper, own)
            self.reapers.append(reaper)
            on_sweep = partial(self._swept, reaper)
            self._spawn(tg, reaper_consumer.name, partial(reaper.run, on_sweep))

    def _consumer(
        self,
        index: int | str,
        sub: SubscriptionSettings,
        transport: WorkerOps,
        dispatcher: Dispatcher,
    ) -> Consumer:
        consumer = Consumer(
            self.consumer_name(index),
            transport,
            self.app,
            sub,
            self.settings,
            dispatcher,
            on_read=self.redis.answered,
        )
        self.consumers.append(consumer)
        return consumer

    def _swept(self, reaper: Reaper, result: SweepResult) -> None:
        self.redis.answered()
        self.monitor.record_sweep(reaper, result)
        self.sweeps.append(result)
        del self.sweeps[:-10]

    # -- keep-alive ----------------------------------------------------------

    def _spawn(
        self, tg: anyio.abc.TaskGroup, name: str, run: Callable[[], Awaitable[None]]
    ) -> None:
        self._running += 1
        tg.start_soon(self._keep_alive, name, run, name=name)

    async def _keep_alive(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    await run()
                except Exception as exc:
                    cause = unwrap(exc)
                    if isinstance(cause, PermissionDenied):
                        self.redis.denied(cause)
                    elif isinstance(cause, TransportError):
                        self.redis.failed(cause)
                    else:
                        log.error("consumer_crashed", consumer=name, exc_info=cause)
                if self._stopping.is_set():
                    return
                if time.monotonic() - started > _HEALTHY_RUN_S:
                    delay = 0.1
                self.restarts += 1
                self.loop_since[name] = None
                log.info("consumer_restarting", consumer=name, delay_s=round(delay, 2))
                with anyio.move_on_after(jittered(delay)):
                    await self._stopping.wait()
                self.loop_since[name] = time.monotonic()
                delay = min(delay * 2, _MAX_BACKOFF_S)
        finally:
            self._running -= 1
            if self._running == 0:
                self._all_done.set()

    # -- signals and shutdown ----------------------------------------------------

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("signal_received", signal=signal.Signals(signum).name)
                self.stop()

    async def _watch_parent(self) -> None:
        # A child of a multi-process parent stops when the parent is gone
        # (even killed with SIGKILL), instead of running on unsupervised.
        while os.getppid() == self._parent_pid:  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(1)
        log.warning("parent_process_gone")
        self.stop()

    async def _watch_force(self, scope: anyio.CancelScope) -> None:
        await self._force.wait()
        log.warning("worker_forced_stop")
        scope.cancel()

    async def _remove_own_consumers(self) -> None:
        names = [c.name for c in self.consumers]
        by_stream: dict[str, WorkerOps] = {
            c.transport.stream_name + "\0" + c.transport.consumer_group: c.transport
            for c in self.consumers
        }
        for transport in by_stream.values():
            try:
                removed = await transport.adelete_idle_consumers(0, names, only=True)
            except TransportError as exc:
                log.warning("consumer_cleanup_failed", error=describe_error(exc))
                continue
            if removed:
                log.info("consumers_removed", names=removed)
