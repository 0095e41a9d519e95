"""Moves acknowledge or delete only after the write they depend on, and error
records go with the acknowledgement of their entry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from agentstream import errors
from agentstream.admin import run_admin
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.pool import RedisConnectionPool
from agentstream.transport.worker_ops import DeadLetterRefused, WorkerOps

pytestmark = pytest.mark.redis


@pytest.fixture(name="client")
def _client(redis_url: str, stream_name: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.delete(
        stream_name, f"{stream_name}:dlq", f"{stream_name}:errors:agents", "target"
    )
    client.close()


@pytest.fixture(name="ops")
async def _ops(redis_url: str, stream_name: str) -> AsyncIterator[WorkerOps]:
    pool = RedisConnectionPool(redis_url)
    yield await WorkerOps.aopen(stream_name, pool=pool)
    await pool.aclose()


async def read_one(ops: WorkerOps, client: redis.Redis, consumer: str = "c") -> str:
    entry_id = client.xadd(ops.stream, {"type": "t", "data": "{}"}).decode()  # type: ignore[union-attr]
    [(read_id, _)] = await ops.aread_batch(consumer, 1, None)
    assert read_id.decode() == entry_id
    return entry_id


async def failed(ops: WorkerOps, client: redis.Redis, n: int) -> list[str]:
    """``n`` entries read by consumer ``c``, each with an error record."""
    ids = [await read_one(ops, client) for _ in range(n)]
    for entry_id in ids:
        await ops.aset_last_error(entry_id, f"E {entry_id}", 60)
    return ids


def pending_ids(client: redis.Redis, stream: str) -> list[str]:
    rows: Any = client.xpending_range(stream, "agents", "-", "+", 100)
    return [r["message_id"].decode() for r in rows]


@pytest.mark.anyio
class TestDeadLetter:
    async def test_refused_leaves_the_entry_pending(
        self, ops: WorkerOps, client: redis.Redis, stream_name: str
    ) -> None:
        """The dead-letter key is a list: nothing acknowledged, Redis's error."""
        entry_id = await read_one(ops, client)
        client.rpush(f"{stream_name}:dlq", "old")
        with pytest.raises(DeadLetterRefused, match="WRONGTYPE") as caught:
            await ops.adead_letter(
                entry_id, {b"type": b"t"}, f"{stream_name}:dlq", {"error": "E"}, 100
            )
        assert isinstance(caught.value, errors.TransportError)
        assert pending_ids(client, stream_name) == [entry_id]
        # Why it was to be dead-lettered is kept for the next attempt.
        assert await ops.aget_last_error(entry_id) == "dead letter (?) refused: E"

    async def test_refused_keeps_an_earlier_error_record(
        self, ops: WorkerOps, client: redis.Redis, stream_name: str
    ) -> None:
        entry_id = await read_one(ops, client)
        await ops.aset_last_error(entry_id, "ValueError: first", 60)
        client.rpush(f"{stream_name}:dlq", "old")
        with pytest.raises(DeadLetterRefused):
            await ops.adead_letter(entry_id, None, f"{stream_name}:dlq", {}, 100)
        assert await ops.aget_last_error(entry_id) == "ValueError: first"

    async def test_written_then_acknowledged_and_record_dropped(
        self, ops: WorkerOps, client: redis.Redis, stream_name: str
    ) -> None:
        entry_id = await read_one(ops, client)
        await ops.aset_last_error(entry_id, "ValueError: x", 60)
        fields = {b"type": b"t", b"dlq_id": b"forged"}
        dead_id = await ops.adead_letter(
            entry_id, fields, f"{stream_name}:dlq", {"reason": "r"}, 100
        )
        assert pending_ids(client, stream_name) == []
        assert client.exists(ops.errors_key) == 0
        rows: Any = client.xrange(f"{stream_name}:dlq")
        [(got_id, dead)] = rows
        assert got_id.decode() == dead_id
        # An original field named like ours is replaced, not doubled.
        assert dead[b"dlq_id"] == entry_id.encode()
        assert dead[b"dlq_reason"] == b"r"


@pytest.mark.anyio
class TestErrorRecords:
    async def test_every_acknowledgement_drops_the_record(
        self, ops: WorkerOps, client: redis.Redis
    ) -> None:
        """aack, and the acks sent with the next read, drop their records."""
        first, second = await failed(ops, client, 2)
        ttl_ms = int(client.pttl(ops.errors_key))
        assert 0 < ttl_ms <= 60_000
        await ops.aack([first])
        assert client.hkeys(ops.errors_key) == [second.encode()]
        await ops.aread_batch("c", 1, None, [second])
        assert client.exists(ops.errors_key) == 0

    async def test_acks_drop_only_the_records_named(
        self, ops: WorkerOps, client: redis.Redis
    ) -> None:
        """``forget_ids``: the worker's acks skip HDEL for ids delivered once."""
        first, second, third = await failed(ops, client, 3)
        await ops.aack([first, second], forget_ids=[second])
        assert sorted(client.hkeys(ops.errors_key)) == sorted(
            [first.encode(), third.encode()]
        )
        await ops.aread_batch("c", 1, None, [third], forget_ids=[])
        assert sorted(client.hkeys(ops.errors_key)) == sorted(
            [first.encode(), third.encode()]
        )
        assert pending_ids(client, ops.stream_name) == []

    async def test_lost_entries_drop_the_record(
        self, ops: WorkerOps, client: redis.Redis, stream_name: str
    ) -> None:
        """An entry trimmed while pending: claim and transfer ack it, record gone."""
        claimed, moved = await failed(ops, client, 2)
        client.xdel(stream_name, claimed, moved)
        result = await ops.aclaim_entries("other", 0, [claimed])
        assert result.lost == [claimed]
        assert await ops.atransfer("c", "retry", [moved]) == ([], [moved])
        assert client.exists(ops.errors_key) == 0

    async def test_prune_drops_records_acknowledged_elsewhere(
        self, ops: WorkerOps, client: redis.Redis, stream_name: str
    ) -> None:
        """An operator's XACK leaves a record behind; the prune takes it."""
        kept, acked = await failed(ops, client, 2)
        client.hset(ops.errors_key, "not-an-id", "x")
        client.xack(stream_name, "agents", acked)
        cursor = await ops.aprune_error_records()
        while cursor != "0":
            cursor = await ops.aprune_error_records(cursor)
        assert client.hkeys(ops.errors_key) == [kept.encode()]
        client.xgroup_destroy(stream_name, "agents")
        assert await ops.aprune_error_records() == "0"
        assert client.exists(ops.errors_key) == 0


@pytest.mark.anyio
async def test_move_refused_by_its_target_keeps_the_entry(
    redis_url: str, client: redis.Redis, stream_name: str
) -> None:
    """A replay target that is a list: the dead letter stays where it was."""
    dlq = f"{stream_name}:dlq"
    kept = client.xadd(dlq, {"type": "t"}).decode()  # type: ignore[union-attr]
    moved = client.xadd(dlq, {"type": "u"}).decode()  # type: ignore[union-attr]
    client.rpush("target", "old")
    pool = RedisConnectionPool(redis_url)
    try:
        admin = AdminOps.attach(dlq, pool=pool)
        [refused, new_id, gone] = await admin.amove_entries(
            dlq,
            [
                (kept, "target", {b"type": b"t"}),
                (moved, stream_name, {b"type": b"u"}),
                ("1-1", stream_name, {b"type": b"v"}),
            ],
        )
    finally:
        await pool.aclose()
    assert isinstance(refused, errors.TransportError)
    assert "WRONGTYPE" in str(refused)
    assert isinstance(new_id, str)
    assert gone is None
    assert [i.decode() for i, _ in client.xrange(dlq)] == [kept]  # type: ignore[union-attr]
    assert client.xlen(stream_name) == 1


def test_replay_command_reports_a_refused_target(
    redis_url: str,
    client: redis.Redis,
    stream_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``dlq replay`` exits 1, names Redis's error, and keeps the dead letter;
    a target whose name is not UTF-8 is replayed to that very key."""
    dlq = f"{stream_name}:dlq"
    refused = client.xadd(dlq, {"type": "t", "dlq_stream": "target"}).decode()  # type: ignore[union-attr]
    odd = stream_name.encode() + b"\xff"
    replayed = client.xadd(dlq, {"type": "u", "dlq_stream": odd}).decode()  # type: ignore[union-attr]
    client.rpush("target", "old")
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\n[[subscriptions]]\nstream = "{stream_name}"\n',
        encoding="utf-8",
    )
    try:
        status = run_admin(["--config", str(config), "dlq", "replay", "--all"])
        captured = capsys.readouterr()
        assert status == 1
        assert f"not replayed: {refused}:" in captured.err
        assert "WRONGTYPE" in captured.err
        assert [i.decode() for i, _ in client.xrange(dlq)] == [refused]  # type: ignore[union-attr]
        assert client.xlen(odd) == 1, replayed
    finally:
        client.delete(odd)


@pytest.mark.anyio
async def test_error_records_of_another_type_never_stop_a_move(
    ops: WorkerOps, client: redis.Redis, stream_name: str
) -> None:
    """The error-records key holds a string: acks, reads, claims of lost entries
    and dead letters still work (dropping a record is bookkeeping)."""
    client.set(ops.errors_key, "not a hash")
    acked, dead, lost = [await read_one(ops, client) for _ in range(3)]
    assert await ops.aack([acked]) == 1
    client.xadd(stream_name, {"type": "t", "data": "{}"})
    assert len(await ops.aread_batch("c", 10, None, [acked])) == 1
    await ops.adead_letter(dead, None, f"{stream_name}:dlq", {}, 100)
    client.xdel(stream_name, lost)
    assert (await ops.aclaim_entries("other", 0, [lost])).lost == [lost]
    assert not {acked, dead, lost} & set(pending_ids(client, stream_name))
    assert client.get(ops.errors_key) == b"not a hash"
