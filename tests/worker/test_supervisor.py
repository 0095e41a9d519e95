"""Consumers, reaper and supervisor in one process, against a real Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
import structlog
import structlog.testing

from agentstream import App, Event, RedisStreamTransport, Settings
from agentstream.testing import await_for
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker import unhandled
from agentstream.worker.consumer import RETRY_CONSUMER
from agentstream.worker.dispatcher import Dispatcher
from agentstream.worker.reaper import Reaper
from agentstream.worker.supervisor import Supervisor

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def make_settings(redis_url: str, stream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "block_ms": 100,
        "consumers": 2,
        "shutdown_timeout_s": 5.0,
        "handler_timeout_s": 5.0,
        "name_prefix": "t",
        "subscriptions": [{"stream": stream}],
        "redis": {"url": redis_url},
        "reaper": {"interval_s": 0.1, "min_idle_ms": 300, "max_deliveries": 3},
        "metrics": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return Settings(**values)


@asynccontextmanager
async def running(supervisor: Supervisor, timeout_s: float = 20) -> AsyncIterator[None]:
    """Run ``supervisor`` for the block, then stop it; all within ``timeout_s``."""
    with anyio.fail_after(timeout_s):
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            yield
            supervisor.stop()


@pytest.fixture(name="client")
async def _client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def pending_count(client: aioredis.Redis, stream: str) -> int:
    summary: Any = await client.xpending(stream, "agents")
    return int(summary["pending"])


class TestSupervisor:
    async def test_handles_everything_then_stops_cleanly(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """Every event is handled once, acked, and stop() removes idle consumers."""
        app = App()
        seen: Counter[int] = Counter()

        @app.handler("t")
        async def handle(event: Event) -> None:
            seen[event.data["n"]] += 1

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        for n in range(500):
            producer.publish("t", {"n": n})
        supervisor = Supervisor(
            make_settings(redis_url, stream_name), app, handle_signals=False
        )
        async with running(supervisor, 20):
            await await_for(lambda: len(seen) == 500, timeout=10)
            await await_for(lambda: _zero_pending(client, stream_name), timeout=10)
        assert set(seen.values()) == {1}
        consumers: Any = await client.xinfo_consumers(stream_name, "agents")
        assert consumers == []
        producer.delete()
        producer.close()

    async def test_event_age_counts_from_the_entry_id(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """An event published 40 s ago (its id's time) is 40 s old when handled."""
        app = App()
        seen: list[str] = []

        @app.handler("old")
        @app.handler("new")
        async def handle(event: Event) -> None:
            seen.append(event.type)

        (server_s, _) = await client.time()
        old_id = f"{(server_s - 40) * 1000}-0"
        await client.xadd(stream_name, {"type": "old", "data": "{}"}, id=old_id)
        await client.xadd(stream_name, {"type": "new", "data": "{}"})
        supervisor = Supervisor(
            make_settings(redis_url, stream_name, consumers=1),
            app,
            handle_signals=False,
        )
        async with running(supervisor, 20):
            await await_for(lambda: len(seen) == 2, timeout=10)
            ages = {
                event_type: counts.age_sum
                for consumer in supervisor.consumers  # and the reaper's
                for event_type, counts in consumer.tally.types.items()
            }
        assert 38 < ages["old"] < 45, ages
        assert 0 <= ages["new"] < 3, ages

    async def test_reaper_claims_what_a_dead_consumer_left(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """Entries read by a consumer that died are claimed and handled again."""
        app = App()
        deliveries: list[tuple[str, int, str]] = []

        @app.handler("t")
        async def handle(event: Event) -> None:
            deliveries.append((event.id, event.delivery_count, event.consumer))

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        entry_id = producer.publish("t", {})
        producer.read_group("crashed-worker", count=10)  # read, never acked
        supervisor = Supervisor(
            make_settings(redis_url, stream_name), app, handle_signals=False
        )
        async with running(supervisor, 20):
            await await_for(lambda: deliveries != [], timeout=10)
            await await_for(lambda: _zero_pending(client, stream_name), timeout=10)
        assert deliveries == [(entry_id, 2, "t-0-reaper")]
        producer.delete()
        producer.close()

    async def test_lease_keeps_a_slow_handler_from_being_claimed(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """A handler running far past min_idle_ms is never handed to a second one."""
        app = App()
        starts: list[str] = []

        @app.handler("slow")
        async def slow(event: Event) -> None:
            starts.append(event.consumer)
            await anyio.sleep(1.5)

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        producer.publish("slow", {})
        first = Supervisor(
            make_settings(redis_url, stream_name, name_prefix="a"),
            app,
            handle_signals=False,
        )
        second = Supervisor(
            make_settings(redis_url, stream_name, name_prefix="b"),
            app,
            handle_signals=False,
        )
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.run)
                tg.start_soon(second.run)
                await await_for(lambda: starts != [], timeout=10)
                await await_for(lambda: _zero_pending(client, stream_name), timeout=10)
                first.stop()
                second.stop()
        assert len(starts) == 1
        producer.delete()
        producer.close()

    async def test_handler_timeout_fails_only_that_event(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """A hung handler is cancelled after handler_timeout_s; the next event runs."""
        app = App()
        handled: list[str] = []

        @app.handler("hang")
        async def hang(event: Event) -> None:
            if event.delivery_count == 1:
                await anyio.sleep_forever()
            handled.append("hang")

        @app.handler("ok")
        async def ok(event: Event) -> None:
            handled.append("ok")

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        producer.publish("hang", {})
        producer.publish("ok", {})
        settings = make_settings(
            redis_url, stream_name, consumers=1, handler_timeout_s=0.3
        )
        supervisor = Supervisor(settings, app, handle_signals=False)
        async with running(supervisor, 20):
            await await_for(lambda: len(handled) == 2, timeout=10)
        assert handled == ["ok", "hang"]
        producer.delete()
        producer.close()


async def _zero_pending(client: aioredis.Redis, stream: str) -> bool:
    return await pending_count(client, stream) == 0


class TestReaperSweep:
    async def test_sweep_skips_entries_of_live_consumers(
        self, redis_url: str, stream_name: str
    ) -> None:
        """Entries held by a live consumer are not even listed: O(claimable)."""
        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        for n in range(300):
            producer.publish("t", {"n": n})
        producer.read_group("live", count=300)  # pending, and the owner is fresh
        dead_id = producer.publish("t", {"n": -1})
        producer.read_group("dead", count=1)
        reaper, transport, pool = await _reaper(redis_url, stream_name)
        await await_for(lambda: _idle_at_least(transport, dead_id, 300), timeout=5)
        await transport.arenew("live", [e.id for e in producer.pending_range(300)])
        async with reaper.consumer.active():
            result = await reaper.sweep()
        assert result.scanned == 1
        assert result.claimed == 1
        assert result.max_idle_ms >= 300  # the dead one's; the live ones unseen
        await pool.aclose()
        producer.delete()
        producer.close()

    async def test_sweep_reports_the_largest_idle_time(
        self, redis_url: str, stream_name: str
    ) -> None:
        """max_idle_ms: the idlest pending entry a sweep finds, before it claims it; 0 when none is idle for min_idle_ms."""
        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        older = producer.publish("t", {"n": 1})
        producer.read_group("dead", count=1)
        reaper, transport, pool = await _reaper(redis_url, stream_name)
        async with reaper.consumer.active():
            assert (await reaper.sweep()).max_idle_ms == 0  # idle < min_idle_ms
        await await_for(lambda: _idle_at_least(transport, older, 700), timeout=5)
        newer = producer.publish("t", {"n": 2})
        producer.read_group("dead", count=1)
        await await_for(lambda: _idle_at_least(transport, newer, 300), timeout=5)
        async with reaper.consumer.active():
            result = await reaper.sweep()
            assert result.claimed == 2
            assert result.max_idle_ms >= 700  # the older one's, not the newer one's
            assert (await reaper.sweep()).max_idle_ms == 0  # claimed and handled
        await pool.aclose()
        producer.delete()
        producer.close()

    async def test_failed_entry_is_parked_for_the_reaper(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """A failure moves the entry to the retry consumer with its error kept."""
        app = App()
        attempts: list[int] = []

        @app.handler("t")
        async def fail_once(event: Event) -> None:
            attempts.append(event.delivery_count)
            if event.delivery_count == 1:
                raise RuntimeError("first time")

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        entry_id = producer.publish("t", {})
        supervisor = Supervisor(
            make_settings(redis_url, stream_name, reaper={"min_idle_ms": 2000}),
            app,
            handle_signals=False,
        )
        async with running(supervisor, 20):
            await await_for(lambda: attempts == [1], timeout=10)
            await await_for(
                lambda: _pending_of(producer, RETRY_CONSUMER) != [], timeout=5
            )
            [parked] = _pending_of(producer, RETRY_CONSUMER)
            assert parked.id == entry_id
            errors_key = f"{stream_name}:errors:agents"
            error: Any = await client.hget(errors_key, entry_id)
            assert error.startswith("RuntimeError: first time")
            await await_for(lambda: attempts == [1, 2], timeout=10)
            await await_for(lambda: _zero_pending(client, stream_name), timeout=5)
            # Handled at last: its error record went with the acknowledgement.
            assert await client.exists(errors_key) == 0
        producer.delete()
        producer.close()


async def _reaper(
    redis_url: str, stream_name: str
) -> tuple[Reaper, WorkerOps, RedisConnectionPool]:
    """A reaper of ``make_settings`` (min_idle_ms 300) on its own pool."""
    settings = make_settings(redis_url, stream_name)
    supervisor = Supervisor(settings, App(), handle_signals=False)
    pool = pool_from_settings(settings.redis, socket_timeout_s=5, max_connections=4)
    transport = await WorkerOps.aopen(stream_name, pool=pool)
    consumer = supervisor._consumer(
        "reaper", settings.subscriptions[0], transport, Dispatcher(1, 1)
    )
    return Reaper(consumer, settings.reaper, [consumer.name]), transport, pool


async def _idle_at_least(
    t: RedisStreamTransport | WorkerOps, entry_id: str, ms: int
) -> bool:
    [entry] = await t.apending_range(1, start=entry_id, end=entry_id)
    return entry.idle_ms >= ms


def _pending_of(t: RedisStreamTransport, consumer: str) -> list[Any]:
    return t.pending_range(10, consumer=consumer)


class TestSubscriptions:
    async def test_two_streams_in_one_worker(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """One worker consumes two streams, each with its own handlers and group."""
        other = stream_name + ":other"
        app = App()
        seen: list[tuple[str, str]] = []

        @app.handler("t", stream=stream_name)
        async def first(event: Event) -> None:
            seen.append(("first", event.stream))

        @app.handler("t", stream=other)
        async def second(event: Event) -> None:
            seen.append(("second", event.stream))

        settings = make_settings(
            redis_url,
            stream_name,
            subscriptions=[{"stream": stream_name}, {"stream": other, "group": "g2"}],
        )
        for stream, group in ((stream_name, "agents"), (other, "g2")):
            producer = RedisStreamTransport(
                stream, redis_url=redis_url, consumer_group=group
            )
            producer.publish("t", {})
            producer.close()
        supervisor = Supervisor(settings, app, handle_signals=False)
        async with running(supervisor, 20):
            await await_for(lambda: len(seen) == 2, timeout=10)
        assert sorted(seen) == [("first", stream_name), ("second", other)]
        await client.delete(stream_name, other)


class TestUnhandledTypes:
    async def test_each_unhandled_type_is_logged_once_at_warning(
        self,
        redis_url: str,
        stream_name: str,
        client: aioredis.Redis,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A handler registered under a typo: one warning per unhandled type."""
        capture = structlog.testing.CapturingLogger()
        monkeypatch.setattr(
            unhandled, "log", structlog.wrap_logger(capture, processors=[])
        )
        monkeypatch.setattr(unhandled, "_PROCESS", unhandled.UnhandledTypes())
        app = App()
        handled: list[int] = []

        @app.handler("tool-call")  # the producer sends "tool_call"
        async def on_tool_call(event: Event) -> None:
            handled.append(event.data["n"])

        producer = RedisStreamTransport(stream_name, redis_url=redis_url)
        for n in range(20):
            producer.publish("tool_call", {"n": n})
            producer.publish("handoff", {"n": n})
        supervisor = Supervisor(
            make_settings(redis_url, stream_name), app, handle_signals=False
        )
        async with running(supervisor, 20):
            await await_for(lambda: _zero_pending(client, stream_name), timeout=10)
            await await_for(lambda: len(capture.calls) >= 2, timeout=10)
        warned = [(c.method_name, c.kwargs["type"]) for c in capture.calls]
        assert sorted(warned) == [("warning", "handoff"), ("warning", "tool_call")]
        assert capture.calls[0].kwargs["event"] == "event_type_unhandled"
        assert handled == []
        producer.delete()
        producer.close()
