"""The reference: the least a Python consumer can do per batch.

``python -m bench.raw_consumer --url URL --stream KEY [--pipelined]`` reads with
XREADGROUP COUNT 100 and acknowledges each batch with one XACK (with
``--pipelined``, in the same round trip as the next read), handling nothing.
``--partitions N`` reads the N partition keys of KEY instead (``KEY:{0}`` ...),
one asyncio task per key; ``--cluster`` connects with redis-py's asyncio
``RedisCluster`` (URL: any one node), so each key is read from its master.
Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from agentstream.transport.keys import partition_streams
from bench import GROUP

COUNT = 100
BLOCK_MS = 100


async def _drain(
    client: aioredis.Redis | RedisCluster,
    stream: str,
    pipelined: bool,
    stop: asyncio.Event,
) -> None:
    streams: dict[Any, Any] = {stream: ">"}
    acks: list[bytes] = []
    while not stop.is_set():
        rows: Any
        if pipelined and acks:
            async with client.pipeline(transaction=False) as pipe:
                pipe.xack(stream, GROUP, *acks)
                pipe.xreadgroup(GROUP, "raw", streams, count=COUNT, block=BLOCK_MS)
                rows = (await pipe.execute())[1]
        else:
            rows = await client.xreadgroup(
                GROUP, "raw", streams, count=COUNT, block=BLOCK_MS
            )
        acks = [entry_id for entry_id, _ in rows[0][1]] if rows else []
        if acks and not pipelined:
            await client.xack(stream, GROUP, *acks)
            acks = []
    if acks:
        await client.xack(stream, GROUP, *acks)


async def consume(
    url: str, streams: Sequence[str], pipelined: bool, cluster: bool = False
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client: aioredis.Redis | RedisCluster = (
        RedisCluster.from_url(url) if cluster else aioredis.Redis.from_url(url)
    )
    try:
        if isinstance(client, RedisCluster):
            # Before the tasks: redis-py (7.1+) lets concurrent first commands
            # race the cluster client's lazy initialization, and some hang.
            await client.initialize()
        async with asyncio.TaskGroup() as tasks:
            for stream in streams:
                tasks.create_task(_drain(client, stream, pipelined, stop))
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_consumer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--pipelined", action="store_true")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--cluster", action="store_true")
    args = parser.parse_args(argv)
    streams = partition_streams(args.stream, args.partitions)
    asyncio.run(consume(args.url, streams, args.pipelined, args.cluster))


if __name__ == "__main__":
    main()
