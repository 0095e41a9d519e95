"""Supervisor: one worker process's consumers and reapers, restarts and shutdown."""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import anyio
import structlog

from agentstream.app import App
from agentstream.config import Settings, SubscriptionSettings
from agentstream.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionError,
    PermissionDenied,
    Refused,
    StartupError,
    TransportError,
)
from agentstream.event_loop import running_loop_name
from agentstream.observe.counts import SweepResult
from agentstream.observe.health import STATUS_DIR_ENV
from agentstream.observe.metrics import (
    CollectorRegistry,
    MetricsServer,
)
from agentstream.transport.keys import partition_streams, physical_subscriptions
from agentstream.transport.permissions import acheck_permissions
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker.consumer import Consumer, describe_error
from agentstream.worker.dispatcher import Dispatcher
from agentstream.worker.monitor import Monitor
from agentstream.worker.names import NameLease, NamesExhausted, name_base
from agentstream.worker.needed_permissions import worker_needs
from agentstream.worker.partitions import PartitionAssigner
from agentstream.worker.pause import PauseWatch
from agentstream.worker.reaper import Reaper
from agentstream.worker.redis_state import RedisState, redis_cause
from agentstream.worker.trimmer import Trimmer

__all__ = ["Supervisor"]

log = structlog.get_logger("agentstream.supervisor")

_MAX_BACKOFF_S = 30.0
# A loop that ran this long before failing starts its backoff from scratch.
_HEALTHY_RUN_S = 60.0
# While waiting for Redis at start: a reminder this often after redis_unavailable.
_REMIND_S = 30.0
# While Redis is unreachable one probe PINGs it, backing off up to this: the
# loops that wait for it wake within this of its return.
_PROBE_MIN_S = 0.1
_PROBE_MAX_S = 0.5
_PROBE_TIMEOUT_S = 1.0
# Loops woken together by Redis' return start within this of each other.
_WAKE_SPREAD_S = 0.2


async def first_of(*waits: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as one of ``waits`` returns; cancel the others."""
    async with anyio.create_task_group() as tg:

        async def run(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(run, wait)


def jittered(delay_s: float) -> float:
    """``delay_s`` with +-25 % jitter, so restarting peers do not stampede."""
    return delay_s * random.uniform(0.75, 1.25)


class _PartitionLoops:
    """The consumer and reaper of one owned partition, stopped as one."""

    def __init__(self, token: int) -> None:
        self.token = token
        self.consumer: Consumer | None = None
        self.reaper: Reaper | None = None
        self.scope: anyio.CancelScope | None = None
        self.cancelled = False
        self.stopping = False
        self.done = anyio.Event()

    def is_stopping(self) -> bool:
        """Whether the partition's loops were asked to stop (no restart then)."""
        return self.stopping

    async def stop(self, graceful: bool, grace_s: float) -> None:
        """Stop now, or let the event in hand finish for up to ``grace_s``."""
        self.stopping = True
        if graceful:
            for loop in (self.consumer, self.reaper):
                if loop is not None:
                    loop.stop()
            with anyio.move_on_after(grace_s):
                await self.done.wait()
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()
        with anyio.move_on_after(grace_s):
            await self.done.wait()


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
        #: One per stream key: a partitioned subscription gives one per partition.
        self.subscriptions: list[SubscriptionSettings] = []
        self.assigners: list[PartitionAssigner] = []
        self._partition_scopes: dict[tuple[str, str], _PartitionLoops] = {}
        self.trimmers: list[Trimmer] = []
        self.sweeps: list[SweepResult] = []
        self.restarts = 0
        self.started = anyio.Event()
        self.pause: PauseWatch | None = None
        self._handle_signals = handle_signals
        self._parent_pid = parent_pid
        self._stopping = anyio.Event()
        self._forced = False
        self._forced_by: int | None = None
        self._exit_status = 0
        self._force = anyio.Event()
        self._running = 0
        self._all_done = anyio.Event()
        self.monitor = Monitor(
            self, CollectorRegistry() if registry is None else registry
        )
        # When each restarted loop began again; None while it waits to restart.
        self.loop_since: dict[str, float | None] = {}
        self._name_base = name_base(settings, process_index)

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the worker's metrics are on."""
        return self.monitor.registry

    @property
    def metrics_port(self) -> int | None:
        """The port metrics are served on (None when not serving)."""
        return self.monitor.port

    @property
    def event_types(self) -> frozenset[str]:
        """The event types with a handler of their own (not the ``*`` fallback)."""
        return self.app.event_types()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for."""
        return self._stopping.is_set()

    @property
    def reached_redis(self) -> bool:
        """Whether start-up reached Redis and the consumers run."""
        return self.started.is_set()

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

    def stop(self, force: bool = False, signum: int | None = None) -> None:
        """Begin a graceful stop; a second call (or ``force``) stops at once.

        A forced stop makes ``run()`` return non-zero: ``128 + signum`` when a
        signal forced it (130 for a second Ctrl-C, as shells report), else 1.
        """
        if force or self._stopping.is_set():
            self._forced = True
            self._forced_by = signum
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
            startup, _ = group.split(StartupError)
            if startup is not None:
                raise redis_cause(startup) from None
            raise

    async def _run(self) -> int:
        settings = self.settings
        monitor = self.monitor
        pool = pool_from_settings(
            settings.redis,
            socket_timeout_s=settings.block_ms / 1000 + 10,
            max_connections=settings.redis.max_connections
            + settings.consumers * len(settings.subscriptions)
            + sum(s.partitions for s in settings.subscriptions),
        )
        pool.observer = self.redis
        server: MetricsServer | None = None
        try:
            server = await monitor.serve()
            async with anyio.create_task_group() as tg:
                status_dir = os.environ.get(STATUS_DIR_ENV)
                if self._parent_pid is not None and status_dir:
                    path = Path(status_dir, f"{self.process_index}.json")
                    tg.start_soon(monitor.publish_status, path)
                    tg.start_soon(monitor.heartbeat.run)
                elif server is not None or monitor.systemd.watchdog_s:
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
                tg.start_soon(self._probe_redis, transports[0])
                lease = NameLease(transports, self._name_base, settings.name_lease_s)
                try:
                    self._name_base = await lease.acquire()
                except (NamesExhausted, AuthenticationError, PermissionDenied) as exc:
                    raise StartupError(str(exc)) from None
                tg.start_soon(lease.keep, self._name_lost)
                self.pause = PauseWatch(transports, monitor.metrics.set_paused)
                await self.pause.poll()
                tg.start_soon(self.pause.run)
                await monitor.check_memory_policy(transports[0], at_start=True)
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
                    event_loop=running_loop_name(),
                )
                await self._stopping.wait()
                log.info("worker_stopping", grace_s=settings.shutdown_timeout_s)
                monitor.systemd.notify("STOPPING=1", "STATUS=draining in-flight events")
                for consumer in self.consumers:
                    consumer.stop()
                for reaper in self.reapers:
                    reaper.stop()
                for trimmer in self.trimmers:
                    trimmer.stop()
                with anyio.move_on_after(settings.shutdown_timeout_s):
                    await self._all_done.wait()
                tg.cancel_scope.cancel()
            if self.settings.metrics.enabled:
                monitor.record_counts()  # the last interval's counts
            if self.redis.up:
                # One short deadline for all cleanup, so that a stop during a
                # network cut still ends well inside the service manager's limit.
                # Forced, the consumers still hold entries: keep them, but free
                # the names so that a restart takes them back at once.
                with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                    if not self._forced:
                        await self._remove_own_consumers()
                    await lease.release()
            log.info("worker_stopped", forced=self._forced)
            if self._forced:
                return 128 + self._forced_by if self._forced_by else 1
            return self._exit_status
        finally:
            with anyio.CancelScope(shield=True):
                if server is not None:
                    await server.aclose()
                await pool.aclose()

    # -- startup -------------------------------------------------------------

    async def _open(self, pool: RedisConnectionPool) -> list[WorkerOps] | None:
        try:
            self.subscriptions = [
                physical
                for sub in self.settings.subscriptions
                for physical in physical_subscriptions(sub, cluster=pool.cluster)
            ]
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        delay = _PROBE_MIN_S
        waiting_since = time.monotonic()
        reminded = waiting_since
        while not self._stopping.is_set():
            try:
                transports = [
                    WorkerOps.attach(sub.stream, consumer_group=sub.group, pool=pool)
                    for sub in self.subscriptions
                ]
                # Every permission first, so that a missing one stops the start
                # here, named, rather than one code path later.
                needs = worker_needs(
                    self.settings, self.subscriptions, transports, self._name_base
                )
                await acheck_permissions(transports[0], needs)
                for transport in transports:
                    await transport.aensure_group()
            except (AuthenticationError, PermissionDenied) as exc:
                raise StartupError(str(exc)) from None
            except TransportError as exc:
                # Nothing else runs yet: retry as often as the probe would.
                self.redis.failed(exc)
                log.debug("redis_retrying", step="start", error=describe_error(exc))
                now = time.monotonic()
                if now - reminded >= _REMIND_S:
                    reminded = now
                    log.warning(
                        "redis_still_unavailable",
                        waited_s=round(now - waiting_since),
                        error=describe_error(exc),
                    )
                # systemd counts start-up against TimeoutStartSec: ask for more
                # time while waiting, so a slow Redis is no restart loop.
                extend_us = int((_MAX_BACKOFF_S * 2) * 1_000_000)
                self.monitor.systemd.notify(
                    f"EXTEND_TIMEOUT_USEC={extend_us}",
                    f"STATUS=waiting for Redis: {describe_error(exc)}",
                )
                with anyio.move_on_after(jittered(delay)):
                    await self._stopping.wait()
                delay = min(delay * 2, _PROBE_MAX_S)
                continue
            self.redis.answered()
            for sub, transport in zip(self.subscriptions, transports, strict=True):
                transport.retention = sub.retention.mode
            return transports
        return None

    async def _probe_redis(self, transport: WorkerOps) -> None:
        # The one loop that asks while Redis is unreachable; the others wait
        # for its answer (RedisState.wait_answer) instead of their own backoff.
        delay = _PROBE_MIN_S
        while True:
            if self.redis.up:
                delay = _PROBE_MIN_S
                await anyio.sleep(_PROBE_MIN_S)
                continue
            with anyio.move_on_after(_PROBE_TIMEOUT_S):
                try:
                    await transport.aping()  # its answer wakes every waiting loop
                    continue
                except TransportError as exc:
                    log.debug("redis_retrying", step="probe", error=describe_error(exc))
            await anyio.sleep(jittered(delay))
            delay = min(delay * 2, _PROBE_MAX_S)

    def _start_loops(
        self, tg: anyio.abc.TaskGroup, transports: list[WorkerOps]
    ) -> None:
        dispatcher = self.dispatcher = Dispatcher(
            self.settings.concurrency, self.settings.sync_threads
        )
        by_stream = dict(zip(self.subscriptions, transports, strict=True))
        for logical in self.settings.subscriptions:
            pairs = [
                (sub, by_stream[sub])
                for sub in self.subscriptions
                if sub.group == logical.group
                and sub.stream in partition_streams(logical.stream, logical.partitions)
            ]
            for sub, transport in pairs:
                if sub.retention.mode == "processed":
                    self._start_trimmer(tg, sub, transport)
            if logical.ordered:
                self._start_ordered(tg, logical, pairs, dispatcher)
                continue
            # Unordered: every process reads every partition; the process's
            # consumers are spread over them, at least one each.
            per_partition = math.ceil(self.settings.consumers / len(pairs))
            for sub, transport in pairs:
                own: list[str] = []
                for index in range(per_partition):
                    consumer = self._consumer(index, sub, transport, dispatcher)
                    own.append(consumer.name)
                    self._spawn(tg, consumer.name, consumer.run)
                self._start_reaper(tg, "reaper", sub, transport, dispatcher, own)

    def _start_trimmer(
        self, tg: anyio.abc.TaskGroup, sub: SubscriptionSettings, transport: WorkerOps
    ) -> None:
        trimmer = Trimmer(transport, sub.retention)
        self.trimmers.append(trimmer)
        on_trim = partial(self.monitor.record_trim, transport)
        name = f"trimmer {sub.stream}/{sub.group}"
        self._spawn(tg, name, partial(trimmer.run, on_trim))

    def _start_reaper(
        self,
        tg: anyio.abc.TaskGroup,
        name: str,
        sub: SubscriptionSettings,
        transport: WorkerOps,
        dispatcher: Dispatcher,
        own: list[str],
        done: Callable[[], bool] = lambda: False,
        spared: Sequence[str] = (),
    ) -> Reaper:
        reaper_consumer = self._consumer(name, sub, transport, dispatcher)
        own.append(reaper_consumer.name)
        reaper = Reaper(reaper_consumer, self.settings.reaper, own, spared)
        self.reapers.append(reaper)
        on_sweep = partial(self._swept, reaper)
        self._spawn(tg, reaper_consumer.name, partial(reaper.run, on_sweep), done)
        return reaper

    # -- ordered subscriptions: partitions owned through leases ----------------

    def _start_ordered(
        self,
        tg: anyio.abc.TaskGroup,
        logical: SubscriptionSettings,
        pairs: list[tuple[SubscriptionSettings, WorkerOps]],
        dispatcher: Dispatcher,
    ) -> None:
        def start(index: int, token: int) -> None:
            sub, transport = pairs[index]
            loops = _PartitionLoops(token)
            self._partition_scopes[(sub.stream, sub.group)] = loops
            tg.start_soon(self._run_partition, loops, sub, transport, dispatcher)

        async def stop(index: int, graceful: bool) -> None:
            sub = pairs[index][0]
            loops = self._partition_scopes.pop((sub.stream, sub.group), None)
            if loops is not None:
                await loops.stop(graceful, self.settings.shutdown_timeout_s)

        assigner = PartitionAssigner(
            logical.stream,
            [t for _, t in pairs],
            self._name_base,
            self.settings.partition_lease_s,
            start,
            stop,
        )
        self.assigners.append(assigner)
        self._spawn(tg, f"{self._name_base}-assigner-{logical.stream}", assigner.run)

    async def _run_partition(
        self,
        loops: _PartitionLoops,
        sub: SubscriptionSettings,
        transport: WorkerOps,
        dispatcher: Dispatcher,
    ) -> None:
        # The consumer's name belongs to the partition, not to this process: a
        # new owner first takes over the previous owner's pending entries, then
        # reads on. In order: per order_key when the subscription has one (keys
        # run concurrently), else the whole partition one event at a time.
        consumer = Consumer(
            "partition", transport, self.app, sub, self.settings, dispatcher,
            on_read=self.redis.answered, pause=self.pause, in_order=True,
        )  # fmt: skip
        self.consumers.append(consumer)
        loops.consumer = consumer
        try:
            async with anyio.create_task_group() as inner:
                loops.scope = inner.cancel_scope
                if loops.cancelled:
                    inner.cancel_scope.cancel()
                self._spawn(inner, consumer.name, consumer.run, loops.is_stopping)
                loops.reaper = self._start_reaper(
                    inner,
                    "partition-reaper",
                    sub,
                    transport,
                    dispatcher,
                    [consumer.name],
                    loops.is_stopping,
                    spared=[consumer.name],
                )
        finally:
            for c in [consumer, loops.reaper.consumer if loops.reaper else None]:
                if c is not None and c in self.consumers:
                    self.consumers.remove(c)
            if loops.reaper is not None and loops.reaper in self.reapers:
                self.reapers.remove(loops.reaper)
            loops.done.set()

    def _consumer(
        self,
        index: int | str,
        sub: SubscriptionSettings,
        transport: WorkerOps,
        dispatcher: Dispatcher,
    ) -> Consumer:
        name = index if index == "partition-reaper" else self.consumer_name(index)
        consumer = Consumer(
            str(name),
            transport,
            self.app,
            sub,
            self.settings,
            dispatcher,
            on_read=self.redis.answered,
            pause=self.pause,
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
        self,
        tg: anyio.abc.TaskGroup,
        name: str,
        run: Callable[[], Awaitable[None]],
        done: Callable[[], bool] = lambda: False,
    ) -> None:
        self._running += 1
        tg.start_soon(self._keep_alive, name, run, done, name=name)

    async def _keep_alive(
        self, name: str, run: Callable[[], Awaitable[None]], done: Callable[[], bool]
    ) -> None:
        delay = 0.1
        try:
            while not self._stopping.is_set() and not done():
                started = time.monotonic()
                cause: BaseException | None = None
                try:
                    await run()
                except Exception as exc:  # noqa: BLE001 - reported, then restarted
                    cause = redis_cause(exc)
                    self._report(name, cause)
                if self._stopping.is_set() or done():
                    return
                if time.monotonic() - started > _HEALTHY_RUN_S:
                    delay = 0.1
                self.restarts += 1
                self.loop_since[name] = None
                await self._wait_to_restart(name, cause, delay)
                self.loop_since[name] = time.monotonic()
                delay = min(delay * 2, _MAX_BACKOFF_S)
        finally:
            self._running -= 1
            if self._running == 0:
                self._all_done.set()

    def _report(self, name: str, cause: BaseException) -> None:
        if isinstance(cause, ConnectionError | Refused):
            self.redis.failed(cause)  # logged once per change of state
        elif isinstance(cause, TransportError):
            log.error("consumer_failed", consumer=name, error=describe_error(cause))
        else:
            log.error("consumer_crashed", consumer=name, exc_info=cause)

    async def _wait_to_restart(
        self, name: str, cause: BaseException | None, delay: float
    ) -> None:
        if isinstance(cause, ConnectionError | Refused):
            # Redis' state is logged once per change; each retry only at debug.
            log.debug("consumer_retrying", consumer=name, delay_s=round(delay, 2))
        else:
            log.info("consumer_restarting", consumer=name, delay_s=round(delay, 2))
        waits: list[Callable[[], Awaitable[None]]] = [self._stopping.wait]
        if isinstance(cause, ConnectionError):
            waits.append(self.redis.wait_answer)
        with anyio.move_on_after(jittered(delay)):
            await first_of(*waits)
            if not self._stopping.is_set() and len(waits) > 1:
                await anyio.sleep(random.uniform(0, _WAKE_SPREAD_S))

    # -- signals and shutdown ----------------------------------------------------

    async def _watch_signals(self) -> None:
        # SIGHUP (a closed terminal, `systemctl kill -s HUP`) stops gracefully
        # too: nothing here can be reloaded in place, and dying at once with
        # 129 would skip the drain.
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with anyio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                log.info("signal_received", signal=signal.Signals(signum).name)
                self.stop(signum=signum)

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
