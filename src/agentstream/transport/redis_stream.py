"""RedisStreamTransport: publish and consume events on one Redis Stream."""

from __future__ import annotations

import time
from collections.abc import (
    AsyncIterator,
    Sequence,
)
from contextlib import aclosing
from typing import Any

from agentstream import errors
from agentstream.event import encode_fields, parse_lenient
from agentstream.transport.core import (
    ClaimResult,
    PendingEntry,
    RawEntry,
    RawFields,
    StreamCore,
    pending_entries,
    pending_summary,
    send,
)
from agentstream.transport.pool import RedisConnectionPool
from agentstream.transport.retention import (
    RETENTION_MODES,
    Retention,
    ackdel_args,
    acked_count,
)

__all__ = [
    "ClaimResult",
    "PendingEntry",
    "RawEntry",
    "RawFields",
    "RedisStreamTransport",
]


class RedisStreamTransport:
    """Redis Streams-based event transport for token streaming.

    Provides reliable, replayable event streaming using Redis Streams, with a
    consumer group for several concurrent consumers. Constructing it creates the
    consumer group (and the stream) when missing.

    Example:
        >>> stream = RedisStreamTransport(stream_name="agent_output")
        >>> stream.publish(event_type="token", data={"token": "Hello"})
        >>> events = stream.read_all(count=10)

    Args:
        stream_name: name of the Redis Stream.
        redis_url: Redis connection URL (ignored when ``pool`` is given).
        consumer_group: consumer group name for reading.
        max_len: approximate maximum stream length; older entries are trimmed.
        pool: optional shared ``RedisConnectionPool``; it is not closed by
            ``close()``.

    Raises:
        agentstream.errors.ConnectionError: Redis cannot be reached.
        agentstream.errors.AuthenticationError: Redis refused the credentials.
    """

    def __init__(
        self,
        stream_name: str,
        redis_url: str = "redis://localhost:6379",
        consumer_group: str = "agents",
        max_len: int = 10000,
        pool: RedisConnectionPool | None = None,
    ) -> None:
        self._core = StreamCore(stream_name, redis_url, consumer_group, max_len, pool)
        self._core.ensure_group()

    @classmethod
    async def aopen(
        cls,
        stream_name: str,
        *,
        consumer_group: str = "agents",
        max_len: int = 10000,
        pool: RedisConnectionPool,
        retention: Retention = "length",
    ) -> RedisStreamTransport:
        """Create a transport from async code without blocking the event loop.

        ``retention`` as for the ``retention`` attribute.
        """
        self = cls.__new__(cls)
        self._core = await StreamCore.aopen(
            stream_name, consumer_group=consumer_group, max_len=max_len, pool=pool
        )
        self.retention = retention
        return self

    @property
    def stream_name(self) -> str:
        """Name of the Redis Stream."""
        return self._core.stream

    @property
    def consumer_group(self) -> str:
        """Consumer group name."""
        return self._core.group

    @property
    def location(self) -> str:
        """Where the transport connects (``host:port`` or a socket path)."""
        return self._core.location

    @property
    def max_len(self) -> int:
        """Approximate maximum stream length that ``publish`` trims to."""
        return self._core.max_len

    @max_len.setter
    def max_len(self, value: int) -> None:
        self._core.max_len = value

    @property
    def retention(self) -> Retention:
        """What ``publish`` may trim: ``"length"`` (the default) or ``"processed"``.

        ``"length"``: ``publish`` trims to about ``max_len`` entries, handled or
        not (the seed's behaviour). ``"processed"``: only entries that every
        consumer group of the stream has acknowledged ever leave it: ``publish``
        does not trim (the worker's trimmer removes what every group
        acknowledged, and enforces its hard cap), and on Redis 8.2+ ``ack``
        deletes what every group acknowledged (``XACKDEL ... ACKED``).

        Raises:
            ValueError: another value is set.
        """
        return self._core.retention

    @retention.setter
    def retention(self, value: Retention) -> None:
        if value not in RETENTION_MODES:
            raise ValueError(f"retention must be one of {RETENTION_MODES}: {value!r}")
        self._core.retention = value

    def ensure_group(self) -> None:
        """Create the consumer group at id 0 (and the stream) when missing."""
        self._core.ensure_group()

    async def aensure_group(self) -> None:
        """Async version of ``ensure_group()``."""
        await self._core.aensure_group()

    # -- publish ---------------------------------------------------------------

    def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Publish an event to the stream (XADD with approximate MAXLEN).

        Returns:
            The new entry id.
        """
        fields: dict[Any, Any] = encode_fields(event_type, data, metadata)
        return self._core.publish_fields(fields)

    async def apublish(
        self,
        event_type: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Async version of publish() - publish an event to the stream."""
        return await self._core.apublish(event_type, data, metadata)

    # -- reads -------------------------------------------------------------------

    def read_all(self, count: int = 100, start_id: str = "0") -> list[dict[str, Any]]:
        """Read up to ``count`` events from ``start_id`` on, inclusive (XRANGE)."""
        start = "-" if start_id == "0" else start_id
        rows: Any = self._core.call(
            "xrange",
            lambda: self._core.sync.xrange(self._core.stream, start, "+", count),
        )
        return [parse_lenient(i, f) for i, f in rows]

    async def aread_all(
        self, count: int = 100, start_id: str = "0"
    ) -> list[dict[str, Any]]:
        """Async version of ``read_all()``."""
        start = "-" if start_id == "0" else start_id
        rows: Any = await self._core.acall(
            "xrange",
            lambda: self._core.aio.xrange(self._core.stream, start, "+", count),
        )
        return [parse_lenient(i, f) for i, f in rows]

    def read_group(
        self,
        consumer: str,
        count: int = 100,
        block_ms: int | None = None,
        start_id: str = ">",
    ) -> list[dict[str, Any]]:
        """Read events for ``consumer`` through the group (XREADGROUP).

        Args:
            consumer: the consumer name; created on first use.
            count: the most events to return.
            block_ms: wait up to this long for new events; None does not block.
            start_id: ``">"`` for new events; ``"0"`` re-reads this consumer's own
                pending events (those whose data is gone are left out).
        """
        deadline = self._core.deadline(block_ms)
        while True:
            rows = self._core.call(
                "xreadgroup",
                lambda: self._core.sync.xreadgroup(
                    self._core.group,
                    consumer,
                    {self._core.stream: start_id},
                    count=count,
                    block=self._core.block(block_ms),
                ),
                recreate=True,
            )
            events = _lenient_rows(rows)
            if events or not _time_left(deadline, start_id):
                return events

    async def aread_group(
        self,
        consumer: str,
        count: int = 100,
        block_ms: int | None = None,
        start_id: str = ">",
    ) -> list[dict[str, Any]]:
        """Async version of ``read_group()``."""
        deadline = self._core.deadline(block_ms)
        while True:
            rows = await self._core.acall(
                "xreadgroup",
                lambda: self._core.aio.xreadgroup(
                    self._core.group,
                    consumer,
                    {self._core.stream: start_id},
                    count=count,
                    block=self._core.block(block_ms),
                ),
                recreate=True,
            )
            events = _lenient_rows(rows)
            if events or not _time_left(deadline, start_id):
                return events

    # -- acknowledge, claim, renew -------------------------------------------

    def ack(self, ids: Sequence[str]) -> int:
        """Acknowledge events as processed (XACK); returns how many were pending.

        In ``"processed"`` retention on Redis 8.2+: ``XACKDEL ... ACKED``.
        """
        if not ids:
            return 0
        core = self._core
        if core.retention == "processed" and core.features().ackdel:
            args = ackdel_args(core.stream, core.group, ids)
            try:
                reply = core.call(
                    "xackdel", lambda: send(core.sync, args), recreate=True
                )
                return acked_count(reply)
            except errors.TransportError as exc:
                if not core.feature_lost(exc):
                    raise
        return int(
            self._core.call(
                "xack",
                lambda: self._core.sync.xack(self._core.stream, self._core.group, *ids),
                recreate=True,
            )
        )

    async def aack(self, ids: Sequence[str | bytes]) -> int:
        """Async version of ``ack()``."""
        return await self._core.aack(ids)

    def claim(
        self, consumer: str, min_idle_ms: int, ids: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Claim pending messages from another consumer (XCLAIM).

        Ids idle for less than ``min_idle_ms``, or whose data no longer exists,
        are skipped.
        """
        if not ids:
            return []
        rows: Any = self._core.call(
            "xclaim",
            lambda: self._core.sync.xclaim(
                self._core.stream, self._core.group, consumer, min_idle_ms, list(ids)
            ),
            recreate=True,
        )
        return [parse_lenient(i, f) for i, f in rows if f is not None]

    async def aclaim(
        self, consumer: str, min_idle_ms: int, ids: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Async version of ``claim()``."""
        if not ids:
            return []
        rows: Any = await self._core.acall(
            "xclaim",
            lambda: self._core.aio.xclaim(
                self._core.stream, self._core.group, consumer, min_idle_ms, list(ids)
            ),
            recreate=True,
        )
        return [parse_lenient(i, f) for i, f in rows if f is not None]

    # -- pending -------------------------------------------------------------

    def pending(self) -> dict[str, Any]:
        """Get information about pending messages (XPENDING summary).

        Returns:
            ``{"count", "min_id", "max_id", "consumers": {name: count}}``.
        """
        raw = self._core.call(
            "xpending",
            lambda: self._core.sync.xpending(self._core.stream, self._core.group),
            recreate=True,
        )
        return pending_summary(raw)

    async def apending(self) -> dict[str, Any]:
        """Async version of ``pending()``."""
        return await self._core.apending()

    def pending_range(
        self,
        count: int,
        min_idle_ms: int | None = None,
        consumer: str | None = None,
        start: str = "-",
        end: str = "+",
    ) -> list[PendingEntry]:
        """List pending entries with owner, idle time and delivery count."""
        raw = self._core.call(
            "xpending",
            lambda: self._core.sync.xpending_range(
                self._core.stream,
                self._core.group,
                start,
                end,
                count,
                consumer,
                min_idle_ms,
            ),
            recreate=True,
        )
        return pending_entries(raw)

    async def apending_range(
        self,
        count: int,
        min_idle_ms: int | None = None,
        consumer: str | None = None,
        start: str = "-",
        end: str = "+",
    ) -> list[PendingEntry]:
        """Async version of ``pending_range()``."""
        return await self._core.apending_range(count, min_idle_ms, consumer, start, end)

    # -- stream ----------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Get stream information.

        Returns:
            ``{"length", "first_entry", "last_entry", "groups"}``; the entries are
            event dicts or None. A stream that does not exist reports zeros.
        """
        try:
            raw = self._core.call(
                "xinfo", lambda: self._core.sync.xinfo_stream(self._core.stream)
            )
        except errors.TransportError as exc:
            if "no such key" not in str(exc):
                raise
            raw = {}
        return _stream_info(raw)

    async def ainfo(self) -> dict[str, Any]:
        """Async version of ``info()``."""
        try:
            raw = await self._core.acall(
                "xinfo", lambda: self._core.aio.xinfo_stream(self._core.stream)
            )
        except errors.TransportError as exc:
            if "no such key" not in str(exc):
                raise
            raw = {}
        return _stream_info(raw)

    def delete(self) -> bool:
        """Delete the stream and all its data; True when it existed."""
        return bool(
            self._core.call("del", lambda: self._core.sync.delete(self._core.stream))
        )

    async def adelete(self) -> bool:
        """Async version of ``delete()``."""
        return bool(
            await self._core.acall(
                "del", lambda: self._core.aio.delete(self._core.stream)
            )
        )

    # -- subscribe -------------------------------------------------------------

    async def asubscribe(
        self, last_id: str = "$", block_ms: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """Async generator that yields events from the stream as they arrive.

        Reads with XREAD (no consumer group). After a connection error it waits
        with a capped backoff and resumes after the last id it yielded (or, when
        started at ``$``, after the stream's last id when it started), so nothing
        published during an outage is skipped.
        """
        async with aclosing(self._core.asubscribe_raw(last_id, block_ms)) as entries:
            async for entry_id, fields in entries:
                text = {
                    k.decode(errors="replace"): v.decode(errors="replace")
                    for k, v in fields.items()
                }
                yield parse_lenient(entry_id, text)

    # -- close -------------------------------------------------------------------

    def close(self) -> None:
        """Close the Redis connection (a shared pool stays open)."""
        self._core.close()

    async def aclose(self) -> None:
        """Close the async and sync connections (a shared pool stays open)."""
        await self._core.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisStreamTransport(stream_name={self.stream_name!r}, "
            f"consumer_group={self.consumer_group!r}, at={self.location!r})"
        )


def _time_left(deadline: float | None, start_id: str) -> bool:
    return start_id == ">" and deadline is not None and time.monotonic() < deadline


def _lenient_rows(rows: Any) -> list[dict[str, Any]]:
    if not rows:
        return []
    return [parse_lenient(i, f) for i, f in rows[0][1] if f]


def _stream_info(raw: dict[str, Any]) -> dict[str, Any]:
    def entry(value: Any) -> dict[str, Any] | None:
        if not value or value[0] is None:
            return None
        return parse_lenient(value[0], value[1])

    return {
        "length": int(raw.get("length", 0)),
        "first_entry": entry(raw.get("first-entry")),
        "last_entry": entry(raw.get("last-entry")),
        "groups": int(raw.get("groups", 0)),
    }
