"""The worker's read round trip: replies in order, errors in place, and a
connection never left out of step (cancelled, killed) for the next caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from agentstream import RedisConnectionPool
from agentstream.testing import wait_for
from agentstream.transport.round_trip import round_trip, stream_entries, xreadgroup_args

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(name="one_connection")
async def _one_connection(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """The worker's client, with one pooled connection: every call reuses it."""
    pool = RedisConnectionPool(redis_url, decode_responses=False, max_connections=1)
    client = pool.get_async_client()
    assert isinstance(client, aioredis.Redis)
    try:
        yield client
    finally:
        await pool.aclose()


async def test_replies_come_in_order_with_error_replies_in_place(
    one_connection: aioredis.Redis, stream_name: str
) -> None:
    replies = await round_trip(
        one_connection,
        [
            ["SET", stream_name, "v"],
            ["LPUSH", stream_name, "x"],  # WRONGTYPE
            ["GET", stream_name],
            ["XACK", f"{stream_name}:none", "g", "1-0"],
        ],
    )
    assert replies[0] == b"OK"
    assert isinstance(replies[1], redis.ResponseError)
    assert "WRONGTYPE" in str(replies[1])
    assert replies[2:] == [b"v", 0]


async def test_entries_match_what_redis_py_parses(
    redis_url: str, one_connection: aioredis.Redis, stream_name: str
) -> None:
    """RESP2 and RESP3 replies give the pairs redis-py's ``xreadgroup`` gives,
    a deleted entry's fields included."""
    sync = redis.Redis.from_url(redis_url)
    sync.xgroup_create(stream_name, "g", "0", mkstream=True)
    layouts: list[list[Any]] = [  # 1 to 5 fields, a repeated one, not UTF-8
        ["data", "{}"],
        ["type", "t", "data", "{}", "é", b"\xff"],
        ["type", "t", "timestamp", "1.5", "data", "{}", "metadata", "{}"],
        ["type", "t", "data", "{}", "type", "u"],
        ["a", 1, "b", 2, "c", 3, "d", 4, "e", 5],
    ]
    await round_trip(
        one_connection,
        [["XADD", stream_name, f"{n}-1", *f] for n, f in enumerate(layouts, 1)],
    )
    read = xreadgroup_args("g", "c", stream_name, 10, None)
    first = stream_entries((await round_trip(one_connection, [read]))[0])
    assert first[3][1] == {b"type": b"u", b"data": b"{}"}
    assert len(first) == len(layouts)
    sync.xdel(stream_name, first[1][0])
    history = [*read[:-1], "0"]  # the consumer's pending entries, from the start
    resp3 = aioredis.Redis.from_url(redis_url, protocol=3)
    try:
        ours = [
            stream_entries((await round_trip(client, [history]))[0])
            for client in (one_connection, resp3)
        ]
    finally:
        await resp3.aclose()
    theirs: Any = await one_connection.xreadgroup(
        "g", "c", {stream_name: "0"}, count=10
    )
    assert ours[0] == ours[1] == list(theirs[0][1])
    assert ours[0][1] == (first[1][0], {})
    assert stream_entries(None) == stream_entries([]) == []


async def test_a_cancelled_read_leaves_no_reply_for_the_next_caller(
    one_connection: aioredis.Redis, stream_name: str
) -> None:
    await one_connection.xgroup_create(stream_name, "g", "0", mkstream=True)
    read = xreadgroup_args("g", "c", stream_name, 10, 5000)
    with anyio.move_on_after(0.05) as timer:
        await round_trip(one_connection, [["PING"], read])
    assert timer.cancelled_caught
    await one_connection.xadd(stream_name, {"type": "t"})
    # The same (only) connection: its next reply is this PING's, not the
    # abandoned read's.
    assert await round_trip(one_connection, [["ECHO", "after"]]) == [b"after"]


async def test_a_killed_connection_is_retried_on_a_new_one(
    redis_url: str, one_connection: aioredis.Redis
) -> None:
    await round_trip(one_connection, [["CLIENT", "SETNAME", "round-trip-victim"]])
    admin = redis.Redis.from_url(redis_url)

    def victims() -> list[dict[str, Any]]:
        return [c for c in admin.client_list() if c.get("name") == "round-trip-victim"]

    [victim] = victims()
    admin.client_kill_filter(_id=victim["id"])
    wait_for(lambda: not victims(), 5, message="the connection killed")
    assert await round_trip(one_connection, [["PING"]]) == [b"PONG"]
