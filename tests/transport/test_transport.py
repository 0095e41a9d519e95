"""RedisStreamTransport against a real redis-server."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import redis

import agentstream
from agentstream import RedisConnectionPool, RedisStreamTransport, errors
from agentstream.testing import RedisServer, await_for, free_port, wait_for
from agentstream.transport.worker_ops import WorkerOps

pytestmark = pytest.mark.redis


@pytest.fixture(name="transport")
def _transport(redis_url: str, stream_name: str) -> Iterator[RedisStreamTransport]:
    t = RedisStreamTransport(stream_name, redis_url=redis_url)
    yield t
    t.delete()
    t.close()


@pytest.fixture(name="raw")
def _raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(name="atransport")
async def _atransport(
    redis_url: str, stream_name: str
) -> AsyncIterator[RedisStreamTransport]:
    pool = RedisConnectionPool(redis_url, decode_responses=True)
    t = await RedisStreamTransport.aopen(stream_name, pool=pool)
    yield t
    await t.adelete()
    await pool.aclose()


@pytest.fixture(name="ops")
async def _ops(
    redis_url: str, atransport: RedisStreamTransport
) -> AsyncIterator[WorkerOps]:
    """The worker's operations on the same stream and group as ``atransport``."""
    pool = RedisConnectionPool(redis_url, decode_responses=True)
    yield WorkerOps.attach(atransport.stream_name, pool=pool)
    await pool.aclose()


def upstream_parse(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The upstream library's reading rules, written out independently."""
    event: dict[str, Any] = {
        "id": entry_id,
        "type": fields.get("type", "unknown"),
        "timestamp": float(fields.get("timestamp", 0)),
    }
    try:
        event["data"] = json.loads(fields.get("data", "{}"))
    except json.JSONDecodeError:
        event["data"] = {}
    if "metadata" in fields:
        event["metadata"] = json.loads(fields["metadata"])
    return event


class TestSignature:
    def test_constructor_matches_the_seed(self) -> None:
        """The constructor has exactly the documented parameters and defaults."""
        sig = inspect.signature(RedisStreamTransport)
        assert str(sig) == (
            "(stream_name: 'str', redis_url: 'str' = 'redis://localhost:6379', "
            "consumer_group: 'str' = 'agents', max_len: 'int' = 10000, "
            "pool: 'RedisConnectionPool | None' = None) -> 'None'"
        )

    @pytest.mark.parametrize(
        ("name", "params"),
        [
            ("publish", ["event_type", "data", "metadata"]),
            ("apublish", ["event_type", "data", "metadata"]),
            ("read_all", ["count", "start_id"]),
            ("read_group", ["consumer", "count", "block_ms"]),
            ("ack", ["ids"]),
            ("claim", ["consumer", "min_idle_ms", "ids"]),
            ("pending", []),
            ("info", []),
            ("delete", []),
            ("close", []),
            ("asubscribe", ["last_id", "block_ms"]),
        ],
    )
    def test_documented_methods_exist(self, name: str, params: list[str]) -> None:
        """Every documented method exists and starts with the documented params."""
        sig = inspect.signature(getattr(RedisStreamTransport, name))
        assert list(sig.parameters)[1 : 1 + len(params)] == params

    def test_pool_api(self, redis_url: str) -> None:
        """RedisConnectionPool exposes its URL, size and one client of each kind."""
        pool = RedisConnectionPool(redis_url, max_connections=7)
        assert pool.redis_url == redis_url
        assert pool.max_connections == 7
        assert pool.sync_pool.max_connections == 7
        assert pool.get_sync_client() is pool.get_sync_client()
        assert pool.get_async_client() is pool.get_async_client()
        pool.close()


class TestPublishAndRead:
    def test_wire_format(self, transport: RedisStreamTransport, raw: Any) -> None:
        """publish writes the upstream field layout and returns the entry id."""
        before = time.time()
        entry_id = transport.publish("token", {"token": "Hi"}, {"run": "r1"})
        [(got_id, fields)] = raw.xrange(transport.stream_name)
        assert got_id == entry_id
        assert set(fields) == {"type", "timestamp", "data", "metadata"}
        assert fields["type"] == "token"
        assert before <= float(fields["timestamp"]) <= time.time()
        assert json.loads(fields["data"]) == {"token": "Hi"}
        assert json.loads(fields["metadata"]) == {"run": "r1"}

    def test_empty_metadata_is_left_out(
        self, transport: RedisStreamTransport, raw: Any
    ) -> None:
        """Metadata is written only when given and non-empty."""
        transport.publish("a", {}, {})
        transport.publish("b", {})
        for _, fields in raw.xrange(transport.stream_name):
            assert "metadata" not in fields
        assert all("metadata" not in e for e in transport.read_all())

    def test_read_all_from_start_id(self, transport: RedisStreamTransport) -> None:
        """read_all reads from start_id inclusive, up to count."""
        ids = [transport.publish("t", {"i": i}) for i in range(5)]
        assert [e["id"] for e in transport.read_all()] == ids
        assert [e["id"] for e in transport.read_all(count=2, start_id=ids[2])] == ids[
            2:4
        ]
        event = transport.read_all(count=1)[0]
        assert event["type"] == "t"
        assert event["data"] == {"i": 0}
        assert isinstance(event["timestamp"], float)

    def test_upstream_entries_read_back_identically(
        self, transport: RedisStreamTransport, raw: Any
    ) -> None:
        """Entries XADDed in the upstream layout read the same as upstream reads them."""
        layouts: list[dict[str, str]] = [
            {"type": "token", "timestamp": "1700000000.25", "data": '{"token": "x"}'},
            {
                "type": "complete",
                "timestamp": "1700000001.5",
                "data": "{}",
                "metadata": '{"k": [1, 2]}',
            },
            {"data": "not json"},
            {"type": "tool_call"},
        ]
        for fields in layouts:
            raw.xadd(transport.stream_name, fields)
        rows = raw.xrange(transport.stream_name)
        assert transport.read_all() == [upstream_parse(i, f) for i, f in rows]

    def test_our_entries_parse_under_upstream_rules(
        self, transport: RedisStreamTransport, raw: Any
    ) -> None:
        """What we publish reads back under the upstream rules with the same values."""
        transport.publish("tool_result", {"out": [1, "two", None]}, {"trace": "t"})
        [(entry_id, fields)] = raw.xrange(transport.stream_name)
        parsed = upstream_parse(entry_id, fields)
        assert parsed["data"] == {"out": [1, "two", None]}
        assert parsed["metadata"] == {"trace": "t"}
        assert parsed == transport.read_all()[0]

    def test_max_len_trims(self, redis_url: str, stream_name: str) -> None:
        """Publishing beyond max_len trims the oldest entries (approximately)."""
        t = RedisStreamTransport(stream_name, redis_url=redis_url, max_len=10)
        try:
            for i in range(1000):
                t.publish("t", {"i": i})
            length = t.info()["length"]
            assert 10 <= length < 1000
        finally:
            t.delete()
            t.close()


class TestConsumerGroup:
    def test_constructor_creates_group_and_tolerates_existing(
        self, transport: RedisStreamTransport, raw: redis.Redis, redis_url: str
    ) -> None:
        """The group exists at id 0 after construction; a second one is fine."""
        again = RedisStreamTransport(transport.stream_name, redis_url=redis_url)
        groups = raw.xinfo_groups(transport.stream_name)
        assert [g["name"] for g in groups] == ["agents"]
        assert groups[0]["last-delivered-id"] == "0-0"
        again.close()

    def test_two_consumers_never_share_a_new_entry(
        self, transport: RedisStreamTransport
    ) -> None:
        """Each new entry goes to exactly one consumer of the group."""
        ids = {transport.publish("t", {"i": i}) for i in range(50)}
        a = transport.read_group("a", count=30)
        b = transport.read_group("b", count=30)
        got_a = {e["id"] for e in a}
        got_b = {e["id"] for e in b}
        assert not got_a & got_b
        assert got_a | got_b == ids
        assert transport.read_group("c", count=10) == []

    def test_unacked_entries_stay_pending_with_owner(
        self, transport: RedisStreamTransport
    ) -> None:
        """Read but unacknowledged entries stay pending on their consumer."""
        for i in range(3):
            transport.publish("t", {"i": i})
        events = transport.read_group("worker-1")
        pending = transport.pending()
        assert pending["count"] == 3
        assert pending["consumers"] == {"worker-1": 3}
        assert pending["min_id"] == events[0]["id"]
        assert pending["max_id"] == events[-1]["id"]
        assert transport.ack([events[0]["id"], events[1]["id"]]) == 2
        assert transport.ack([events[0]["id"]]) == 0
        assert transport.pending()["consumers"] == {"worker-1": 1}
        again = transport.read_group("worker-1", start_id="0")
        assert [e["id"] for e in again] == [events[2]["id"]]

    def test_claim_moves_ownership_and_counts_delivery(
        self, transport: RedisStreamTransport
    ) -> None:
        """claim hands an idle entry to another consumer and raises its count."""
        entry_id = transport.publish("t", {})
        transport.read_group("dead")
        assert transport.claim("alive", 60_000, [entry_id]) == []
        wait_for(
            lambda: transport.pending_range(10, min_idle_ms=50) != [],
            timeout=5,
            message="entry never became idle",
        )
        claimed = transport.claim("alive", 50, [entry_id])
        assert [e["id"] for e in claimed] == [entry_id]
        [entry] = transport.pending_range(10)
        assert entry.consumer == "alive"
        assert entry.delivery_count == 2
        assert entry.idle_ms < 1000

    def test_read_group_blocks_until_an_entry_arrives(
        self, transport: RedisStreamTransport, redis_url: str
    ) -> None:
        """A blocking read returns as soon as an entry is published."""
        assert transport.read_group("c", block_ms=50) == []

        async def scenario() -> list[dict[str, Any]]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, _publish_later, transport)
                events = await anyio.to_thread.run_sync(
                    lambda: transport.read_group("c", block_ms=5000)
                )
            return events

        events = anyio.run(scenario)
        assert [e["type"] for e in events] == ["late"]

    def test_deleted_stream_and_group_are_recreated(
        self, transport: RedisStreamTransport, raw: Any
    ) -> None:
        """read_group, ack, claim and pending recover from a deleted stream/group."""
        transport.delete()
        assert transport.read_group("c") == []
        raw.xgroup_destroy(transport.stream_name, "agents")
        assert transport.pending()["count"] == 0
        raw.xgroup_destroy(transport.stream_name, "agents")
        assert transport.ack(["1-0"]) == 0
        raw.xgroup_destroy(transport.stream_name, "agents")
        assert transport.claim("c", 0, ["1-0"]) == []
        transport.publish("t", {})
        assert len(transport.read_group("c")) == 1

    def test_info_and_delete(self, transport: RedisStreamTransport) -> None:
        """info reports length, first/last entries and groups; delete removes all."""
        first = transport.publish("a", {"n": 1})
        last = transport.publish("b", {"n": 2})
        info = transport.info()
        assert info["length"] == 2
        assert info["groups"] == 1
        assert info["first_entry"]["id"] == first
        assert info["last_entry"]["id"] == last
        assert transport.delete() is True
        assert transport.info() == {
            "length": 0,
            "first_entry": None,
            "last_entry": None,
            "groups": 0,
        }


def _publish_later(transport: RedisStreamTransport) -> None:
    time.sleep(0.1)
    transport.publish("late", {})


class TestErrors:
    def test_connection_refused_is_typed_and_names_the_host(self) -> None:
        """An unreachable Redis raises ConnectionError naming host and port."""
        port = free_port()
        with pytest.raises(errors.ConnectionError, match=f"127.0.0.1:{port}"):
            RedisStreamTransport("s", redis_url=f"redis://127.0.0.1:{port}/0")

    def test_wrong_password_is_typed_and_hides_the_password(
        self, redis_factory: Any
    ) -> None:
        """A wrong password raises AuthenticationError that never shows it."""
        server: RedisServer = redis_factory(password="right-secret")
        url = f"redis://:wrong-secret-42@127.0.0.1:{server.port}/0"
        with pytest.raises(errors.AuthenticationError) as info:
            RedisStreamTransport("s", redis_url=url)
        assert "wrong-secret-42" not in str(info.value)
        assert "right-secret" not in str(info.value)
        assert f"127.0.0.1:{server.port}" in str(info.value)
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__

    def test_missing_password_is_an_authentication_error(
        self, redis_factory: Any
    ) -> None:
        """Connecting without a password to a protected server is a typed error."""
        server: RedisServer = redis_factory(password="pw")
        with pytest.raises(errors.AuthenticationError):
            RedisStreamTransport("s", redis_url=f"redis://127.0.0.1:{server.port}/0")


class TestSharedPool:
    def test_closing_a_transport_keeps_a_shared_pool_open(
        self, redis_url: str, stream_name: str
    ) -> None:
        """Two transports share one pool; closing one leaves the other working."""
        pool = RedisConnectionPool(redis_url)
        a = RedisStreamTransport(stream_name, pool=pool)
        b = RedisStreamTransport(stream_name + ":b", pool=pool)
        a.publish("t", {})
        a.close()
        b.publish("t", {})
        assert len(a.read_all()) == 1
        assert len(b.read_all()) == 1
        a.delete()
        b.delete()
        pool.close()

    def test_a_pool_speaks_resp2_only(self, redis_url: str) -> None:
        """protocol=3, as an argument or in the URL, is refused: replies are
        parsed as RESP2's."""
        for url, kwargs in (
            (redis_url, {"protocol": 3}),
            (redis_url + "?protocol=3", {}),
            (redis_url, {"protocol": "3"}),
        ):
            with pytest.raises(ValueError, match="RESP2"):
                RedisConnectionPool(url, **kwargs)
        pool = RedisConnectionPool(redis_url + "?protocol=2", protocol=2)
        assert pool.get_sync_client().ping()
        pool.close()


@pytest.mark.anyio
class TestAsync:
    async def test_async_twins(self, atransport: RedisStreamTransport) -> None:
        """Every async twin behaves like its sync method."""
        ids = [await atransport.apublish("t", {"i": i}, {"m": i}) for i in range(3)]
        assert [e["id"] for e in await atransport.aread_all()] == ids
        events = await atransport.aread_group("c", count=2)
        assert [e["metadata"] for e in events] == [{"m": 0}, {"m": 1}]
        assert (await atransport.apending())["consumers"] == {"c": 2}
        [p0, _] = await atransport.apending_range(10, consumer="c")
        assert (p0.id, p0.delivery_count) == (ids[0], 1)
        claimed = await atransport.aclaim("d", 0, [ids[1]])
        assert [e["id"] for e in claimed] == [ids[1]]
        assert await atransport.aack([ids[0], ids[1]]) == 2
        assert (await atransport.ainfo())["length"] == 3
        assert await atransport.adelete() is True

    async def test_claim_entries_reports_counts_and_lost(
        self, atransport: RedisStreamTransport, ops: WorkerOps
    ) -> None:
        """aclaim_entries returns delivery counts and acks entries whose data is gone."""
        kept = await atransport.apublish("t", {"k": 1})
        gone = await atransport.apublish("t", {"k": 2})
        await atransport.aread_group("dead", count=10)
        await ops.aio.xdel(atransport.stream_name, gone)
        result = await ops.aclaim_entries("alive", 0, [kept, gone, "1-0"])
        assert [(e.id, e.delivery_count) for e in result.entries] == [(kept, 2)]
        assert result.entries[0].fields is not None
        assert json.loads(result.entries[0].fields[b"data"]) == {"k": 1}
        assert result.lost == [gone]
        assert (await atransport.apending())["consumers"] == {"alive": 1}

    async def test_claim_entries_honours_min_idle(
        self, atransport: RedisStreamTransport, ops: WorkerOps
    ) -> None:
        """An entry idle for less than min_idle_ms is not claimed."""
        entry_id = await atransport.apublish("t", {})
        await atransport.aread_group("owner")
        result = await ops.aclaim_entries("thief", 60_000, [entry_id])
        assert result.entries == [] and result.lost == []
        [p] = await atransport.apending_range(1)
        assert p.consumer == "owner"

    async def test_renew_resets_idle_and_never_steals(
        self, atransport: RedisStreamTransport, ops: WorkerOps
    ) -> None:
        """arenew keeps the owner's lease fresh and skips entries owned by others."""
        mine = await atransport.apublish("t", {})
        theirs = await atransport.apublish("t", {})
        await atransport.aread_group("me", count=1)
        await atransport.aread_group("other", count=1)
        await await_for(
            lambda: _all_idle(atransport, 100), timeout=5, message="never idle"
        )
        assert await ops.arenew("me", [mine, theirs]) == ([mine], [])
        by_id = {p.id: p for p in await atransport.apending_range(10)}
        assert by_id[mine].idle_ms < 100
        assert by_id[mine].delivery_count == 1
        assert by_id[theirs].consumer == "other"
        assert by_id[theirs].idle_ms >= 100

    async def test_own_pending_reread_reports_lost_entries(
        self, atransport: RedisStreamTransport, ops: WorkerOps
    ) -> None:
        """Re-reading own pending entries shows trimmed ones with no fields."""
        a = await atransport.apublish("t", {"n": 1})
        b = await atransport.apublish("t", {"n": 2})
        await atransport.aread_group("c", count=10)
        await ops.aio.xdel(atransport.stream_name, a)
        entries = await ops.aread_own_pending("c", 10)
        assert [(e.id, e.fields is None, e.delivery_count) for e in entries] == [
            (a, True, 1),
            (b, False, 2),
        ]

    async def test_dead_letter_is_atomic_with_ack(
        self, atransport: RedisStreamTransport, ops: WorkerOps
    ) -> None:
        """adead_letter copies the entry with its details and acknowledges it."""
        entry_id = await atransport.apublish("t", {"x": 1})
        [(raw_id, fields)] = await ops.aread_batch("c", 10, None)
        dlq = atransport.stream_name + ":dlq"
        await ops.adead_letter(
            entry_id, fields, dlq, {"reason": "boom", "error": "E"}, 100
        )
        rows: Any = await ops.aio.xrange(dlq)
        [(_, dead)] = rows
        assert dead["type"] == "t"
        assert dead["dlq_id"] == entry_id == raw_id.decode()
        assert dead["dlq_reason"] == "boom"
        assert dead["dlq_stream"] == atransport.stream_name
        assert (await atransport.apending())["count"] == 0
        await ops.aio.delete(dlq)

    async def test_idle_consumers_with_pending_are_never_removed(
        self, atransport: RedisStreamTransport, ops: WorkerOps
    ) -> None:
        """Only consumers with nothing pending are removed."""
        await atransport.apublish("t", {})
        await atransport.aread_group("busy")
        await ops.aio.xgroup_createconsumer(atransport.stream_name, "agents", "empty")
        removed = await ops.adelete_idle_consumers(0)
        assert removed == ["empty"]
        assert [c["name"] for c in await ops.aconsumers()] == ["busy"]

    async def test_subscribe_yields_new_events(
        self, atransport: RedisStreamTransport
    ) -> None:
        """asubscribe from $ yields only events published after it started."""
        await atransport.apublish("old", {})
        got: list[str] = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for event in atransport.asubscribe(block_ms=100):
                        got.append(event["type"])
                        if len(got) == 2:
                            tg.cancel_scope.cancel()

                tg.start_soon(collect)
                await anyio.sleep(0.2)
                await atransport.apublish("new1", {})
                await atransport.apublish("new2", {})
        assert got == ["new1", "new2"]

    async def test_subscribe_survives_a_redis_restart(
        self, fresh_redis: RedisServer, stream_name: str
    ) -> None:
        """asubscribe resumes by itself after Redis restarts and misses nothing."""
        pool = RedisConnectionPool(fresh_redis.url)
        sub = await RedisStreamTransport.aopen(stream_name, pool=pool)
        pub = RedisStreamTransport(stream_name, redis_url=fresh_redis.url)
        got: list[int] = []
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def collect() -> None:
                    async for event in sub.asubscribe(block_ms=100):
                        got.append(event["data"]["n"])
                        if len(got) == 2:
                            tg.cancel_scope.cancel()

                tg.start_soon(collect)
                await anyio.sleep(0.2)
                pub.publish("t", {"n": 1})
                await await_for(lambda: got == [1], timeout=5)
                fresh_redis.kill()
                fresh_redis.restart()
                pub.publish("t", {"n": 2})
        assert got == [1, 2]
        pub.close()
        await pool.aclose()


async def _all_idle(t: RedisStreamTransport, ms: int) -> bool:
    return all(p.idle_ms >= ms for p in await t.apending_range(10))


def test_public_api_is_exported() -> None:
    """The package root exports the transport, the pool and the errors."""
    for name in ("RedisStreamTransport", "RedisConnectionPool", "TransportError"):
        assert name in agentstream.__all__
