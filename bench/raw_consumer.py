"""The reference: the least a Python consumer can do per batch.

``python -m bench.raw_consumer --url URL --stream KEY [--pipelined]`` reads with
XREADGROUP COUNT 100 and acknowledges each batch with one XACK (with
``--pipelined``, in the same round trip as the next read), handling nothing.
Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from bench import GROUP

COUNT = 100
BLOCK_MS = 100


async def consume(url: str, stream: str, pipelined: bool) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = aioredis.Redis.from_url(url)
    streams: dict[Any, Any] = {stream: ">"}
    acks: list[bytes] = []
    try:
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
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_consumer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--pipelined", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(consume(args.url, args.stream, args.pipelined))


if __name__ == "__main__":
    main()
