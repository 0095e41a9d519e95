"""Async connections pack commands with hiredis: the same bytes, the same errors."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio as aioredis

from agentstream import RedisConnectionPool


@pytest.mark.anyio
async def test_async_commands_round_trip_and_refuse_what_redis_py_refuses(
    redis_url: str, stream_name: str
) -> None:
    pool = RedisConnectionPool(redis_url, decode_responses=False)
    client = pool.get_async_client()
    assert isinstance(client, aioredis.Redis)
    try:
        values: list[str | bytes | int | float] = ["é ✓ text", b"\xff\x00raw", 7, 0.25]
        for i, value in enumerate(values):
            await client.set(f"{stream_name}:{i}", value)
        got = [await client.get(f"{stream_name}:{i}") for i in range(len(values))]
        assert got == ["é ✓ text".encode(), b"\xff\x00raw", b"7", b"0.25"]
        # A command name with a space is split into its words, as redis-py does.
        assert await client.execute_command("CONFIG GET", "maxmemory")  # type: ignore[no-untyped-call]
        for bad in (None, True, [1]):
            with pytest.raises(redis.DataError):
                await client.set(stream_name, bad)  # type: ignore[arg-type]
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            packed = connection.pack_command("XACK", stream_name, "g", b"1-0", "2-0")
        finally:
            await client.connection_pool.release(connection)
        assert b"".join(packed) == (
            b"*5\r\n$4\r\nXACK\r\n$%d\r\n%s\r\n$1\r\ng\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n"
            % (len(stream_name), stream_name.encode())
        )
    finally:
        await pool.aclose()
