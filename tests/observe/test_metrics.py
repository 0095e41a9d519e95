"""Metrics, /metrics, /healthz and /readyz: collectors alone and a live supervisor."""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from agentstream import (
    App,
    DeadLetter,
    Event,
    RedisStreamTransport,
    Settings,
    __version__,
)
from agentstream.config import RedisSettings
from agentstream.errors import StartupError
from agentstream.observe.counts import (
    BUCKETS_S,
    FAILED,
    MAX_TYPES,
    OK,
    OTHER,
    SweepResult,
    Tally,
    TypeTally,
)
from agentstream.observe.health import Health, Heartbeat, check_loops
from agentstream.observe.metrics import (
    CollectorRegistry,
    GroupStats,
    Metrics,
    start_server,
)
from agentstream.testing import await_for
from agentstream.testing.pytest_plugin import RedisServerFactory
from agentstream.transport.pool import pool_from_settings
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker.group_stats import collect_group_stats
from agentstream.worker.supervisor import Supervisor

N_EVENTS = 20
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def make_settings(redis_url: str, stream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "block_ms": 100,
        "consumers": 1,
        "shutdown_timeout_s": 5.0,
        "handler_timeout_s": 5.0,
        "name_prefix": "m",
        "subscriptions": [{"stream": stream}],
        "redis": {"url": redis_url},
        "reaper": {"interval_s": 0.1, "min_idle_ms": 300, "max_deliveries": 3},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
    }
    values.update(overrides)
    return Settings(**values)


def fetch(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the local metrics port; returns status and body."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def afetch(port: int, path: str) -> tuple[int, str]:
    return await anyio.to_thread.run_sync(fetch, port, path)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``."""
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if labels.items() <= found.items():
            return float(match.group(3))
    return None


async def status_is(port: int, path: str, code: int) -> bool:
    return (await afetch(port, path))[0] == code


class TestCollectors:
    """Collectors on a test's own registry, no Redis."""

    def test_a_type_with_a_handler_keeps_its_count_past_max_types(self) -> None:
        """Past MAX_TYPES types in one tally (a slow reporter, many invented
        types) the others count as other; a labelled type never does."""
        tally = Tally(frozenset({"known"}))
        for i in range(MAX_TYPES + 50):
            tally.count(f"t-{i}", OK)
        tally.count("known", OK)
        tally.count("unlabelled", OK)
        taken = tally.take()
        assert taken.types["known"].counts[OK] == 1
        assert "unlabelled" not in taken.types
        assert taken.types[OTHER].counts[OK] == 51
        assert tally.labelled == taken.labelled == frozenset({"known"})

    def test_observe_fills_the_bucket_of_each_bound(self) -> None:
        """TypeTally.observe (with its fast path for quick handlers) fills the
        bucket Prometheus would, at every bound and between."""
        values = [0.0, *BUCKETS_S, *(b * 1.01 for b in BUCKETS_S), 1e9]
        for duration in values:
            tally = TypeTally()
            tally.observe(duration, duration)
            expected = [0] * (len(BUCKETS_S) + 1)
            expected[
                next((i for i, b in enumerate(BUCKETS_S) if duration <= b), -1)
            ] = 1
            assert (tally.duration, tally.age) == (expected, expected), duration
            assert tally.duration_sum == tally.age_sum == duration

    def test_tally_sweep_and_restarts(self) -> None:
        """Tallies add up per type and outcome, with histograms; restarts are deltas."""
        registry = CollectorRegistry()
        metrics = Metrics(registry, {"token", "tool_call"})
        tally = Tally()
        tally.count("token", OK, 3)
        tally.count("tool_call", FAILED)
        tally.of("token").observe(0.002, 0.5)
        tally.of("token").observe(0.2, 1.5)
        tally.dead_lettered("max_deliveries")
        metrics.record_tally("s", "g", tally.take())
        tally.count("token", OK, 2)
        metrics.record_tally("s", "g", tally.take())
        metrics.record_sweep(
            "s", "g", SweepResult(claimed=2, dead_lettered=1, max_idle_ms=90_500)
        )
        metrics.set_restarts(2)
        metrics.set_restarts(5)
        metrics.record_redis({"xreadgroup": 2}, 1)

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        group = {"stream": "s", "group": "g"}
        idle = value("agentstream_oldest_pending_idle_seconds", **group)
        assert idle == pytest.approx(90.5)
        assert value(
            "agentstream_events_total", **group, type="token", outcome="ok"
        ) == pytest.approx(5)
        assert value(
            "agentstream_events_total", **group, type="tool_call", outcome="failed"
        ) == pytest.approx(1)
        duration = "agentstream_handler_duration_seconds"
        assert value(f"{duration}_count", **group, type="token") == 2
        assert value(f"{duration}_bucket", **group, type="token", le="0.0025") == 1
        assert value(f"{duration}_sum", **group, type="token") == pytest.approx(0.202)
        assert value("agentstream_event_age_seconds_count", **group) == 2
        assert value("agentstream_event_age_seconds_bucket", **group, le="1.0") == 1
        assert value("agentstream_claimed_total", **group) == 2
        assert (
            value("agentstream_dead_lettered_total", **group, reason="max_deliveries")
            == 1
        )
        assert value("agentstream_reaper_sweep_duration_seconds_count", **group) == 1
        assert value("agentstream_consumer_restarts_total") == 5
        assert value("agentstream_redis_errors_total", operation="xreadgroup") == 2
        assert value("agentstream_redis_reconnects_total") == 1
        assert value("agentstream_build_info", version=__version__) == 1

    def test_event_types_are_bounded(self) -> None:
        """Past MAX_TYPES distinct types, the rest are counted as 'other'."""
        tally = Tally()
        for n in range(MAX_TYPES + 10):
            tally.count(f"t{n}", OK)
        assert len(tally.types) == MAX_TYPES + 1
        assert tally.types["other"].counts[OK] == 10

    def test_unknown_lag_removes_the_series(self) -> None:
        """A null lag drops the lag series and raises the unknown flag, not a 0."""
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        labels = {"stream": "s", "group": "g"}
        metrics.record_group_stats("s", "g", GroupStats(5, 4, 1, 2.5, 2, 0))
        assert registry.get_sample_value("agentstream_group_lag", labels) == 4
        assert registry.get_sample_value("agentstream_group_lag_unknown", labels) == 0
        metrics.record_group_stats("s", "g", GroupStats(5, None, 1, 2.5, 2, 0))
        assert registry.get_sample_value("agentstream_group_lag", labels) is None
        assert registry.get_sample_value("agentstream_group_lag_unknown", labels) == 1

    def test_health_routes_and_checks(self) -> None:
        """/healthz and /readyz answer from their checks; other paths are metrics."""
        registry = CollectorRegistry()
        Metrics(registry)
        live = [True]
        health = Health(lambda: (live[0], "why"), lambda: (False, "no redis"))
        server = start_server(registry, "127.0.0.1", 0, health.wrap)
        try:
            assert fetch(server.port, "/healthz") == (200, "ok: why\n")
            live[0] = False
            assert fetch(server.port, "/healthz") == (503, "unavailable: why\n")
            assert fetch(server.port, "/readyz") == (503, "unavailable: no redis\n")
            status, body = fetch(server.port, "/metrics")
            assert status == 200
            assert "agentstream_build_info" in body
        finally:
            server.close()
        beat = Heartbeat()
        assert beat.check(now=beat.at + 1) == (True, "ok")
        assert beat.check(now=beat.at + 6)[0] is False
        assert check_loops([("c", 100.0, 10.0)], now=105.0) == (True, "ok")
        ok, reason = check_loops([("c", 100.0, 10.0)], now=111.0)
        assert not ok
        assert "c (11s > 10s)" in reason


@pytest.fixture(name="client")
async def _client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.mark.anyio
@pytest.mark.redis
class TestGroupStats:
    """collect_group_stats against a real Redis, through the worker's bytes pool."""

    async def test_lag_pending_and_oldest_age(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """Lag counts undelivered entries; pending age comes from the oldest id."""
        pool = pool_from_settings(
            RedisSettings(url=redis_url), socket_timeout_s=5.0, max_connections=4
        )
        try:
            transport = await WorkerOps.aopen(stream_name, pool=pool)
            minute_ago_ms = int(time.time() * 1000) - 60_000
            await client.xadd(stream_name, {"n": "0"}, id=f"{minute_ago_ms}-0")
            for n in range(1, 4):
                await client.xadd(stream_name, {"n": str(n)})
            await client.xadd(f"{stream_name}:dlq", {"n": "x"})

            stats = await collect_group_stats(transport, f"{stream_name}:dlq")
            assert stats == GroupStats(4, 4, 0, 0.0, 0, 1, stats.lag_age_s)
            # the oldest undelivered entry is the one of a minute ago
            assert stats.lag_age_s is not None and 59 <= stats.lag_age_s < 120

            # One entry (the oldest) read and never acknowledged.
            await transport.aread_batch("c", 1, None)
            stats = await collect_group_stats(transport, f"{stream_name}:dlq")
            assert (stats.lag, stats.pending, stats.consumers) == (3, 1, 1)
            assert stats.oldest_pending_age_s is not None
            assert 59 <= stats.oldest_pending_age_s < 120
            assert stats.lag_age_s is not None and stats.lag_age_s < 59

            # All read: nothing undelivered, a lag age of 0.
            await transport.aread_batch("c", 10, None)
            stats = await collect_group_stats(transport, f"{stream_name}:dlq")
            assert (stats.lag, stats.lag_age_s) == (0, 0.0)

            # Deleting an undelivered entry leaves Redis unable to tell the lag;
            # the stream itself, counted, still can.
            await client.xadd(stream_name, {"n": "4"})
            await client.xadd(stream_name, {"n": "5"})
            last: Any = await client.xrevrange(stream_name, count=1)
            await client.xdel(stream_name, last[0][0])
            stats = await collect_group_stats(transport, f"{stream_name}:dlq")
            assert stats.lag == 1
            assert stats.length == 5
            assert stats.lag_age_s is not None and stats.lag_age_s < 59
        finally:
            await client.delete(stream_name, f"{stream_name}:dlq")
            await pool.aclose()


@pytest.mark.anyio
@pytest.mark.redis
class TestServedBySupervisor:
    """A supervisor in-process serving /metrics, /healthz and /readyz on port 0."""

    async def test_labels_stay_bounded_with_1000_types_and_reasons(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """1,000 producer-chosen types and 1,000 dead-letter reasons: few series.

        ``type`` is the type only for those with a handler of their own (else
        ``other``), ``reason`` one of a fixed set; the free text stays in the
        dead-letter entries.
        """
        app = App()

        @app.handler("known")
        async def known(event: Event) -> None:
            pass

        @app.handler("*")
        async def anything(event: Event) -> None:
            if event.type.startswith("dl-"):
                raise DeadLetter(f"reason {event.data['n']}: " + "x" * 1000)

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        supervisor = Supervisor(
            make_settings(redis_url, stream_name, batch_size=500),
            app,
            handle_signals=False,
        )
        n = 1000
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(supervisor.run)
                await supervisor.started.wait()
                port = supervisor.metrics_port
                assert port is not None
                pipe = client.pipeline(transaction=False)
                for i in range(n):
                    pipe.xadd(stream_name, {"type": f"t-{i}", "data": "{}"})
                    pipe.xadd(stream_name, {"type": f"dl-{i}", "data": f'{{"n": {i}}}'})
                pipe.xadd(stream_name, {"type": "known", "data": "{}"})
                await pipe.execute()

                async def all_counted() -> bool:
                    _, text = await afetch(port, "/metrics")
                    events = "agentstream_events_total"
                    others = sample(text, events, type="other", outcome="ok")
                    known = sample(text, events, type="known", outcome="ok")
                    dead = sample(
                        text, "agentstream_dead_lettered_total", reason="handler"
                    )
                    # At least: under load a lease can lapse and an event run twice.
                    return (others or 0) >= n and (dead or 0) >= n and bool(known)

                await await_for(all_counted, timeout=60)
                _, text = await afetch(port, "/metrics")
                supervisor.stop()
        events = [
            ln for ln in text.splitlines() if ln.startswith("agentstream_events_total{")
        ]
        types = {re.search(r'type="([^"]*)"', ln).group(1) for ln in events}  # type: ignore[union-attr]
        assert types == {"known", "other"}, types
        assert len(events) == 3  # known/ok, other/ok, other/dead_letter
        dead = [
            ln
            for ln in text.splitlines()
            if ln.startswith("agentstream_dead_lettered_total{")
        ]
        assert len(dead) == 1 and 'reason="handler"' in dead[0], dead
        assert len(text) < 50_000, len(text)  # one scrape stays small
        assert await client.xlen(f"{stream_name}:dlq") >= n  # free text kept there
        await producer.adelete()
        await producer.aclose()

    async def test_events_counted_and_probes_ok(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """Handled events appear in events_total and both probes answer 200."""
        app = App()

        @app.handler("t")
        async def handle(event: Event) -> None:
            pass

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        supervisor = Supervisor(
            make_settings(redis_url, stream_name), app, handle_signals=False
        )
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(supervisor.run)
                await supervisor.started.wait()
                port = supervisor.metrics_port
                assert port is not None
                for n in range(N_EVENTS):
                    await producer.apublish("t", {"n": n})

                async def all_ok(port: int) -> bool:
                    _, text = await afetch(port, "/metrics")
                    labels = {"stream": stream_name, "type": "t", "outcome": "ok"}
                    value = sample(text, "agentstream_events_total", **labels)
                    return value == N_EVENTS

                await await_for(partial(all_ok, port), timeout=15)
                await await_for(partial(status_is, port, "/readyz", 200), timeout=10)
                assert (await afetch(port, "/healthz"))[0] == 200
                _, text = await afetch(port, "/metrics")
                labels = {"stream": stream_name, "group": "agents"}
                assert sample(text, "agentstream_group_lag", **labels) == 0
                assert sample(text, "agentstream_group_lag_seconds", **labels) == 0
                assert sample(text, "agentstream_worker_ready") == 1
                assert sample(text, "agentstream_redis_up") == 1
                contact = sample(
                    text, "agentstream_redis_last_contact_timestamp_seconds"
                )
                assert contact is not None and contact > time.time() - 60
                assert sample(text, "process_resident_memory_bytes")
                assert sample(text, "process_open_fds")
                assert sample(text, "agentstream_group_lag_unknown", **labels) == 0
                assert sample(text, "agentstream_group_pending", **labels) == 0
                length = sample(text, "agentstream_stream_length", stream=stream_name)
                assert length == N_EVENTS
                assert sample(
                    text, "agentstream_reaper_last_sweep_timestamp_seconds", **labels
                )
                supervisor.stop()
        assert port is not None  # mypy: the task group could have swallowed it
        with pytest.raises(urllib.error.URLError):
            fetch(port, "/healthz")  # the server is closed with the supervisor
        await producer.adelete()
        await producer.aclose()

    async def test_healthz_fails_while_a_consumer_loop_is_stuck(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """A consumer whose loop has not ticked within its deadline fails /healthz."""
        app = App()
        started = anyio.Event()
        release = anyio.Event()

        @app.handler("block")
        async def block(event: Event) -> None:
            started.set()
            await release.wait()

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        supervisor = Supervisor(
            make_settings(redis_url, stream_name), app, handle_signals=False
        )
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(supervisor.run)
                await supervisor.started.wait()
                port = supervisor.metrics_port
                assert port is not None
                assert (await afetch(port, "/healthz"))[0] == 200
                await producer.apublish("block", {})
                await started.wait()
                # The consumer sits in its handler and cannot tick; backdating its
                # last tick stands in for an hour stuck there, past its deadline
                # of block_ms/1000 + handler_timeout_s + 5 seconds.
                consumer = next(c for c in supervisor.consumers if c.name == "m-0-0")
                consumer.last_tick = time.monotonic() - 3600
                status, body = await afetch(port, "/healthz")
                assert status == 503
                assert "m-0-0" in body
                release.set()  # the loop reads again, ticks, and is live again
                await await_for(partial(status_is, port, "/healthz", 200), timeout=10)
                supervisor.stop()
        await producer.adelete()
        await producer.aclose()

    async def test_readyz_follows_redis(
        self, redis_factory: RedisServerFactory, stream_name: str
    ) -> None:
        """/readyz is 503 while Redis is down, 200 once back; /healthz stays 200."""
        # With an AOF the group survives the restart; without one, getting it back
        # depends on the consumers re-creating it, which is not what this pins.
        fresh_redis = redis_factory(appendonly=True)
        supervisor = Supervisor(
            make_settings(fresh_redis.url, stream_name), App(), handle_signals=False
        )
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(supervisor.run)
                await supervisor.started.wait()
                port = supervisor.metrics_port
                assert port is not None
                await await_for(partial(status_is, port, "/readyz", 200), timeout=10)
                await anyio.to_thread.run_sync(fresh_redis.stop)
                await await_for(partial(status_is, port, "/readyz", 503), timeout=10)
                # Redis being down is readiness' business, not a reason to restart.
                assert (await afetch(port, "/healthz"))[0] == 200
                await anyio.to_thread.run_sync(fresh_redis.restart)
                await await_for(partial(status_is, port, "/readyz", 200), timeout=30)
                supervisor.stop()

    async def test_port_in_use_is_a_startup_error(
        self, redis_url: str, stream_name: str
    ) -> None:
        """A metrics port already bound stops the worker with StartupError."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            settings = make_settings(
                redis_url, stream_name, metrics={"port": port, "host": "127.0.0.1"}
            )
            supervisor = Supervisor(settings, App(), handle_signals=False)
            with anyio.fail_after(10), pytest.raises(StartupError, match=str(port)):
                await supervisor.run()

    async def test_children_of_a_parent_do_not_serve(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """A child of a multi-process parent leaves serving to the parent."""
        supervisor = Supervisor(
            make_settings(redis_url, stream_name),
            App(),
            process_index=1,
            handle_signals=False,
            parent_pid=os.getppid(),
        )
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(supervisor.run)
                await supervisor.started.wait()
                supervisor.stop()
        assert supervisor.metrics_port is None
        await client.delete(stream_name)
