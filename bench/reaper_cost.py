"""Reaper cost: wall time of one ``await reaper.sweep()``, in this process.

Built the way the supervisor builds a reaper, through the public interface
``Reaper(consumer, settings.reaper, live_names)`` and ``await reaper.sweep()``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import redis

from agentstream import App, Event, Settings
from agentstream.config import (
    MetricsSettings,
    ReaperSettings,
    RedisSettings,
    SubscriptionSettings,
)
from agentstream.observe.counts import SweepResult
from agentstream.transport.pool import pool_from_settings
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker.consumer import Consumer
from agentstream.worker.dispatcher import Dispatcher
from agentstream.worker.reaper import Reaper
from bench import GROUP
from bench.observe import BenchError, group_state
from bench.workload import add_entries

__all__ = ["ReaperResult", "run_reaper"]

LIVE = "live-0"  # a consumer that is handling its entries: renews, never idle
DEAD = "dead-0"  # a consumer that died with its entries
_READ = 10_000
_LIVE_IDLE_MS = 60_000  # the default min_idle_ms
_CLAIM_IDLE_MS = 100


@dataclass(frozen=True, slots=True)
class ReaperResult:
    case: str
    pending: int
    claimable: int
    median_ms: float
    min_ms: float
    max_ms: float
    claimed: int


def _read_all(client: redis.Redis, stream: str, consumer: str) -> list[bytes]:
    """Deliver every entry to ``consumer`` without acknowledging any."""
    ids: list[bytes] = []
    while True:
        streams: dict[Any, Any] = {stream: ">"}
        rows: Any = client.xreadgroup(GROUP, consumer, streams, count=_READ)
        if not rows or not rows[0][1]:
            return ids
        ids += [entry_id for entry_id, _ in rows[0][1]]


def _noop_app() -> App:
    app = App()

    @app.handler("token")
    async def noop(event: Event) -> None:
        return None

    return app


async def _sweeps(
    url: str, stream: str, min_idle_ms: int, repeats: int, prepare: Callable[[], None]
) -> tuple[list[float], list[SweepResult]]:
    settings = Settings(
        subscriptions=[SubscriptionSettings(stream=stream, group=GROUP)],
        redis=RedisSettings(url=url),
        metrics=MetricsSettings(enabled=False),
        reaper=ReaperSettings(min_idle_ms=min_idle_ms),
    )
    pool = pool_from_settings(settings.redis, socket_timeout_s=60, max_connections=8)
    times: list[float] = []
    results: list[SweepResult] = []
    try:
        transport = await WorkerOps.aopen(stream, pool=pool)
        dispatcher = Dispatcher(settings.concurrency, settings.sync_threads)
        sub = settings.subscriptions[0]
        consumer = Consumer(
            "bench-reaper", transport, _noop_app(), sub, settings, dispatcher
        )
        reaper = Reaper(consumer, settings.reaper, [consumer.name, LIVE])
        for _ in range(repeats):
            await anyio.to_thread.run_sync(prepare)
            # The sweep dispatches what it claims; active() waits for handling.
            async with consumer.active():
                started = time.perf_counter()
                results.append(await reaper.sweep())
            times.append(time.perf_counter() - started)
    finally:
        await pool.aclose()
    return times, results


def _result(
    case: str, pending: int, claimable: int, times: list[float], claimed: int
) -> ReaperResult:
    return ReaperResult(
        case=case,
        pending=pending,
        claimable=claimable,
        median_ms=statistics.median(times) * 1000,
        min_ms=min(times) * 1000,
        max_ms=max(times) * 1000,
        claimed=claimed,
    )


def live_case(
    client: redis.Redis, url: str, pending: int, repeats: int
) -> ReaperResult:
    """``pending`` entries held by a live consumer: nothing to claim."""
    stream = f"bench:reaper:live:{pending}"
    client.delete(stream)
    add_entries(client, stream, pending)
    client.xgroup_create(stream, GROUP, id="0")
    ids = _read_all(client, stream, LIVE)

    def renew() -> None:  # what a live consumer's lease does: idle back to ~0
        for i in range(0, len(ids), _READ):
            chunk: list[Any] = ids[i : i + _READ]
            client.xclaim(stream, GROUP, LIVE, 0, chunk, justid=True)

    times, results = anyio.run(_sweeps, url, stream, _LIVE_IDLE_MS, repeats, renew)
    claimed = sum(r.claimed + r.dead_lettered for r in results)
    if claimed or group_state(client, stream).pending != pending:
        raise BenchError(f"the reaper took {claimed} entries from a live consumer")
    client.delete(stream)
    return _result("nothing to claim (live consumer)", pending, 0, times, 0)


def claim_case(
    client: redis.Redis, url: str, entries: int, repeats: int
) -> ReaperResult:
    """``entries`` left by a dead consumer, idle past min_idle_ms: all claimed."""
    stream = f"bench:reaper:claim:{entries}"
    client.delete(stream)
    add_entries(client, stream, entries)
    client.xgroup_create(stream, GROUP, id="0")
    _read_all(client, stream, DEAD)
    dump = client.dump(stream)
    assert isinstance(dump, bytes)

    def restore() -> None:  # the same dead consumer's entries, idle past the limit
        client.delete(stream)
        client.restore(stream, 0, dump, replace=True)
        time.sleep(_CLAIM_IDLE_MS * 2 / 1000)

    times, results = anyio.run(_sweeps, url, stream, _CLAIM_IDLE_MS, repeats, restore)
    claimed = [r.claimed for r in results]
    if claimed != [entries] * repeats or group_state(client, stream).pending:
        raise BenchError(f"expected {entries} claimed per sweep, got {claimed}")
    client.delete(stream)
    return _result("to claim (dead consumer)", entries, entries, times, entries)


def run_reaper(
    client: redis.Redis, url: str, live: list[int], claim: int, repeats: int
) -> list[ReaperResult]:
    results = [live_case(client, url, n, repeats) for n in live]
    results.append(claim_case(client, url, claim, repeats))
    return results
