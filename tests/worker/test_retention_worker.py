"""Processed-only retention through real workers: nothing unhandled is trimmed,
the stream shrinks back once every group caught up, and a cap too small for a
stopped group counts exactly what that group lost.

Two consumer groups read one stream: ``agents`` keeps running, ``audit`` is
stopped in the middle while 15,000 of the 20,000 events are published. Runs on
every server of the CI matrix (Redis 7.0 and Valkey 8.1: XACK and the trimmer;
Redis 8.2: XACKDEL, and the trimmer for the cap).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from test_supervisor import make_settings

from agentstream import App, Event, RedisConnectionPool, RedisStreamTransport
from agentstream.admin import run_admin
from agentstream.config import SubscriptionSettings, load_settings
from agentstream.errors import ConfigError
from agentstream.worker.supervisor import Supervisor
from redis_server import await_for

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

TOTAL = 20_000
FIRST = 5_000
CHUNK = 500  # the running group catches up after each, well under any cap


class Group:
    """One consumer group's worker, started and stopped at will."""

    def __init__(self, redis_url: str, stream: str, group: str, cap: int) -> None:
        self.handled: set[str] = set()
        self.deliveries = 0
        self.app = App()
        self.settings = make_settings(
            redis_url,
            stream,
            name_prefix=group,
            subscriptions=[
                {
                    "stream": stream,
                    "group": group,
                    "retention": {
                        "mode": "processed",
                        "max_len": cap,
                        "interval_s": 0.05,
                    },
                }
            ],
        )
        self.registries: list[Any] = []

        @self.app.handler("t")
        async def handle(event: Event) -> None:
            self.deliveries += 1
            self.handled.add(event.id)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        supervisor = Supervisor(self.settings, self.app, handle_signals=False)
        self.registries.append(supervisor.registry)
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            await supervisor.started.wait()
            try:
                yield
            finally:
                supervisor.stop()

    def dropped(self, group: str, state: str) -> float:
        labels = {"stream": self.settings.subscriptions[0].stream, "group": group}
        return sum(
            r.get_sample_value(
                "agentstream_retention_dropped_total", {**labels, "state": state}
            )
            or 0.0
            for r in self.registries
        )


@pytest.fixture(name="client")
async def _client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def run_scenario(
    redis_url: str, stream: str, client: aioredis.Redis, cap: int
) -> tuple[Group, Group, list[str]]:
    """Publish 20,000 events; ``audit`` is stopped after the first 5,000."""
    agents = Group(redis_url, stream, "agents", cap)
    audit = Group(redis_url, stream, "audit", cap)
    pool = RedisConnectionPool(redis_url)
    # The publisher opts in too: its max_len=10 would otherwise trim at once.
    producer = await RedisStreamTransport.aopen(
        stream, pool=pool, max_len=10, retention="processed"
    )
    await client.xgroup_create(stream, "audit", "0")
    published: list[str] = []

    async def publish(n: int, group: Group) -> None:
        for start in range(0, n, CHUNK):
            published.extend(
                [
                    await producer.apublish("t", {"i": i})
                    for i in range(start, min(start + CHUNK, n))
                ]
            )
            await await_for(
                lambda: set(published) <= group.handled, timeout=30, interval=0.02
            )

    with anyio.fail_after(240):
        async with agents.running():
            async with audit.running():
                await publish(FIRST, audit)
            # audit is stopped: nothing it has not handled may go (but the cap)
            await publish(TOTAL - FIRST, agents)
            if cap >= TOTAL:
                length = await client.xlen(stream)
                assert length >= TOTAL - FIRST
                entries: Any = await client.xrange(stream, count=TOTAL)
                assert set(published[FIRST:]) <= {i for i, _ in entries}
            else:  # the running group's trimmer enforces the cap
                await await_for(lambda: _length_at_most(client, stream, cap), 30)
            async with audit.running():
                await await_for(
                    lambda: _caught_up(client, stream), timeout=60, interval=0.05
                )
            await await_for(lambda: _length(client, stream, 0), timeout=30)
    await pool.aclose()
    return agents, audit, published


async def _caught_up(client: aioredis.Redis, stream: str) -> bool:
    # Not XINFO GROUPS' lag: the cap trimmed entries the group had not read,
    # after which Redis cannot tell the lag until the group reads them all.
    info: Any = await client.xinfo_stream(stream)
    groups: Any = await client.xinfo_groups(stream)
    last = info["last-generated-id"]
    return all(g["last-delivered-id"] == last and g["pending"] == 0 for g in groups)


async def _length_at_most(client: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await client.xlen(stream)) <= n


async def _length(client: aioredis.Redis, stream: str, n: int) -> bool:
    return int(await client.xlen(stream)) == n


class TestProcessedRetention:
    async def test_nothing_unhandled_is_trimmed(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """Cap above the backlog: every event handled once by each group, none
        dropped, and the stream empties once the stopped group caught up."""
        agents, audit, published = await run_scenario(
            redis_url, stream_name, client, cap=50_000
        )
        assert len(set(published)) == TOTAL
        assert agents.handled == audit.handled == set(published)
        assert agents.deliveries == audit.deliveries == TOTAL
        for group in (agents, audit):
            for name in ("agents", "audit"):
                assert group.dropped(name, "unread") == 0
                assert group.dropped(name, "pending") == 0
        await client.delete(stream_name)

    async def test_cap_too_small_counts_exactly_what_was_lost(
        self, redis_url: str, stream_name: str, client: aioredis.Redis
    ) -> None:
        """Cap 1,000 under a 15,000 backlog: the stopped group loses the oldest
        entries, and the count of what it lost is exact."""
        agents, audit, published = await run_scenario(
            redis_url, stream_name, client, cap=1_000
        )
        assert agents.handled == set(published)  # kept up: lost nothing
        lost = set(published) - audit.handled
        dropped = agents.dropped("audit", "unread") + audit.dropped("audit", "unread")
        assert len(lost) == dropped
        assert TOTAL - FIRST - 1_000 <= len(lost) <= TOTAL - FIRST - 1_000 + CHUNK
        assert agents.dropped("audit", "pending") == 0  # stopped cleanly
        assert agents.dropped("agents", "unread") == 0
        assert audit.dropped("agents", "unread") == 0
        # the oldest were dropped: what the audit group handled late is a tail
        late = [i for i in published[FIRST:] if i in audit.handled]
        assert late == published[TOTAL - len(late) :]
        await client.delete(stream_name)


class TestConfiguration:
    def test_defaults_are_the_seeds(self) -> None:
        sub = SubscriptionSettings(stream="s")
        assert sub.retention.mode == "length"
        assert sub.retention.max_len == 1_000_000

    def test_an_unknown_mode_names_the_field(self, tmp_path: Path) -> None:
        config = tmp_path / "worker.toml"
        config.write_text(
            '[[subscriptions]]\nstream = "s"\n[subscriptions.retention]\nmode = "x"\n'
        )
        with pytest.raises(ConfigError, match=r"subscriptions\[0\]\.retention\.mode"):
            load_settings(config)

    def test_cli_publish_follows_the_subscription(
        self, redis_url: str, stream_name: str, tmp_path: Path
    ) -> None:
        """agentstream publish does not trim a stream subscribed in processed mode."""
        config = tmp_path / "worker.toml"
        config.write_text(
            f'[redis]\nurl = "{redis_url}"\n[[subscriptions]]\n'
            f'stream = "{stream_name}"\n[subscriptions.retention]\n'
            'mode = "processed"\n'
        )
        raw = redis.Redis.from_url(redis_url)
        raw.xgroup_create(stream_name, "agents", "0", mkstream=True)
        for i in range(10_050):
            raw.xadd(stream_name, {"type": "t", "data": "{}", "i": i})
        assert (
            run_admin(["publish", stream_name, "t", "{}", "--config", str(config)]) == 0
        )
        assert raw.xlen(stream_name) == 10_051  # the default max_len is 10,000
        raw.delete(stream_name)
        raw.close()
