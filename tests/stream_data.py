"""Stream data for tests, made as the worker makes it (dead letters)."""

from __future__ import annotations

import anyio

from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.pool import RedisConnectionPool
from agentstream.transport.worker_ops import WorkerOps

__all__ = ["dead_letter"]


def dead_letter(
    url: str,
    stream: str,
    entry_id: str,
    reason: str,
    error: str = "ValueError: boom",
    deliveries: int = 5,
    key: str | None = None,
) -> str:
    """Dead-letter one entry of ``stream`` as the worker does; return its DLQ id."""

    async def run() -> str:
        pool = RedisConnectionPool(url, decode_responses=False)
        try:
            t = await WorkerOps.aopen(stream, pool=pool)
            [(_, fields)] = await AdminOps.attach(stream, pool=pool).arange_raw(
                None, entry_id, entry_id
            )
            details = {
                "reason": reason,
                "error": error,
                "delivery_count": str(deliveries),
            }
            return await t.adead_letter(
                entry_id, fields, key or f"{stream}:dlq", details, 1000
            )
        finally:
            await pool.aclose()

    return anyio.run(run, backend="asyncio")
