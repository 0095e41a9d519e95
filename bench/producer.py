"""A producer at a fixed rate, paced by absolute deadlines.

``python -m bench.producer --url URL --stream KEY --rate 2000 --duration 10``
publishes ``rate * duration`` seed-format ``token`` events through
``RedisStreamTransport.apublish`` (which stamps ``timestamp`` when called), then
prints one JSON line: how many it published and how late it ever fell behind.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import anyio

from agentstream import RedisConnectionPool, RedisStreamTransport


async def produce(url: str, stream: str, rate: float, duration: float) -> None:
    pool = RedisConnectionPool(url)
    transport = await RedisStreamTransport.aopen(stream, pool=pool, max_len=1_000_000)
    total = int(rate * duration)
    late_max = 0.0
    start = time.perf_counter()
    try:
        for seq in range(total):
            deadline = start + seq / rate
            ahead = deadline - time.perf_counter()
            if ahead > 0:
                await anyio.sleep(ahead)
            else:
                late_max = max(late_max, -ahead)
            await transport.apublish("token", {"token": "hello", "seq": seq})
        elapsed = time.perf_counter() - start
    finally:
        await pool.aclose()
    report = {"published": total, "elapsed_s": elapsed, "late_max_s": late_max}
    print(json.dumps(report), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.producer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    anyio.run(produce, args.url, args.stream, args.rate, args.duration)


if __name__ == "__main__":
    main()
