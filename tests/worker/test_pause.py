"""Pausing a subscription: the worker stops reading it and resumes on command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from test_supervisor import make_settings, running

from agentstream import App, Event, RedisStreamTransport
from agentstream.transport import keys
from agentstream.transport.pool import RedisConnectionPool
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker.consumer import RETRY_CONSUMER
from agentstream.worker.pause import PauseWatch
from agentstream.worker.supervisor import Supervisor
from redis_server import await_for

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(name="client")
async def _client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def _lag(client: aioredis.Redis, stream: str) -> int:
    groups: Any = await client.xinfo_groups(stream)
    return int(groups[0]["lag"])


async def _polls_after(watch: PauseWatch, n: int) -> None:
    """Wait until the watch has read the keys ``n`` more times."""
    target = watch.polls + n
    await await_for(lambda: watch.polls >= target, timeout=10)


class TestPause:
    async def test_paused_subscription_is_not_read_until_resumed(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """After pause, new events stay undelivered; after resume, all are handled."""
        app = App()
        seen: list[int] = []

        @app.handler("t")
        async def handle(event: Event) -> None:
            seen.append(event.data["n"])

        registry = CollectorRegistry()
        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        supervisor = Supervisor(
            make_settings(redis_url, stream_name, block_ms=2000),
            app,
            handle_signals=False,
            registry=registry,
        )
        key = keys.pause_key(stream_name, "agents")
        labels = {"stream": stream_name, "group": "agents"}
        gauge = "agentstream_subscription_paused"
        async with running(supervisor, 30):
            await supervisor.started.wait()
            producer.publish("t", {"n": 0})
            await await_for(lambda: seen == [0], timeout=10)
            watch = supervisor.pause
            assert watch is not None
            assert registry.get_sample_value(gauge, labels) == 0

            await client.set(key, '{"by": "test"}')
            await await_for(lambda: watch.paused(stream_name, "agents"), 5)
            # A read that began before the pause ends within the read cap
            # (700 ms, below block_ms=2000); then both consumers wait.
            await await_for(lambda: watch.holding == 2, timeout=5)
            for n in range(1, 6):
                producer.publish("t", {"n": n})
            await _polls_after(watch, 10)
            assert seen == [0]
            assert await _lag(client, stream_name) == 5
            assert registry.get_sample_value(gauge, labels) == 1

            await client.delete(key)
            await await_for(lambda: sorted(seen) == list(range(6)), timeout=10)
            assert registry.get_sample_value(gauge, labels) == 0
        producer.delete()
        producer.close()

    async def test_stop_while_paused(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """A worker paused from the start stops at once and cleanly when asked."""
        app = App()
        seen: list[int] = []

        @app.handler("t")
        async def handle(event: Event) -> None:
            seen.append(event.data["n"])

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        await client.set(keys.pause_key(stream_name, "agents"), "by test")
        producer.publish("t", {"n": 1})
        supervisor = Supervisor(
            make_settings(redis_url, stream_name), app, handle_signals=False
        )
        async with running(supervisor, 20):
            await supervisor.started.wait()
            watch = supervisor.pause
            assert watch is not None
            await _polls_after(watch, 5)
        assert seen == []
        assert await _lag(client, stream_name) == 1
        producer.delete()
        producer.close()

    async def test_paused_reaper_does_not_sweep(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """Entries parked for retry wait while paused and are retried after resume."""
        app = App()
        seen: list[str] = []

        @app.handler("t")
        async def handle(event: Event) -> None:
            seen.append(event.id)

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        entry_id = producer.publish("t", {})
        producer.read_group("gone-worker", count=10)
        await client.xclaim(
            stream_name, "agents", RETRY_CONSUMER, 0, [entry_id], idle=600_000
        )
        await client.set(keys.pause_key(stream_name, "agents"), "by test")
        supervisor = Supervisor(
            make_settings(redis_url, stream_name), app, handle_signals=False
        )
        async with running(supervisor, 20):
            await supervisor.started.wait()
            watch = supervisor.pause
            assert watch is not None
            await _polls_after(watch, 10)
            assert seen == []
            await client.delete(keys.pause_key(stream_name, "agents"))
            await await_for(lambda: seen == [entry_id], timeout=10)
        producer.delete()
        producer.close()

    async def test_unreadable_state_keeps_the_last_one(
        self, fresh_redis: Any, stream_name: str
    ) -> None:
        """While Redis cannot be read the watch keeps what it knew, then catches up."""
        pool = RedisConnectionPool(fresh_redis.url, decode_responses=False)
        transport = await WorkerOps.aopen(stream_name, pool=pool)
        changes: list[bool] = []
        watch = PauseWatch([transport], lambda s, g, p: changes.append(p))
        await watch.poll()
        await transport.raw.set(keys.pause_key(stream_name, "agents"), "x")
        await watch.poll()
        assert watch.paused(stream_name, "agents")
        fresh_redis.stop()
        await watch.poll()
        assert watch.paused(stream_name, "agents")
        assert changes == [False, True]
        await pool.aclose()

    def test_parking_consumer_name_is_shared(self) -> None:
        """The operator's redelivery hands entries to the worker's parking consumer."""
        assert keys.RETRY_CONSUMER == RETRY_CONSUMER
