"""Monitor: a worker process's metrics, health probes and systemd notifications."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

import anyio
import structlog

from agentstream.config import Settings, SubscriptionSettings
from agentstream.errors import PermissionDenied, StartupError, TransportError
from agentstream.observe.counts import SweepResult
from agentstream.observe.health import (
    HEARTBEAT_INTERVAL_S,
    Health,
    Heartbeat,
    ProcessStatus,
    check_loops,
    write_status,
)
from agentstream.observe.metrics import (
    CollectorRegistry,
    Metrics,
    MetricsServer,
    start_server,
)
from agentstream.observe.systemd import SystemdNotifier
from agentstream.transport.worker_ops import TrimResult, WorkerOps
from agentstream.worker.consumer import Consumer, describe_error
from agentstream.worker.dispatcher import Dispatcher
from agentstream.worker.group_stats import collect_group_stats
from agentstream.worker.reaper import Reaper
from agentstream.worker.redis_state import RedisState

__all__ = ["Monitor", "Watched"]

log = structlog.get_logger("agentstream.monitor")


class Watched(Protocol):
    """What the monitor reads of a worker process (the ``Supervisor``)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def subscriptions(self) -> Sequence[SubscriptionSettings]: ...
    @property
    def parent_pid(self) -> int | None: ...
    @property
    def stopping(self) -> bool: ...
    @property
    def consumers(self) -> Sequence[Consumer]: ...
    @property
    def reapers(self) -> Sequence[Reaper]: ...
    @property
    def restarts(self) -> int: ...
    @property
    def redis(self) -> RedisState: ...
    @property
    def loop_since(self) -> dict[str, float | None]: ...
    @property
    def event_types(self) -> frozenset[str]: ...
    @property
    def reached_redis(self) -> bool: ...
    @property
    def dispatcher(self) -> Dispatcher | None: ...


class Monitor:
    """Watches a worker process and reports on it; never changes what it does."""

    def __init__(self, supervisor: Watched, registry: CollectorRegistry) -> None:
        self._sup = supervisor
        self.registry = registry
        self.metrics = Metrics(registry, supervisor.event_types)
        for sub in supervisor.settings.subscriptions:
            self.metrics.init_retention(sub.stream, sub.group)
        self.port: int | None = None
        self.heartbeat = Heartbeat()
        self.systemd = SystemdNotifier()
        self._groups_error: str | None = "not checked yet"
        self.memory_policy: str | None = None

    # -- metrics ---------------------------------------------------------------

    async def serve(self) -> MetricsServer | None:
        """Serve /metrics, /healthz and /readyz when enabled (not in children).

        Raises:
            StartupError: the port cannot be bound.
        """
        conf = self._sup.settings.metrics
        if not conf.enabled or self._sup.parent_pid is not None:
            # A child of a multi-process parent: the parent serves the sum of
            # every child's metrics (prometheus-client's multiprocess mode).
            return None
        health = Health(self.liveness, self.readiness)
        serve = partial(start_server, self.registry, conf.host, conf.port, health.wrap)
        try:
            server = await anyio.to_thread.run_sync(serve)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            msg = f"cannot serve metrics on {conf.host}:{conf.port}: {reason}"
            raise StartupError(msg) from None
        self.port = server.port
        log.info("metrics_serving", host=conf.host, port=server.port)
        return server

    def record_counts(self) -> None:
        """Publish what consumers counted since the last call (no Redis call)."""
        sup = self._sup
        for c in sup.consumers:
            stream, group = c.transport.stream_name, c.transport.consumer_group
            self.metrics.record_tally(stream, group, c.tally.take())
        self.metrics.set_restarts(sup.restarts)
        self.metrics.record_redis(*sup.redis.take())
        self.metrics.set_redis_state(sup.redis.up, sup.redis.recent_refusal_reason())
        self.metrics.set_in_flight(sum(c.in_flight for c in sup.consumers))
        if sup.dispatcher is not None:
            self.metrics.set_calls(sup.dispatcher.running, sup.dispatcher.capacity)
        ready, _ = self.readiness()
        self.metrics.set_state(ready, sup.redis.up, sup.redis.last_contact_s)

    def record_sweep(self, reaper: Reaper, result: SweepResult) -> None:
        """Publish what one reaper sweep did."""
        transport = reaper.consumer.transport
        self.metrics.record_sweep(
            transport.stream_name, transport.consumer_group, result
        )

    def record_trim(self, transport: WorkerOps, result: TrimResult) -> None:
        """Publish what one trim of a processed-retention stream removed."""
        dropped = {g: (d.unread, d.pending) for g, d in result.dropped.items()}
        self.metrics.record_trim(
            transport.stream_name, result.acknowledged, result.capped, dropped
        )

    async def check_memory_policy(
        self, transport: WorkerOps, *, at_start: bool = False
    ) -> None:
        """Read Redis's ``maxmemory-policy``: a warning (at start, and on every
        change) unless it is ``noeviction``, and the metric.

        Any other policy lets Redis evict keys under memory pressure: streams,
        their consumer groups and pending lists, leases; events lost without
        a trace. A user whose ACL denies ``INFO`` gets one warning at start.
        """
        try:
            policy = await transport.amaxmemory_policy()
        except PermissionDenied as exc:
            if at_start:
                log.warning("maxmemory_policy_unknown", error=describe_error(exc))
            return
        except TransportError:
            return
        if policy != self.memory_policy and policy != "noeviction":
            log.warning(
                "redis_eviction_possible",
                maxmemory_policy=policy,
                hint="set maxmemory-policy noeviction: evicted streams lose events",
            )
        self.memory_policy = policy
        if self._sup.settings.metrics.enabled:
            self.metrics.set_memory_policy(policy)

    async def report(self, transports: list[WorkerOps]) -> None:
        """Every ``reaper.interval_s``: counts, then each group's backlog."""
        subs = list(self._sup.subscriptions)  # one per stream key (partition)
        while True:
            self.record_counts()
            await self.check_memory_policy(transports[0])
            error = None
            for sub, transport in zip(subs, transports, strict=True):
                try:
                    stats = await collect_group_stats(transport, sub.dead_letter_key)
                except TransportError as exc:
                    error = describe_error(exc)
                    continue
                self.metrics.record_group_stats(sub.stream, sub.group, stats)
            if error is not None and error != self._groups_error:
                log.warning("group_stats_failed", error=error)
            self._groups_error = error
            await anyio.sleep(self._sup.settings.reaper.interval_s)

    # -- health ----------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Live: the event loop answers and no consumer loop is stuck."""
        # Runs in the metrics server's thread: reads state, never awaits.
        live, reason = self.heartbeat.check()
        if not live:
            return live, reason
        sup = self._sup
        settings = sup.settings
        reapers = {r.consumer.name for r in sup.reapers}
        loops = []
        for c in list(sup.consumers):
            since = sup.loop_since.get(c.name, 0.0)
            if since is None:  # waiting to restart after a failure: not stuck
                continue
            wait_s = (
                settings.reaper.interval_s
                if c.name in reapers
                else settings.block_ms / 1000
            )
            deadline_s = wait_s + settings.handler_timeout_s + 5
            loops.append((c.name, max(c.last_tick, since), deadline_s))
        return check_loops(loops)

    def readiness(self) -> tuple[bool, str]:
        """Ready: not stopping, Redis answers, and the groups exist."""
        if self._sup.stopping:
            return False, "stopping"
        redis = self._sup.redis
        if not redis.up:
            return False, "redis unavailable"
        refusal = redis.recent_refusal()
        if refusal is not None:
            if redis.recent_refusal_reason() == "NOPERM":
                return False, f"permission denied: {refusal}"
            # It answers: events may still be handled and acknowledged.
            reason = redis.recent_refusal_reason()
            return False, f"redis refuses commands ({reason}): {refusal}"
        if self._groups_error is not None:
            return False, f"consumer groups: {self._groups_error}"
        return True, "ok"

    async def publish_status(self, path: Path) -> None:
        """Write this process's liveness and readiness to ``path`` every beat.

        A multi-process parent derives its /healthz, /readyz, READY=1 and
        watchdog from its children's files; a child whose event loop stops
        stops writing, and the parent sees its file go stale.
        """
        pid = os.getpid()
        while True:
            live, live_reason = self.liveness()
            ready, ready_reason = self.readiness()
            status = ProcessStatus(
                pid,
                time.monotonic(),
                self._sup.reached_redis,
                live,
                live_reason,
                ready,
                ready_reason,
            )
            write_status(path, status)
            await anyio.sleep(HEARTBEAT_INTERVAL_S)

    # -- systemd ---------------------------------------------------------------

    def status(self) -> str:
        """The one-line summary systemd shows."""
        sup = self._sup
        in_flight = sum(c.in_flight for c in sup.consumers)
        reason = sup.redis.recent_refusal_reason()
        redis = "up" if sup.redis.up else "unavailable"
        if sup.redis.up and reason is not None:
            redis = f"refusing ({reason})"
        return (
            f"{len(sup.consumers)} consumers on "
            f"{len(sup.settings.subscriptions)} streams, redis {redis}, "
            f"{in_flight} in flight, {sup.restarts} restarts"
        )

    async def notify_systemd(self) -> None:
        """Send STATUS, and WATCHDOG=1 only while live, every half watchdog."""
        interval_s = (self.systemd.watchdog_s or 60.0) / 2
        while True:
            live, reason = self.liveness()
            lines = [f"STATUS={self.status()}"]
            if self.systemd.watchdog_s and live:
                lines.append("WATCHDOG=1")
            elif not live:
                log.warning("watchdog_withheld", reason=reason)
            self.systemd.notify(*lines)
            await anyio.sleep(interval_s)
