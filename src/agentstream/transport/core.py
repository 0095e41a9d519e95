"""The core every stream operation stands on: connections, error translation,
groups, and the few commands the seed API, the worker and the operator share."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import anyio
import redis.exceptions as rex

from agentstream import errors
from agentstream.event import encode_fields
from agentstream.transport import scripts as _scripts
from agentstream.transport.pool import RedisConnectionPool
from agentstream.transport.retention import (
    Retention,
    ServerFeatures,
    ackdel_args,
    acked_count,
    features_from_command_info,
    is_unknown_command,
    xadd_args,
)

__all__ = [
    "ClaimResult",
    "NoGroup",
    "PendingEntry",
    "RawEntry",
    "RawFields",
    "StreamCore",
    "consumer_idle_ms",
    "decode_id",
    "pairs_to_fields",
    "pending_entries",
    "pending_summary",
    "send",
    "to_text",
]

T = TypeVar("T")

#: A stream entry's fields as the worker reads them: undecoded.
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


class NoGroup(errors.TransportError):
    """The stream or the group vanished under a command (NOGROUP)."""


def _location(url: str) -> str:
    """Describe where a URL points without any credentials in it."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def consumer_idle_ms(row: dict[Any, Any]) -> int:
    """A consumer's idle time from its ``XINFO CONSUMERS`` row, in ms.

    Where the reply has ``inactive`` (Redis 7.2+, Valkey 7.2+): the time since
    the consumer's last successful read or claim, since ``idle`` there counts
    any attempt, even a read that returned nothing. ``inactive`` is -1 for a
    consumer that never succeeded: then ``idle``. Redis 7.0 has ``idle`` only,
    the time since its last read or claim.
    """
    inactive = row.get("inactive", row.get(b"inactive"))
    if inactive is not None and int(inactive) >= 0:
        return int(inactive)
    return int(row.get("idle", row.get(b"idle", 0)))


def send(client: Any, args: Sequence[Any]) -> Any:
    """Send one command (name first) through a redis-py client or pipeline.

    For commands and options redis-py 5 has no method for (XACKDEL, ACKED).
    """
    return client.execute_command(*args)


def decode_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamCore:
    """One stream and one consumer group on a ``RedisConnectionPool``.

    Internal: ``RedisStreamTransport`` holds one, and so do the worker
    (``WorkerOps``) and the operator commands (``AdminOps``). Constructing it
    sends no command; ``ensure_group()`` / ``aensure_group()`` create the group.
    """

    def __init__(
        self,
        stream_name: str,
        redis_url: str = "redis://localhost:6379",
        consumer_group: str = "agents",
        max_len: int = 10000,
        pool: RedisConnectionPool | None = None,
    ) -> None:
        if not stream_name:
            raise ValueError("stream_name must not be empty")
        self.stream = stream_name
        self.group = consumer_group
        self.max_len = max_len
        self._owns_pool = pool is None
        self._pool = pool if pool is not None else RedisConnectionPool(redis_url)
        self._where = _location(self._pool.redis_url)
        self._secrets = self._pool.secrets
        self.sync = self._pool.get_sync_client()
        self.aio = self._pool.get_async_client()
        self.raw = self._pool.get_raw_async_client()
        timeout = self._pool.socket_timeout_s
        # Longest BLOCK that still leaves the socket timeout room for the reply.
        self._max_block_ms = None if timeout is None else max(int(timeout * 500), 1)
        self._claim = self.raw.register_script(_scripts.CLAIM)
        self._transfer = self.raw.register_script(_scripts.TRANSFER)
        self._lease = self.raw.register_script(_scripts.LEASE)
        self._release = self.raw.register_script(_scripts.RELEASE)
        self._move = self.raw.register_script(_scripts.MOVE)
        self._delete_idle = self.raw.register_script(_scripts.DELETE_IDLE_CONSUMERS)
        self._trim = self.raw.register_script(_scripts.TRIM)
        #: ``"length"`` (the seed's trimming on publish) or ``"processed"``.
        self.retention: Retention = "length"
        self._features: ServerFeatures | None = None

    @classmethod
    def attach(
        cls,
        stream_name: str,
        *,
        consumer_group: str = "agents",
        max_len: int = 10000,
        pool: RedisConnectionPool,
    ) -> Self:
        """Operate on ``stream_name`` through ``pool``; creates no stream or group."""
        return cls(stream_name, pool.redis_url, consumer_group, max_len, pool)

    @classmethod
    async def aopen(
        cls,
        stream_name: str,
        *,
        consumer_group: str = "agents",
        max_len: int = 10000,
        pool: RedisConnectionPool,
    ) -> Self:
        """Like ``attach()``, then create the group (and stream) when missing."""
        self = cls.attach(
            stream_name, consumer_group=consumer_group, max_len=max_len, pool=pool
        )
        await self.aensure_group()
        return self

    @property
    def stream_name(self) -> str:
        """Name of the Redis Stream."""
        return self.stream

    @property
    def consumer_group(self) -> str:
        """Consumer group name."""
        return self.group

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
    def translated(self, operation: str) -> Iterator[None]:
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
                raise NoGroup(text, operation) from None
            if "can't run this command" in text or "ACL failure in script" in text:
                # A command inside a Lua script refused by the ACL. Redis 7.0
                # does not say which one ("can't run this command"); Redis
                # 7.2+ and Valkey do ("ACL failure in script: ... the 'set'
                # command"). Name all that the script runs, and keep the text.
                commands = ", ".join(
                    f"'{c}'" for c in _scripts.COMMANDS.get(operation, ())
                )
                msg = (
                    f"Redis at {self._where} denied {operation}: the user may not "
                    f"run a command of its script ({commands}): {text}"
                )
                raise errors.PermissionDenied(self._scrub(msg), operation) from None
            if "NOPERM" in text:
                msg = f"Redis at {self._where} denied {operation}: {text}"
                raise errors.PermissionDenied(self._scrub(msg), operation) from None
            if text.startswith(("WRONGPASS", "NOAUTH")):
                msg = f"Redis at {self._where} refused the credentials: {text}"
                raise errors.AuthenticationError(self._scrub(msg), operation) from None
            msg = f"Redis at {self._where} rejected {operation}: {text}"
            raise errors.TransportError(self._scrub(msg), operation) from None
        except rex.RedisError as exc:
            msg = f"Redis error at {self._where} ({operation}): {exc}"
            raise errors.TransportError(self._scrub(msg), operation) from None

    def call(self, operation: str, fn: Callable[[], T], recreate: bool = False) -> T:
        try:
            with self.translated(operation):
                return fn()
        except NoGroup:
            if not recreate:
                raise
        self.ensure_group()
        with self.translated(operation):
            return fn()

    async def acall(
        self, operation: str, fn: Callable[[], Awaitable[T]], recreate: bool = False
    ) -> T:
        try:
            with self.translated(operation):
                return await fn()
        except NoGroup:
            if not recreate:
                raise
        await self.aensure_group()
        with self.translated(operation):
            return await fn()

    # -- group ---------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group at id 0 (and the stream) when missing."""
        try:
            with self.translated("xgroup create"):
                self.sync.xgroup_create(self.stream, self.group, "0", mkstream=True)
        except errors.TransportError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def aensure_group(self) -> None:
        """Async version of ``ensure_group()``."""
        try:
            with self.translated("xgroup create"):
                await self.raw.xgroup_create(
                    self.stream, self.group, "0", mkstream=True
                )
        except errors.TransportError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def block(self, block_ms: int | None) -> int | None:
        if block_ms is None or self._max_block_ms is None:
            return block_ms
        if block_ms == 0:  # forever: wait in slices the socket timeout allows
            return self._max_block_ms
        return min(block_ms, self._max_block_ms)

    def deadline(self, block_ms: int | None) -> float | None:
        if block_ms is None:
            return None
        if block_ms == 0:
            return float("inf")
        return time.monotonic() + block_ms / 1000

    # -- commands the seed API, the worker and the operator share ------------

    async def apublish(
        self,
        event_type: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Publish an event (XADD with approximate MAXLEN); returns the new id.

        In ``"processed"`` retention it does not trim at all.
        """
        fields: dict[Any, Any] = encode_fields(event_type, data, metadata)
        if self.retention == "length":
            return decode_id(
                await self.acall(
                    "xadd",
                    lambda: self.aio.xadd(
                        self.stream, fields, maxlen=self.max_len, approximate=True
                    ),
                )
            )
        args = xadd_args(self.stream, fields, self.retention, self.max_len)
        return decode_id(await self.acall("xadd", partial(send, self.aio, args)))

    def publish_sync(self, fields: dict[Any, Any]) -> str:
        """Blocking XADD of encoded ``fields`` under this stream's retention."""
        args = xadd_args(self.stream, fields, self.retention, self.max_len)
        return decode_id(self.call("xadd", partial(send, self.sync, args)))

    # -- server features -------------------------------------------------------

    async def afeatures(self) -> ServerFeatures:
        """The server's stream abilities (``COMMAND INFO``), detected once.

        A user whose ACL denies ``COMMAND INFO`` gets the commands every server
        knows.
        """
        if self._features is None:
            await anyio.to_thread.run_sync(self.features)
        assert self._features is not None
        return self._features

    def features(self) -> ServerFeatures:
        """Blocking ``afeatures()``."""
        if self._features is None:
            # redis-py's parser of COMMAND replies fails on the nil an unknown
            # command gets: read the reply as it comes, on the same pool.
            client = type(self.sync)(connection_pool=self.sync.connection_pool)
            client.set_response_callback("COMMAND", lambda reply, **_: reply)
            args = ("COMMAND", "INFO", "XACKDEL")
            try:
                reply = self.call("command info", partial(send, client, args))
            except errors.PermissionDenied:
                reply = None
            self._features = features_from_command_info(reply)
        return self._features

    def feature_lost(self, exc: BaseException) -> bool:
        """After a command failed: True (and forget the feature) when the server
        no longer knows it (a failover to an older server); the caller retries."""
        if not is_unknown_command(exc):
            return False
        self._features = ServerFeatures(ackdel=False)
        return True

    async def adeletes_on_ack(self) -> bool:
        """Whether acknowledgements also delete what every group acknowledged."""
        return self.retention == "processed" and (await self.afeatures()).ackdel

    async def amaxmemory_policy(self) -> str:
        """The server's ``maxmemory-policy`` (from ``INFO memory``, which needs no
        ``CONFIG`` permission); anything but ``noeviction`` may evict streams."""
        info = await self.acall("info", lambda: self.aio.info("memory"))
        return to_text(info.get("maxmemory_policy", "unknown"))

    async def aack(self, ids: Sequence[str | bytes]) -> int:
        """Acknowledge ids (XACK); returns how many were pending.

        In ``"processed"`` retention on Redis 8.2+ this is ``XACKDEL ... ACKED``,
        which also deletes the entries every group has acknowledged.
        """
        if not ids:
            return 0
        if await self.adeletes_on_ack():
            args = ackdel_args(self.stream, self.group, ids)
            try:
                reply = await self.acall(
                    "xackdel",
                    lambda: send(self.raw, args),
                    recreate=True,
                )
                return acked_count(reply)
            except errors.TransportError as exc:
                if not self.feature_lost(exc):
                    raise
        return int(
            await self.acall(
                "xack",
                lambda: self.raw.xack(self.stream, self.group, *ids),
                recreate=True,
            )
        )

    async def apending(self) -> dict[str, Any]:
        """XPENDING summary: ``{"count", "min_id", "max_id", "consumers"}``."""
        raw = await self.acall(
            "xpending",
            lambda: self.aio.xpending(self.stream, self.group),
            recreate=True,
        )
        return pending_summary(raw)

    async def apending_range(
        self,
        count: int,
        min_idle_ms: int | None = None,
        consumer: str | None = None,
        start: str = "-",
        end: str = "+",
    ) -> list[PendingEntry]:
        """Pending entries (XPENDING extended form) with owner, idle, count."""
        raw = await self.acall(
            "xpending",
            lambda: self.raw.xpending_range(
                self.stream, self.group, start, end, count, consumer, min_idle_ms
            ),
            recreate=True,
        )
        return pending_entries(raw)

    async def agroup_info(self) -> dict[str, Any] | None:
        """Return XINFO GROUPS for this group (``lag`` may be None), or None."""
        try:
            rows = await self.acall(
                "xinfo groups", lambda: self.aio.xinfo_groups(self.stream)
            )
        except errors.TransportError as exc:
            if "no such key" in str(exc):
                return None
            raise
        for row in rows:
            if decode_id(row["name"]) == self.group:
                return dict(row)
        return None

    async def alength(self, key: str | None = None) -> int:
        """Return the number of entries (XLEN) of ``key``, or of this stream."""
        name = self.stream if key is None else key
        return int(await self.acall("xlen", lambda: self.raw.xlen(name)))

    async def aping(self) -> None:
        """Check that Redis answers; raise a ``TransportError`` if not."""
        await self.acall("ping", self.aio.ping)

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
                with self.translated("xread"):
                    rows: Any = await self.raw.xread(
                        {self.stream: last_id}, count=100, block=self.block(block_ms)
                    )
            except errors.ConnectionError:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for entry_id, fields in rows[0][1] if rows else ():
                last_id = decode_id(entry_id)
                yield last_id, dict(fields)

    async def alast_generated_id(self) -> str:
        """Return the stream's last generated id (``"0-0"`` if there is no stream).

        Reading after it (``asubscribe_raw(last_id)``) is reading from ``$``.
        """
        try:
            with self.translated("xinfo"):
                raw = await self.raw.xinfo_stream(self.stream)
        except errors.ConnectionError:
            raise
        except errors.TransportError as exc:
            if "no such key" not in str(exc):
                raise
            return "0-0"
        return decode_id(raw["last-generated-id"])

    def close(self) -> None:
        """Close the pool's connections, unless the pool was given (shared)."""
        if self._owns_pool:
            self._pool.close()

    async def aclose(self) -> None:
        """Async version of ``close()``."""
        if self._owns_pool:
            await self._pool.aclose()


def pending_entries(raw: list[dict[str, Any]]) -> list[PendingEntry]:
    return [
        PendingEntry(
            decode_id(p["message_id"]),
            decode_id(p["consumer"]),
            int(p["time_since_delivered"]),
            int(p["times_delivered"]),
        )
        for p in raw
    ]


def pairs_to_fields(flat: list[bytes]) -> RawFields:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def pending_summary(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "count": int(raw.get("pending") or 0),
        "min_id": raw.get("min"),
        "max_id": raw.get("max"),
        "consumers": {c["name"]: int(c["pending"]) for c in raw.get("consumers", [])},
    }


def to_text(value: bytes | str) -> str:
    """Decode for display: bytes that are not UTF-8 are replaced, not fatal."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
