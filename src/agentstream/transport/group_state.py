"""A consumer group's backlog figures, checked against what the stream holds.

Redis's own ``lag`` (XINFO GROUPS) can contradict the stream: Redis 7.0 keeps a
stale ``entries-read`` after the stream was trimmed while the group was behind,
and reports a lag even once the group has read the last entry; ``XSETID ...
ENTRIESADDED`` and ``XDEL`` skew or void it as well. The figures here are taken at
one instant (one Lua script) and the lag is derived from the stream itself
wherever that is cheap, else taken from Redis only when it fits the bounds the
stream sets, else reported as unknown (None).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from agentstream.transport.core import StreamCore, decode_id
from agentstream.transport.scripts import GROUP_STATE

__all__ = ["EXACT_LAG_MAX", "GroupState", "aread_group_state", "consistent_lag"]

#: Up to this many entries are counted on each side of the last-delivered id, so
#: a lag up to this (or within this of the stream's length) is exact.
EXACT_LAG_MAX = 100

_SHA = hashlib.sha1(GROUP_STATE.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class GroupState:
    """One consumer group's backlog at one instant.

    Attributes:
        length: entries in the stream (XLEN).
        lag: entries not yet delivered to the group; None when unknown.
        redis_lag: the lag Redis reported (None: Redis could not tell, or < 7.0).
        pending: entries delivered and not acknowledged (the pending entries list,
            including entries since trimmed or deleted from the stream).
        oldest_pending_id: the smallest pending id, or None.
        oldest_pending_age_ms: server time minus the oldest pending id's
            millisecond part; 0 when nothing is pending; None when that id lies
            in the future (ids that are not publish times, or XSETID).
        consumers: consumers the group knows of.
        last_delivered_id: the group's last-delivered id.
        entries_read: Redis's ``entries-read`` counter (None when invalid).
        server_time_ms: the Redis server's clock, in Unix milliseconds.
    """

    length: int
    lag: int | None
    redis_lag: int | None
    pending: int
    oldest_pending_id: str | None
    oldest_pending_age_ms: int | None
    consumers: int
    last_delivered_id: str
    entries_read: int | None
    server_time_ms: int


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def consistent_lag(
    *,
    length: int,
    first_id: str | None,
    last_id: str | None,
    last_delivered_id: str,
    after: int,
    upto: int,
    redis_lag: int | None,
    cap: int = EXACT_LAG_MAX,
) -> int | None:
    """The number of entries after ``last_delivered_id``, or None if unknown.

    Args:
        length: the stream's length.
        first_id, last_id: ids of its first and last entries (None: empty).
        last_delivered_id: the group's last-delivered id.
        after: entries with a greater id, counted up to ``cap + 1``.
        upto: entries with an id up to it, counted up to ``cap + 1``.
        redis_lag: what Redis reports (XINFO GROUPS ``lag``).
        cap: the counting limit.
    """
    delivered = _id(last_delivered_id)
    if length == 0 or last_id is None or _id(last_id) <= delivered:
        return 0  # nothing after the last-delivered id
    if first_id is not None and delivered < _id(first_id):
        return length  # everything is after it
    if after <= cap:
        return after
    if upto <= cap:
        return length - upto
    # Both sides longer than we count: lag > cap and upto > cap.
    if redis_lag is not None and cap < redis_lag < length - cap:
        return redis_lag
    return None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


async def aread_group_state(core: StreamCore) -> GroupState | bool:
    """Read one group's figures at one instant (a read-only Lua script).

    Returns:
        The ``GroupState``; ``False`` when the stream does not exist, ``True``
        when the stream exists but the group does not.

    Raises:
        agentstream.errors.TransportError: Redis failed or refused the script.
    """

    async def run() -> Any:
        # EVALSHA_RO: a user with read-only key access (%R~) may run it.
        args = (core.stream, core.group, EXACT_LAG_MAX)
        try:
            return await core.raw.evalsha_ro(_SHA, 1, *args)
        except NoScriptError:
            await core.raw.script_load(GROUP_STATE)
            return await core.raw.evalsha_ro(_SHA, 1, *args)

    reply: list[Any] = await core.acall("group state", run)
    if reply[0] != 2:
        return bool(reply[0])
    (
        _,
        length,
        first,
        last,
        delivered,
        entries_read,
        lag,
        pending,
        oldest,
        consumers,
        time_s,
        time_us,
        after,
        upto,
    ) = reply
    now_ms = int(time_s) * 1000 + int(time_us) // 1000
    delivered_id = decode_id(delivered)
    oldest_id = None if oldest is None else decode_id(oldest)
    age_ms: int | None = 0
    if oldest_id is not None:
        age_ms = now_ms - _id(oldest_id)[0]
        if age_ms < 0:
            age_ms = None
    redis_lag = _int(lag)
    return GroupState(
        length=int(length),
        lag=consistent_lag(
            length=int(length),
            first_id=None if first is None else decode_id(first),
            last_id=None if last is None else decode_id(last),
            last_delivered_id=delivered_id,
            after=int(after),
            upto=int(upto),
            redis_lag=redis_lag,
        ),
        redis_lag=redis_lag,
        pending=int(pending),
        oldest_pending_id=oldest_id,
        oldest_pending_age_ms=age_ms,
        consumers=int(consumers),
        last_delivered_id=delivered_id,
        entries_read=_int(entries_read),
        server_time_ms=now_ms,
    )
