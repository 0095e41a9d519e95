"""RedisStreamTransport: publish and consume events on one Redis Stream."""

from __future__ import annotations

import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import redis.exceptions as rex

from agentstream import _scripts, errors
from agentstream.event import encode_fields, parse_lenient
from agentstream.pool import RedisConnectionPool

__all__ = ["ClaimResult", "PendingEntry", "RawEntry", "RedisStreamTransport"]

T = TypeVar("T")

#: A stream entry as the worker reads it: id and undecoded fields.
RawFields = dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """One entry of a consumer group's pending list (XPENDING, extended form)."""

    id: str
    consumer: str
    idle_ms: int
    delivery_count: int


@dataclass(frozen=True, slots=True)
class RawEntry:
    """An entry with undecoded fields and its delivery count.

    ``fields`` is None when the entry is still pending but its data is gone from
    the stream (trimmed or deleted before it was acknowledged).
    """

    id: str
    fields: RawFields | None
    delivery_count: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What a claim took over, and the pending ids whose data was gone (acked)."""

    entries: list[RawEntry]
    lost: list[str]


class _NoGroup(errors.TransportError):
    """The stream or the group vanished under a command (NOGROUP)."""


def _location(url: str) -> str:
    """Describe where a URL points without any credentials in it."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _decode_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
        self._setup(stream_name, redis_url, consumer_group, max_len, pool)
        self.ensure_group()

    @classmethod
    async def aopen(
        cls,
        stream_name: str,
        *,
        consumer_group: str = "agents",
        max_len: int = 10000,
        pool: RedisConnectionPool,
    ) -> RedisStreamTransport:
        """Create a transport from async code without blocking the event loop."""
        self = cls.__new__(cls)
        self._setup(stream_name, pool.redis_url, consumer_group, max_len, pool)
        await self.aensure_group()
        return self

    def _setup(
        self,
        stream_name: str,
        redis_url: str,
        consumer_group: str,
        max_len: int,
        pool: RedisConnectionPool | None,
    ) -> None:
        if not stream_name:
            raise ValueError("stream_name must not be empty")
        self._stream = stream_name
        self._group = consumer_group
        self.max_len = max_len
        self._owns_pool = pool is None
        self._pool = pool if pool is not None else RedisConnectionPool(redis_url)
        self._where = _location(self._pool.redis_url)
        self._secrets = self._pool.secrets
        self._sync = self._pool.get_sync_client()
        self._async = self._pool.get_async_client()
        self._raw = self._pool.get_raw_async_client()
        timeout = self._pool.socket_timeout_s
        # Longest BLOCK that still leaves the socket timeout room for the reply.
        self._max_block_ms = None if timeout is None else max(int(timeout * 500), 1)
        self._claim = self._raw.register_script(_scripts.CLAIM)
        self._transfer = self._raw.register_script(_scripts.TRANSFER)
        self._lease = self._raw.register_script(_scripts.LEASE)
        self._release = self._raw.register_script(_scripts.RELEASE)
        self._move = self._raw.register_script(_scripts.MOVE)
        self._delete_idle = self._raw.register_script(_scripts.DELETE_IDLE_CONSUMERS)

    @property
    def stream_name(self) -> str:
        """Name of the Redis Stream."""
        return self._stream

    @property
    def consumer_group(self) -> str:
        """Consumer group name."""
        return self._group

    @property
    def location(self) -> str:
        """Where the transport connects (``host:port`` or a socket path)."""
        return self._where

    # -- error translation ---------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except rex.AuthenticationError as exc:
            msg = f"Redis at {self._where} refused the credentials: {exc}"
            raise errors.AuthenticationError(self._scrub(msg), operation) from None
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            msg = f"cannot reach Redis at {self._where} ({operation}): {exc}"
            raise errors.ConnectionError(self._scrub(msg), operation) from None
        except rex.NoPermissionError as exc:
            msg = f"Redis at {self._where} denied {operation}: {exc}"
            raise errors.PermissionDenied(self._scrub(msg), operation) from None
        except rex.ResponseError as exc:
            text = str(exc)
            if "NOGROUP" in text:  # pipelines prefix the command's position
                raise _NoGroup(text, operation) from None
            if text.startswith(("WRONGPASS", "NOAUTH")):
                msg = f"Redis at {self._where} refused the credentials: {text}"
                raise errors.AuthenticationError(self._scrub(msg), operation) from None
            msg = f"Redis at {self._where} rejected {operation}: {text}"
            raise errors.TransportError(self._scrub(msg), operation) from None
        except rex.RedisError as exc:
            msg = f"Redis error at {self._where} ({operation}): {exc}"
            raise errors.TransportError(self._scrub(msg), operation) from None

    def _call(self, operation: str, fn: Callable[[], T], recreate: bool = False) -> T:
        try:
            with self._errors(operation):
                return fn()
        except _NoGroup:
            if not recreate:
                raise
        self.ensure_group()
        with self._errors(operation):
            return fn()

    async def _acall(
        self, operation: str, fn: Callable[[], Awaitable[T]], recreate: bool = False
    ) -> T:
        try:
            with self._errors(operation):
                return await fn()
        except _NoGroup:
            if not recreate:
                raise
        await self.aensure_group()
        with self._errors(operation):
            return await fn()

    # -- group ---------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group at id 0 (and the stream) when missing."""
        try:
            with self._errors("xgroup create"):
                self._sync.xgroup_create(self._stream, self._group, "0", mkstream=True)
        except errors.TransportError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def aensure_group(self) -> None:
        """Async version of ``ensure_group()``."""
        try:
            with self._errors("xgroup create"):
                await self._raw.xgroup_create(
                    self._stream, self._group, "0", mkstream=True
                )
        except errors.TransportError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

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
        return _decode_id(
            self._call(
                "xadd",
                lambda: self._sync.xadd(
                    self._stream, fields, maxlen=self.max_len, approximate=True
                ),
            )
        )

    async def apublish(
        self,
        event_type: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Async version of publish() - publish an event to the stream."""
        fields: dict[Any, Any] = encode_fields(event_type, data, metadata)
        return _decode_id(
            await self._acall(
                "xadd",
                lambda: self._async.xadd(
                    self._stream, fields, maxlen=self.max_len, approximate=True
                ),
            )
        )

    # -- reads -------------------------------------------------------------------

    def read_all(self, count: int = 100, start_id: str = "0") -> list[dict[str, Any]]:
        """Read up to ``count`` events from ``start_id`` on, inclusive (XRANGE)."""
        start = "-" if start_id == "0" else start_id
        rows: Any = self._call(
            "xrange", lambda: self._sync.xrange(self._stream, start, "+", count)
        )
        return [parse_lenient(i, f) for i, f in rows]

    async def aread_all(
        self, count: int = 100, start_id: str = "0"
    ) -> list[dict[str, Any]]:
        """Async version of ``read_all()``."""
        start = "-" if start_id == "0" else start_id
        rows: Any = await self._acall(
            "xrange", lambda: self._async.xrange(self._stream, start, "+", count)
        )
        return [parse_lenient(i, f) for i, f in rows]

    def _block(self, block_ms: int | None) -> int | None:
        if block_ms is None or self._max_block_ms is None:
            return block_ms
        if block_ms == 0:  # forever: wait in slices the socket timeout allows
            return self._max_block_ms
        return min(block_ms, self._max_block_ms)

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
        deadline = self._deadline(block_ms)
        while True:
            rows = self._call(
                "xreadgroup",
                lambda: self._sync.xreadgroup(
                    self._group,
                    consumer,
                    {self._stream: start_id},
                    count=count,
                    block=self._block(block_ms),
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
        deadline = self._deadline(block_ms)
        while True:
            rows = await self._acall(
                "xreadgroup",
                lambda: self._async.xreadgroup(
                    self._group,
                    consumer,
                    {self._stream: start_id},
                    count=count,
                    block=self._block(block_ms),
                ),
                recreate=True,
            )
            events = _lenient_rows(rows)
            if events or not _time_left(deadline, start_id):
                return events

    def _deadline(self, block_ms: int | None) -> float | None:
        if block_ms is None:
            return None
        if block_ms == 0:
            return float("inf")
        return time.monotonic() + block_ms / 1000

    # -- worker reads (undecoded bytes, for the strict decoder) -----------------

    async def aread_batch(
        self,
        consumer: str,
        count: int,
        block_ms: int | None,
        ack_ids: Sequence[bytes | str] = (),
    ) -> list[tuple[bytes, RawFields]]:
        """Read new entries for ``consumer`` as undecoded ``(id, fields)`` pairs.

        This is the worker's hot path: one XREADGROUP, no per-entry decoding, and
        ``ack_ids`` acknowledged in the same round trip (pipelined before the
        read). The block is capped below the socket timeout; an empty list means
        no entry arrived in time.
        """
        block = self._block(block_ms)
        streams: dict[Any, Any] = {self._stream: ">"}

        async def read() -> Any:
            if not ack_ids:
                return await self._raw.xreadgroup(
                    self._group, consumer, streams, count=count, block=block
                )
            async with self._raw.pipeline(transaction=False) as pipe:
                pipe.xack(self._stream, self._group, *ack_ids)
                pipe.xreadgroup(
                    self._group, consumer, streams, count=count, block=block
                )
                return (await pipe.execute())[1]

        rows: Any = await self._acall("xreadgroup", read, recreate=True)
        return rows[0][1] if rows else []

    async def aread_own_pending(
        self, consumer: str, count: int, after_id: str = "0"
    ) -> list[RawEntry]:
        """Re-read entries pending on ``consumer`` after ``after_id``.

        Entries whose data is gone come back with ``fields=None``. The delivery
        count is the one after this read (re-reading counts as a delivery).
        """

        async def run() -> list[Any]:
            async with self._raw.pipeline(transaction=True) as pipe:
                pipe.xreadgroup(
                    self._group, consumer, {self._stream: after_id}, count=count
                )
                pipe.xpending_range(
                    self._stream, self._group, "-", "+", count * 2, consumer
                )
                return await pipe.execute()

        rows, pending = await self._acall("xreadgroup", run, recreate=True)
        if not rows or not rows[0][1]:
            return []
        counts = {p["message_id"]: p["times_delivered"] for p in pending}
        # A real entry has at least one field; a pending id whose data is gone
        # comes back with none (and its delivery count is not raised).
        return [
            RawEntry(_decode_id(i), f or None, int(counts.get(i, 1)))
            for i, f in rows[0][1]
        ]

    # -- acknowledge, claim, renew -------------------------------------------

    def ack(self, ids: Sequence[str]) -> int:
        """Acknowledge events as processed (XACK); returns how many were pending."""
        if not ids:
            return 0
        return int(
            self._call(
                "xack",
                lambda: self._sync.xack(self._stream, self._group, *ids),
                recreate=True,
            )
        )

    async def aack(self, ids: Sequence[str | bytes]) -> int:
        """Async version of ``ack()``."""
        if not ids:
            return 0
        return int(
            await self._acall(
                "xack",
                lambda: self._raw.xack(self._stream, self._group, *ids),
                recreate=True,
            )
        )

    def claim(
        self, consumer: str, min_idle_ms: int, ids: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Claim pending messages from another consumer (XCLAIM).

        Ids idle for less than ``min_idle_ms``, or whose data no longer exists,
        are skipped.
        """
        if not ids:
            return []
        rows: Any = self._call(
            "xclaim",
            lambda: self._sync.xclaim(
                self._stream, self._group, consumer, min_idle_ms, list(ids)
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
        rows: Any = await self._acall(
            "xclaim",
            lambda: self._async.xclaim(
                self._stream, self._group, consumer, min_idle_ms, list(ids)
            ),
            recreate=True,
        )
        return [parse_lenient(i, f) for i, f in rows if f is not None]

    async def aclaim_entries(
        self, consumer: str, min_idle_ms: int, ids: Sequence[str]
    ) -> ClaimResult:
        """Atomically claim ids idle for ``min_idle_ms`` with their delivery counts.

        Ids whose data left the stream are acknowledged and returned as ``lost``;
        ids that another consumer claimed or acknowledged meanwhile are skipped.
        """
        if not ids:
            return ClaimResult([], [])
        args = [self._group, consumer, min_idle_ms, *ids]
        claimed, lost = await self._acall(
            "xclaim",
            lambda: self._claim(keys=[self._stream], args=args),  # type: ignore[arg-type]
            recreate=True,
        )
        entries = [RawEntry(_decode_id(i), _pairs(f), int(n)) for i, f, n in claimed]
        return ClaimResult(entries, [_decode_id(i) for i in lost])

    async def arenew(self, consumer: str, ids: Sequence[str]) -> list[str]:
        """Reset the idle time of ids ``consumer`` still owns (its lease).

        Uses XCLAIM ... JUSTID, which leaves the delivery count alone. Returns the
        ids renewed; an id missing from the result was taken over by another
        consumer.
        """
        return await self.atransfer(consumer, consumer, ids)

    async def atransfer(
        self, owner: str, new_owner: str, ids: Sequence[str]
    ) -> list[str]:
        """Hand the ids ``owner`` still owns to ``new_owner`` (JUSTID, atomic).

        The delivery count stays; the idle time restarts. Returns the ids moved.
        """
        if not ids:
            return []
        args = [self._group, owner, new_owner, *ids]
        moved = await self._acall(
            "xclaim",
            lambda: self._transfer(keys=[self._stream], args=args),
            recreate=True,
        )
        return [_decode_id(i) for i in moved]

    async def adead_letter(
        self,
        entry_id: str,
        fields: RawFields | None,
        dead_letter_stream: str,
        details: dict[str, str],
        max_len: int,
    ) -> str:
        """Move one entry to a dead-letter stream and acknowledge it, atomically.

        The dead-letter entry keeps the original fields (when the data still
        exists) and adds ``details`` (each key prefixed with ``dlq_``), plus the
        original stream, id and group.
        """
        dead: dict[Any, Any] = dict(fields or {})
        dead.update(
            {
                "dlq_stream": self._stream,
                "dlq_id": entry_id,
                "dlq_group": self._group,
                "dlq_at": str(time.time()),
            }
        )
        dead.update({f"dlq_{k}": v for k, v in details.items()})

        async def run() -> list[Any]:
            async with self._raw.pipeline(transaction=True) as pipe:
                pipe.xadd(dead_letter_stream, dead, maxlen=max_len, approximate=True)
                pipe.xack(self._stream, self._group, entry_id)
                return await pipe.execute()

        new_id, _ = await self._acall("dead letter", run)
        return _decode_id(new_id)

    # -- failures remembered between deliveries ------------------------------

    def _error_key(self, entry_id: str) -> str:
        return f"{self._stream}:lasterror:{self._group}:{entry_id}"

    async def aset_last_error(self, entry_id: str, error: str, ttl_s: float) -> None:
        """Remember the last error of an entry for ``ttl_s`` seconds."""
        key = self._error_key(entry_id)
        ttl_ms = max(int(ttl_s * 1000), 1)
        await self._acall("set", lambda: self._raw.set(key, error, px=ttl_ms))

    async def aget_last_error(self, entry_id: str) -> str | None:
        """Return the last error remembered for an entry, if any."""
        key = self._error_key(entry_id)
        value = await self._acall("get", lambda: self._raw.get(key))
        return None if value is None else _decode_id(value)

    # -- consumers and groups ------------------------------------------------

    async def adelete_idle_consumers(
        self, min_idle_ms: int, names: Sequence[str] = (), *, only: bool = False
    ) -> list[str]:
        """Remove consumers with no pending entries idle for ``min_idle_ms``.

        Args:
            min_idle_ms: how long a consumer must have been idle.
            names: consumers to consider (``only=True``) or to spare (``False``).
            only: see ``names``.

        Returns:
            The names removed. A consumer that owns pending entries is never
            removed, since removing it would drop those entries from the group.
        """
        args = [self._group, min_idle_ms, "only" if only else "except", *names]
        removed = await self._acall(
            "xgroup delconsumer",
            lambda: self._delete_idle(keys=[self._stream], args=args),
            recreate=True,
        )
        return [_decode_id(n) for n in removed]

    async def aconsumers(self) -> list[dict[str, Any]]:
        """List the group's consumers: ``name``, ``pending`` and ``idle`` (ms)."""
        rows = await self._acall(
            "xinfo consumers",
            lambda: self._async.xinfo_consumers(self._stream, self._group),
            recreate=True,
        )
        return [
            {"name": r["name"], "pending": int(r["pending"]), "idle": int(r["idle"])}
            for r in rows
        ]

    async def agroup_info(self) -> dict[str, Any] | None:
        """Return XINFO GROUPS for this group (``lag`` may be None), or None."""
        try:
            rows = await self._acall(
                "xinfo groups", lambda: self._async.xinfo_groups(self._stream)
            )
        except errors.TransportError as exc:
            if "no such key" in str(exc):
                return None
            raise
        for row in rows:
            if _decode_id(row["name"]) == self._group:
                return dict(row)
        return None

    # -- consumer-name leases --------------------------------------------------

    def lease_key(self, name: str) -> str:
        """The key of the lease on a consumer-name base in this group."""
        return f"{self._stream}:owner:{self._group}:{name}"

    async def aacquire_lease(self, name: str, token: str, ttl_ms: int) -> bool:
        """Take or extend the lease on ``name``; False when another holds it."""
        held = await self._acall(
            "lease",
            lambda: self._lease(keys=[self.lease_key(name)], args=[token, ttl_ms]),
        )
        return bool(held)

    async def arelease_lease(self, name: str, token: str) -> None:
        """Give the lease on ``name`` up, if ``token`` still holds it."""
        await self._acall(
            "lease",
            lambda: self._release(keys=[self.lease_key(name)], args=[token]),
        )

    async def aping(self) -> None:
        """Check that Redis answers; raise a ``TransportError`` if not."""
        await self._acall("ping", self._async.ping)

    # -- pending -------------------------------------------------------------

    def pending(self) -> dict[str, Any]:
        """Get information about pending messages (XPENDING summary).

        Returns:
            ``{"count", "min_id", "max_id", "consumers": {name: count}}``.
        """
        raw = self._call(
            "xpending",
            lambda: self._sync.xpending(self._stream, self._group),
            recreate=True,
        )
        return _pending_summary(raw)

    async def apending(self) -> dict[str, Any]:
        """Async version of ``pending()``."""
        raw = await self._acall(
            "xpending",
            lambda: self._async.xpending(self._stream, self._group),
            recreate=True,
        )
        return _pending_summary(raw)

    def pending_range(
        self,
        count: int,
        min_idle_ms: int | None = None,
        consumer: str | None = None,
        start: str = "-",
        end: str = "+",
    ) -> list[PendingEntry]:
        """List pending entries with owner, idle time and delivery count."""
        raw = self._call(
            "xpending",
            lambda: self._sync.xpending_range(
                self._stream, self._group, start, end, count, consumer, min_idle_ms
            ),
            recreate=True,
        )
        return _pending_entries(raw)

    async def apending_range(
        self,
        count: int,
        min_idle_ms: int | None = None,
        consumer: str | None = None,
        start: str = "-",
        end: str = "+",
    ) -> list[PendingEntry]:
        """Async version of ``pending_range()``."""
        raw = await self._acall(
            "xpending",
            lambda: self._raw.xpending_range(
                self._stream, self._group, start, end, count, consumer, min_idle_ms
            ),
            recreate=True,
        )
        return _pending_entries(raw)

    # -- stream ----------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Get stream information.

        Returns:
            ``{"length", "first_entry", "last_entry", "groups"}``; the entries are
            event dicts or None. A stream that does not exist reports zeros.
        """
        try:
            raw = self._call("xinfo", lambda: self._sync.xinfo_stream(self._stream))
        except errors.TransportError as exc:
            if "no such key" not in str(exc):
                raise
            raw = {}
        return _stream_info(raw)

    async def ainfo(self) -> dict[str, Any]:
        """Async version of ``info()``."""
        try:
            raw = await self._acall(
                "xinfo", lambda: self._async.xinfo_stream(self._stream)
            )
        except errors.TransportError as exc:
            if "no such key" not in str(exc):
                raise
            raw = {}
        return _stream_info(raw)

    async def alength(self, key: str | None = None) -> int:
        """Return the number of entries (XLEN) of ``key``, or of this stream."""
        name = self._stream if key is None else key
        return int(await self._acall("xlen", lambda: self._raw.xlen(name)))

    def delete(self) -> bool:
        """Delete the stream and all its data; True when it existed."""
        return bool(self._call("del", lambda: self._sync.delete(self._stream)))

    async def adelete(self) -> bool:
        """Async version of ``delete()``."""
        return bool(await self._acall("del", lambda: self._async.delete(self._stream)))

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
        async with aclosing(self.asubscribe_raw(last_id, block_ms)) as entries:
            async for entry_id, fields in entries:
                text = {
                    k.decode(errors="replace"): v.decode(errors="replace")
                    for k, v in fields.items()
                }
                yield parse_lenient(entry_id, text)

    # -- close -------------------------------------------------------------------

    def close(self) -> None:
        """Close the Redis connection (a shared pool stays open)."""
        if self._owns_pool:
            self._pool.close()

    async def aclose(self) -> None:
        """Close the async and sync connections (a shared pool stays open)."""
        if self._owns_pool:
            await self._pool.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisStreamTransport(stream_name={self._stream!r}, "
            f"consumer_group={self._group!r}, at={self._where!r})"
        )

    # -- operator commands (the `agentstream` CLI) -----------------------------
    # They create nothing: no stream, no group. Keys are arguments, so that one
    # transport can also inspect and edit its dead-letter stream.

    @classmethod
    def attach(
        cls,
        stream_name: str,
        *,
        consumer_group: str = "agents",
        max_len: int = 10000,
        pool: RedisConnectionPool,
    ) -> RedisStreamTransport:
        """Create a transport on ``pool`` without creating its group or stream."""
        self = cls.__new__(cls)
        self._setup(stream_name, pool.redis_url, consumer_group, max_len, pool)
        return self

    async def aexists(self, key: str | None = None) -> bool:
        """Return whether ``key`` (or this stream) exists."""
        name = self._stream if key is None else key
        return bool(await self._acall("exists", lambda: self._raw.exists(name)))

    async def aserver_time_ms(self) -> int:
        """Return the Redis server's clock (TIME) in Unix milliseconds."""
        seconds, micros = await self._acall("time", self._raw.time)
        return int(seconds) * 1000 + int(micros) // 1000

    async def apending_summary(self) -> dict[str, Any] | None:
        """Return the group's XPENDING summary, or None without stream or group.

        Unlike ``apending()`` it never recreates the group. Ids and consumer
        names are ``str`` (undecodable bytes replaced).
        """
        try:
            raw = await self._acall(
                "xpending", lambda: self._raw.xpending(self._stream, self._group)
            )
        except _NoGroup:
            return None
        summary = _pending_summary(raw)
        for key in ("min_id", "max_id"):
            if summary[key] is not None:
                summary[key] = _text(summary[key])
        summary["consumers"] = {
            _text(name): n for name, n in summary["consumers"].items()
        }
        return summary

    async def agroup_consumers(self) -> list[dict[str, Any]] | None:
        """List the group's consumers (``name``, ``pending``, ``idle`` in ms).

        Unlike ``aconsumers()`` it never recreates the group: None when the
        stream or the group does not exist.
        """
        try:
            rows = await self._acall(
                "xinfo consumers",
                lambda: self._raw.xinfo_consumers(self._stream, self._group),
            )
        except _NoGroup:
            return None
        except errors.TransportError as exc:
            if "no such key" in str(exc):
                return None
            raise
        return [
            {
                "name": _text(r["name"]),
                "pending": int(r["pending"]),
                "idle": int(r["idle"]),
            }
            for r in rows
        ]

    async def arange_raw(
        self,
        key: str | None = None,
        start: str = "-",
        end: str = "+",
        count: int | None = None,
    ) -> list[tuple[str, RawFields]]:
        """XRANGE of ``key`` (or this stream) with undecoded fields.

        ``start`` and ``end`` are inclusive unless prefixed with ``(``.
        """
        name = self._stream if key is None else key
        rows: Any = await self._acall(
            "xrange", lambda: self._raw.xrange(name, start, end, count)
        )
        return [(_decode_id(i), dict(f)) for i, f in rows]

    async def adelete_entries(self, key: str, ids: Sequence[str]) -> int:
        """Delete entries from ``key`` (XDEL); returns how many existed."""
        if not ids:
            return 0
        return int(await self._acall("xdel", lambda: self._raw.xdel(key, *ids)))

    async def amove_entries(
        self, source: str, moves: Sequence[tuple[str, str, RawFields]]
    ) -> list[str | None]:
        """Move entries between streams, each atomically (a Lua script).

        Args:
            source: the stream the entries leave (XDEL).
            moves: ``(entry_id, target_stream, fields)``: ``entry_id`` is deleted
                from ``source`` and, only if it was still there, ``fields`` are
                added to ``target_stream`` (XADD, no trimming).

        Returns:
            The new ids, in the order of ``moves``; None where the entry was
            already gone (another operator moved or deleted it first).
        """
        if not moves:
            return []

        async def run() -> list[Any]:
            async with self._raw.pipeline(transaction=False) as pipe:
                for entry_id, target, fields in moves:
                    args: list[Any] = [entry_id]
                    for name, value in fields.items():
                        args.extend((name, value))
                    await self._move(keys=[source, target], args=args, client=pipe)
                return await pipe.execute()

        results = await self._acall("xadd/xdel", run)
        return [None if new_id is None else _decode_id(new_id) for new_id in results]

    async def asubscribe_raw(
        self, last_id: str = "$", block_ms: int = 1000
    ) -> AsyncGenerator[tuple[str, RawFields], None]:
        """Like ``asubscribe()``, but yields undecoded ``(id, fields)`` pairs.

        It reads through the bytes connection, so it works on any pool, and an
        entry that is not UTF-8 reaches the caller as it is.
        """
        backoff = 0.1
        while last_id == "$":
            try:
                last_id = await self.alast_generated_id()
            except errors.ConnectionError:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        backoff = 0.1
        while True:
            try:
                with self._errors("xread"):
                    rows: Any = await self._raw.xread(
                        {self._stream: last_id}, count=100, block=self._block(block_ms)
                    )
            except errors.ConnectionError:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for entry_id, fields in rows[0][1] if rows else ():
                last_id = _decode_id(entry_id)
                yield last_id, dict(fields)

    async def alast_generated_id(self) -> str:
        """Return the stream's last generated id (``"0-0"`` if there is no stream).

        Reading after it (``asubscribe_raw(last_id)``) is reading from ``$``.
        """
        try:
            with self._errors("xinfo"):
                raw = await self._raw.xinfo_stream(self._stream)
        except errors.ConnectionError:
            raise
        except errors.TransportError as exc:
            if "no such key" not in str(exc):
                raise
            return "0-0"
        return _decode_id(raw["last-generated-id"])


def _time_left(deadline: float | None, start_id: str) -> bool:
    return start_id == ">" and deadline is not None and time.monotonic() < deadline


def _lenient_rows(rows: Any) -> list[dict[str, Any]]:
    if not rows:
        return []
    return [parse_lenient(i, f) for i, f in rows[0][1] if f]


def _pairs(flat: list[bytes]) -> RawFields:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _pending_summary(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "count": int(raw.get("pending") or 0),
        "min_id": raw.get("min"),
        "max_id": raw.get("max"),
        "consumers": {c["name"]: int(c["pending"]) for c in raw.get("consumers", [])},
    }


def _pending_entries(raw: list[dict[str, Any]]) -> list[PendingEntry]:
    return [
        PendingEntry(
            _decode_id(p["message_id"]),
            _decode_id(p["consumer"]),
            int(p["time_since_delivered"]),
            int(p["times_delivered"]),
        )
        for p in raw
    ]


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


def _text(value: bytes | str) -> str:
    """Decode for display: bytes that are not UTF-8 are replaced, not fatal."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
