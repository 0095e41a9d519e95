"""Read one consumer group's backlog from Redis for the metrics."""

from __future__ import annotations

from agentstream.errors import TransportError
from agentstream.observe.metrics import GroupStats
from agentstream.transport.group_state import GroupState, aread_group_state
from agentstream.transport.worker_ops import WorkerOps

__all__ = ["collect_group_stats"]


async def collect_group_stats(transport: WorkerOps, dead_letter_key: str) -> GroupStats:
    """Read one group's backlog from Redis (``aread_group_state``, XLEN, XRANGE).

    The figures are checked against the stream (see
    ``agentstream.transport.group_state``): the lag is None when it cannot be
    known, never a number that contradicts the stream. The lag's age is that of
    the first entry after the group's last-delivered id (one ``XRANGE ...
    COUNT 1``), read only when the group has lag, against the server's clock.

    Raises:
        TransportError: Redis failed, or the group does not exist.
    """
    state = await aread_group_state(transport)
    if not isinstance(state, GroupState):
        raise TransportError(
            f"consumer group {transport.consumer_group!r} of stream "
            f"{transport.stream_name!r} does not exist"
        )
    age_ms = state.oldest_pending_age_ms
    lag_age_s: float | None = 0.0
    if state.lag != 0:
        first = await transport.afirst_after(state.last_delivered_id)
        lag_age_s = 0.0 if first is None else _age_s(first, state.server_time_ms)
    return GroupStats(
        length=state.length,
        lag=state.lag,
        pending=state.pending,
        oldest_pending_age_s=None if age_ms is None else age_ms / 1000,
        consumers=state.consumers,
        dead_letter_length=await transport.alength(dead_letter_key),
        lag_age_s=lag_age_s,
    )


def _age_s(entry_id: str, now_ms: int) -> float:
    """Seconds from an entry id's millisecond part to ``now_ms`` (never negative)."""
    return max(now_ms - int(entry_id.partition("-")[0]), 0) / 1000
