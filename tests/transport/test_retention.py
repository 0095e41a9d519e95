"""Processed-only retention and the server differences it rests on.

Each server takes one branch of the code where servers differ (XACKDEL and the
ACKED options exist on Redis 8.2+ only; ``inactive`` in XINFO CONSUMERS from
Redis 7.2 and Valkey on); the tests of a branch skip on the servers that take
the other one, and CI runs them on Redis 7.0, Valkey 8.1 and Redis 8.2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from agentstream import RedisConnectionPool, RedisStreamTransport
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.core import send
from agentstream.transport.worker_ops import Dropped, WorkerOps
from redis_server import await_for

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def has_ackdel(raw: redis.Redis) -> bool:
    """Whether the server knows XACKDEL, found by calling it, not by version."""
    try:
        send(raw, ("XACKDEL", "no-such-key", "g", "IDS", 1, "0-1"))
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise
    return True


@pytest.fixture(name="raw")
def _raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(name="ackdel")
def _ackdel(raw: redis.Redis) -> bool:
    return has_ackdel(raw)


@pytest.fixture(name="pool")
async def _pool(redis_url: str) -> AsyncIterator[RedisConnectionPool]:
    pool = RedisConnectionPool(redis_url, decode_responses=True)
    yield pool
    await pool.aclose()


@pytest.fixture(name="ops")
async def _ops(
    pool: RedisConnectionPool, stream_name: str, raw: redis.Redis
) -> AsyncIterator[WorkerOps]:
    ops = await WorkerOps.aopen(stream_name, pool=pool)
    ops.retention = "processed"
    yield ops
    raw.delete(stream_name)


@pytest.fixture(name="producer")
def _producer(redis_url: str, stream_name: str) -> Iterator[RedisStreamTransport]:
    t = RedisStreamTransport(stream_name, redis_url=redis_url, max_len=10)
    t.retention = "processed"
    yield t
    t.close()


def xids(raw: redis.Redis, stream: str) -> list[str]:
    """The ids in ``stream``, oldest first."""
    return [str(entry_id) for entry_id, _ in raw.xrange(stream) or []]


def publish(producer: RedisStreamTransport, n: int) -> list[str]:
    return [producer.publish("token", {"i": i}) for i in range(n)]


class TestFeatures:
    async def test_detected_as_the_server_answers(
        self, ops: WorkerOps, ackdel: bool
    ) -> None:
        """COMMAND INFO XACKDEL finds what calling XACKDEL finds."""
        assert (await ops.afeatures()).ackdel is ackdel

    def test_sync_detection_agrees(
        self, producer: RedisStreamTransport, ackdel: bool
    ) -> None:
        """The blocking detection of the seed facade finds the same."""
        assert producer._core.features().ackdel is ackdel

    def test_retention_refuses_an_unknown_mode(
        self, producer: RedisStreamTransport
    ) -> None:
        with pytest.raises(ValueError, match="retention must be one of"):
            producer.retention = "forever"  # type: ignore[assignment]


class TestPublish:
    def test_default_still_trims_by_length(
        self, redis_url: str, stream_name: str, raw: redis.Redis
    ) -> None:
        """The seed's default: MAXLEN ~ trims unread entries (nodes of 100)."""
        t = RedisStreamTransport(stream_name, redis_url=redis_url, max_len=10)
        assert t.retention == "length"
        publish(t, 500)
        assert raw.xlen(stream_name) < 500
        t.delete()
        t.close()

    async def test_processed_never_trims_unacknowledged(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis
    ) -> None:
        """500 entries past max_len=10, none acknowledged: all stay, on any server."""
        publish(producer, 250)
        await ops.aread_batch("c", 100, None)  # 100 pending, 150 unread
        for i in range(250):
            await ops.apublish("token", {"i": i})
        assert raw.xlen(producer.stream_name) == 500

    async def test_processed_publish_never_trims_acknowledged_either(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis
    ) -> None:
        """publish leaves trimming to acks (XACKDEL) and the trimmer, on every
        server: entries acknowledged with a plain XACK stay until a trim."""
        publish(producer, 300)
        rows = await ops.aread_batch("c", 300, None)
        raw.xack(producer.stream_name, "agents", *[i for i, _ in rows])
        producer.publish("token", {"last": True})
        await ops.apublish("token", {"last": True})
        assert raw.xlen(producer.stream_name) == 302
        assert (await ops.atrim_processed(0)).acknowledged == 300


class TestAck:
    async def test_ack_deletes_what_every_group_acknowledged(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis,
        pool: RedisConnectionPool, ackdel: bool,
    ) -> None:  # fmt: skip
        """Redis 8.2+: XACKDEL ACKED deletes an entry once the last group acks."""
        if not ackdel:
            pytest.skip("XACKDEL needs Redis 8.2+")
        other = await WorkerOps.aopen(
            producer.stream_name, consumer_group="auditors", pool=pool
        )
        other.retention = "processed"
        ids = publish(producer, 20)
        await ops.aread_batch("c", 20, None)
        assert await ops.aack(ids[:10]) == 10  # the auditors have not read them
        assert raw.xlen(producer.stream_name) == 20
        await other.aread_batch("a", 20, None, ack_ids=())
        # acknowledged in the round trip of the next read, as the worker does
        await other.aread_batch("a", 20, None, ack_ids=ids[:15])
        assert raw.xlen(producer.stream_name) == 10  # ids[10:15]: agents owe them
        assert producer.ack(ids[10:]) == 10  # the seed facade's ack too
        assert xids(raw, producer.stream_name) == ids[15:]

    async def test_ack_keeps_entries_without_ackdel(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis,
        ackdel: bool,
    ) -> None:  # fmt: skip
        """Before 8.2 an ack is an XACK; the trimmer removes the entries later."""
        if ackdel:
            pytest.skip("this server deletes on acknowledgement")
        ids = publish(producer, 20)
        await ops.aread_batch("c", 20, None)
        assert await ops.aack(ids[:5]) == 5
        await ops.aread_batch("c", 20, None, ack_ids=ids[5:10])
        assert producer.ack(ids[10:12]) == 2
        assert raw.xlen(producer.stream_name) == 20
        result = await ops.atrim_processed(0)
        assert result.acknowledged == 12
        assert xids(raw, producer.stream_name) == ids[12:]

    async def test_dead_letter_acknowledges_under_retention(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis,
        ackdel: bool,
    ) -> None:  # fmt: skip
        """A dead-lettered entry is acknowledged (and deleted on 8.2+) at once."""
        ids = publish(producer, 3)
        rows = await ops.aread_batch("c", 3, None)
        dlq = producer.stream_name + ":dlq"
        await ops.adead_letter(ids[0], dict(rows[0][1]), dlq, {"reason": "x"}, 100)
        assert raw.xpending(producer.stream_name, "agents")["pending"] == 2
        assert raw.xlen(producer.stream_name) == (2 if ackdel else 3)
        raw.delete(dlq)


class TestTrim:
    async def test_keeps_pending_and_unread_entries(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis,
        pool: RedisConnectionPool,
    ) -> None:  # fmt: skip
        """MINID stops at the oldest entry any group has pending or unread."""
        stream = producer.stream_name
        other = await WorkerOps.aopen(stream, consumer_group="auditors", pool=pool)
        ids = publish(producer, 30)
        raw.xreadgroup("agents", "c", {stream: ">"}, count=30)
        raw.xack(stream, "agents", *ids[:20])  # ids[20:] pending for agents
        raw.xreadgroup("auditors", "a", {stream: ">"}, count=10)
        raw.xack(stream, "auditors", *ids[:4], *ids[5:10])  # ids[4] pending
        assert (await ops.atrim_processed(0)).acknowledged == 4
        assert xids(raw, stream)[0] == ids[4]
        raw.xack(stream, "auditors", ids[4])
        assert (await other.atrim_processed(0)).acknowledged == 6  # unread: 10..
        raw.xreadgroup("auditors", "a", {stream: ">"}, count=30)
        raw.xack(stream, "auditors", *ids)
        assert (await ops.atrim_processed(0)).acknowledged == 10  # agents: 20..
        raw.xack(stream, "agents", *ids)
        assert (await ops.atrim_processed(0)).acknowledged == 10
        assert raw.xlen(stream) == 0

    async def test_a_group_that_read_nothing_keeps_everything(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis
    ) -> None:
        publish(producer, 10)
        raw.xgroup_create(producer.stream_name, "late", "0")
        rows = await ops.aread_batch("c", 10, None)
        await ops.aack([i for i, _ in rows])
        assert (await ops.atrim_processed(0)).acknowledged == 0
        assert raw.xlen(producer.stream_name) == 10

    async def test_cap_counts_what_each_group_had_not_acknowledged(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis,
        pool: RedisConnectionPool,
    ) -> None:  # fmt: skip
        """100 entries, cap 30: 70 go; per group, unread and pending counted."""
        stream = producer.stream_name
        await WorkerOps.aopen(stream, consumer_group="auditors", pool=pool)
        ids = publish(producer, 100)
        raw.xreadgroup("agents", "c", {stream: ">"}, count=25)
        raw.xack(stream, "agents", *ids[:15])  # ids[15:25] pending
        result = await ops.atrim_processed(30, chunk=1000)
        assert (result.acknowledged, result.capped, result.over_cap) == (0, 70, 0)
        assert result.dropped == {
            "agents": Dropped(unread=45, pending=10),
            "auditors": Dropped(unread=70, pending=0),
        }
        assert xids(raw, stream) == ids[70:]

    async def test_cap_works_in_chunks(
        self, ops: WorkerOps, producer: RedisStreamTransport, raw: redis.Redis
    ) -> None:
        ids = publish(producer, 50)
        first = await ops.atrim_processed(10, chunk=15)
        assert (first.capped, first.over_cap) == (15, 25)
        assert first.dropped == {"agents": Dropped(15, 0)}
        rest = await ops.atrim_processed(10, chunk=100)
        assert (rest.capped, rest.over_cap) == (25, 0)
        assert xids(raw, producer.stream_name) == ids[40:]

    async def test_missing_stream_is_nothing_to_do(
        self, pool: RedisConnectionPool
    ) -> None:
        ops = WorkerOps.attach("no-such-stream-retention", pool=pool)
        result = await ops.atrim_processed(10)
        assert (result.acknowledged, result.capped, result.dropped) == (0, 0, {})


class TestConsumerIdle:
    async def test_idle_is_time_since_last_success(
        self, pool: RedisConnectionPool, stream_name: str, raw: redis.Redis
    ) -> None:
        """A read that returned nothing does not make a consumer look active.

        Redis 7.0's ``idle`` counts from the last read that returned entries;
        from 7.2 (and Valkey) ``idle`` counts any attempt and ``inactive`` keeps
        the old meaning."""
        ops = await WorkerOps.aopen(stream_name, pool=pool)
        admin = AdminOps.attach(stream_name, pool=pool)
        raw.xadd(stream_name, {"type": "t"})
        raw.xreadgroup("agents", "c", {stream_name: ">"}, count=1)

        def raw_row() -> dict[str, int]:
            rows = raw.xinfo_consumers(stream_name, "agents")
            return next(r for r in rows if r["name"] == "c")

        await await_for(lambda: raw_row()["idle"] >= 300, timeout=5)
        raw.xreadgroup("agents", "c", {stream_name: ">"}, count=1)  # nothing new
        row = raw_row()
        [seen] = [c for c in await ops.aconsumers() if c["name"] == "c"]
        [shown] = [c for c in await admin.aconsumer_rows() or [] if c["name"] == "c"]
        if "inactive" in row:
            assert row["idle"] < 300 <= row["inactive"]
        else:
            assert row["idle"] >= 300
        assert seen["idle"] >= 300
        # the console and the CLI show both: inactive where the server has it
        assert (shown["inactive_ms"] or shown["idle_ms"]) >= 300
        raw.delete(stream_name)

    async def test_a_consumer_that_never_succeeded(
        self, pool: RedisConnectionPool, stream_name: str, raw: redis.Redis
    ) -> None:
        """``inactive`` is -1 for a consumer with no successful read: the idle
        time is then ``idle``, never negative."""
        ops = await WorkerOps.aopen(stream_name, pool=pool)
        raw.xgroup_createconsumer(stream_name, "agents", "fresh")
        [row] = raw.xinfo_consumers(stream_name, "agents")
        if "inactive" in row:
            assert row["inactive"] == -1
        [seen] = await ops.aconsumers()
        assert 0 <= seen["idle"] <= row["idle"] + 1000
        raw.delete(stream_name)
