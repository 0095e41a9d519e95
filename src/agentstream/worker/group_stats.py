"""Read one consumer group's backlog from Redis for the metrics."""

from __future__ import annotations

import time

from agentstream.errors import TransportError
from agentstream.observe.metrics import GroupStats
from agentstream.transport.worker_ops import WorkerOps

__all__ = ["collect_group_stats"]


async def collect_group_stats(transport: WorkerOps, dead_letter_key: str) -> GroupStats:
    """Read one group's backlog from Redis (XINFO GROUPS, XPENDING, XLEN, XRANGE).

    The lag's age is that of the first entry after the group's last-delivered
    id (one ``XRANGE ... COUNT 1``), read only when the group has lag.

    Raises:
        TransportError: Redis failed, or the group does not exist.
    """
    info = await transport.agroup_info()
    if info is None:
        raise TransportError(
            f"consumer group {transport.consumer_group!r} of stream "
            f"{transport.stream_name!r} does not exist"
        )
    summary = await transport.apending()
    length = await transport.alength()
    dead = await transport.alength(dead_letter_key)
    lag = info.get("lag")  # missing before Redis 7, None when Redis cannot tell
    now_s = time.time()
    lag_age_s: float | None = 0.0
    if lag is None or int(lag) > 0:
        first = await transport.afirst_after(str(info["last-delivered-id"]))
        lag_age_s = 0.0 if first is None else _age_s(first, now_s)
    return GroupStats(
        length=length,
        lag=None if lag is None else int(lag),
        pending=int(info["pending"]),
        oldest_pending_age_s=_age_s(summary["min_id"], now_s),
        consumers=int(info["consumers"]),
        dead_letter_length=dead,
        lag_age_s=lag_age_s,
    )


def _age_s(entry_id: bytes | str | None, now_s: float) -> float:
    """Seconds since the time in an entry id's millisecond part; 0 for none."""
    if not entry_id:
        return 0.0
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return max(now_s - int(text.partition("-")[0]) / 1000, 0.0)
