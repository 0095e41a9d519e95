"""A connection the server resets (CLIENT KILL, a restart) is a connection
error on either event loop: uvloop refuses a write on it with a RuntimeError,
which must read as redis-py's ConnectionError (retried) and ours."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis

from agentstream import RedisConnectionPool, errors
from agentstream.testing import await_for
from agentstream.transport.round_trip import round_trip
from agentstream.transport.worker_ops import WorkerOps

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(
    name="anyio_backend",
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("asyncio", {}), id="asyncio"),
    ],
)
def _anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


class ResettingProxy:
    """A TCP proxy to a real Redis that can reset the connections made to it
    (an RST, as Redis sends for ``CLIENT KILL`` of a client with unread input)."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._clients: list[asyncio.StreamWriter] = []
        self.port = 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ResettingProxy]:
        server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await self.reset()
            await server.wait_closed()

    async def reset(self) -> None:
        for client in self._clients:
            raw = client.get_extra_info("socket")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abort()
        self._clients.clear()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._clients.append(writer)
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self._upstream
        )
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
    except OSError:  # reset
        pass
    finally:
        dst.transport.abort()


async def test_a_write_on_a_reset_connection_is_a_connection_error(
    redis_url: str,
) -> None:
    upstream = urlsplit(redis_url).port
    assert upstream is not None
    async with ResettingProxy(upstream).running() as proxy:
        pool = RedisConnectionPool(
            f"redis://127.0.0.1:{proxy.port}/0",
            max_connections=1,
            decode_responses=False,
        )
        client = pool.get_async_client()
        assert isinstance(client, aioredis.Redis)
        try:
            assert await round_trip(client, [["PING"]]) == [b"PONG"]
            conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await proxy.reset()
                transport = conn._writer.transport
                await await_for(transport.is_closing, 5, message="reset not seen")
                with pytest.raises(redis.ConnectionError):
                    await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n")
            finally:
                await client.connection_pool.release(conn)
            # The pool's only connection was dropped: the next call reconnects.
            assert await round_trip(client, [["PING"]]) == [b"PONG"]
        finally:
            await pool.aclose()


async def test_uvloops_refusal_reads_as_a_connection_error(redis_url: str) -> None:
    """Cluster connections are redis-py's own: the refusal is translated."""
    transport = WorkerOps("reset", redis_url=redis_url, consumer_group="g")
    refusal = (
        "unable to perform operation on <TCPTransport closed=True reading=False "
        "0x5626>; the handler is closed"
    )
    try:
        with (
            pytest.raises(errors.ConnectionError, match="cannot reach Redis"),
            transport.translated("xreadgroup"),
        ):
            raise RuntimeError(refusal)
        with (
            pytest.raises(RuntimeError, match="something else"),
            transport.translated("xreadgroup"),
        ):
            raise RuntimeError("something else")
    finally:
        await transport.aclose()
