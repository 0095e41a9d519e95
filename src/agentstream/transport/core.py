"""The core every stream operation stands on: connections, error translation,
groups, and the few commands the seed API, the worker and the operator share."""

from __future__ import annotations

import ast
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, Self, TypeVar

import anyio
import redis.exceptions as rex

from agentstream import errors
from agentstream.event import encode_fields
from agentstream.transport import scripts as _scripts
from agentstream.transport.keys import derived_key
from agentstream.transport.pool import (
    CallObserver,
    RedisConnectionPool,
    closed_transport,
)
from agentstream.transport.retention import (
    Retention,
    ServerFeatures,
    ackdel_args,
    acked_count,
    features_from_command_info,
    is_unknown_command,
)

__all__ = [
    "CallObserver",
    "ClaimResult",
    "NoGroup",
    "PendingEntry",
    "RawEntry",
    "RawFields",
    "StreamCore",
    "consumer_idle_ms",
    "decode_id",
    "denied_command",
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


# What Redis answers a client that has not authenticated: "NOAUTH
# Authentication required." to a command, "NOAUTH HELLO must be called with the
# client already authenticated ..." to redis-py's HELLO (RESP3).
_NEEDS_AUTH = ("uthentication required", "already authenticated")


def _needs_auth(text: str) -> bool:
    return text.startswith("NOAUTH") or any(s in text for s in _NEEDS_AUTH)


class NoGroup(errors.TransportError):
    """The stream or the group vanished under a command (NOGROUP)."""


# redis-py puts the command and its arguments (event data included) in a
# pipeline error: "Command # 2 (XADD s * data ...) of pipeline caused error: ".
_PIPELINE_ARGS_RE = re.compile(r"Command # (\d+) \(.*\) of pipeline", re.DOTALL)
# Error codes of a server that answers but will not run the command.
_REFUSALS = ("OOM", "READONLY", "MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN")
_REFUSAL_RE = re.compile(
    r"(?:^|caused error: \(?['\"]?)(" + "|".join(_REFUSALS) + r")\b"
)


def scrub_command_args(text: str) -> str:
    """``text`` without the command arguments redis-py copies into pipeline errors."""
    return _PIPELINE_ARGS_RE.sub(r"Command # \1 of pipeline", text)


# A pipeline error once scrubbed: "Command # 1 of pipeline caused error: " and
# Redis's reply, as a tuple from redis-py's asyncio client ("('reply',)").
_PIPELINE_REPLY_RE = re.compile(
    r"Command # \d+ of pipeline caused error: (.*)", re.DOTALL
)


def pipeline_reply(text: str) -> str:
    """Redis's own reply in a scrubbed pipeline error; ``text`` if it is none."""
    match = _PIPELINE_REPLY_RE.fullmatch(text)
    if match is None:
        return text
    reply = match.group(1)
    with suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        value = ast.literal_eval(reply)
        if isinstance(value, tuple) and value and isinstance(value[0], str):
            return value[0]
    return reply


def refusal_code(text: str, exc: Exception | None = None) -> str | None:
    """The refusal code (``"OOM"``, ``"READONLY"``...) of an error reply.

    redis-py strips the code off the replies it has a class for.
    """
    if isinstance(exc, rex.OutOfMemoryError):
        return "OOM"
    if isinstance(exc, rex.ReadOnlyError):
        return "READONLY"
    match = _REFUSAL_RE.search(text)
    return None if match is None else match.group(1)


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


# How Redis words an ACL refusal: "NOPERM this user has no permissions to run
# the 'xdel' command" at top level; the scripts' prelude words refusals inside a
# script the same way (see transport.scripts).
_DENIED_RE = re.compile(
    r"permissions to (?:run the|access one of the keys used as arguments of the)"
    r" '([^']+)' command"
)
_ACL_MARKS = (
    "NOPERM",
    "can't run this command",
    "can't access at least one",
    "ACL failure in script",  # Redis 7.2+ and Valkey, inside a script
)


def denied_command(text: str, exc: Exception | None = None) -> str | None:
    """The command an ACL refusal names: ``"xdel"``, ``"xinfo|groups"``...

    Returns:
        None when ``text`` is no ACL refusal; ``""`` when it is one that names no
        command (a key the user may not access, from Redis 7.2 on).
    """
    match = _DENIED_RE.search(text)
    if match is not None:
        return match.group(1)
    if isinstance(exc, rex.NoPermissionError) or any(m in text for m in _ACL_MARKS):
        return ""
    return None


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
        self._where = self._pool.location
        self.cluster = self._pool.cluster
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
        self._acquire_partition = self.raw.register_script(_scripts.ACQUIRE_PARTITION)
        self._renew_partition = self.raw.register_script(_scripts.RENEW_PARTITION)
        self._members = self.raw.register_script(_scripts.MEMBERS)
        self._dead_letter = self.raw.register_script(_scripts.DEAD_LETTER)
        self._prune_errors = self.raw.register_script(_scripts.PRUNE_ERROR_RECORDS)
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
        text = scrub_command_args(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def translated(self, operation: str) -> Iterator[None]:
        try:
            yield
        except rex.AuthenticationError as exc:
            msg = self._auth_message(str(exc))
            raise errors.AuthenticationError(self._scrub(msg), operation) from None
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            msg = f"cannot reach Redis at {self._where} ({operation}): {exc}"
            raise errors.ConnectionError(self._scrub(msg), operation) from None
        except rex.ResponseError as exc:  # NoPermissionError among them
            text = self._scrub(str(exc))
            denied = denied_command(text, exc)
            if denied is not None:
                command = denied or operation
                # In Redis's words, also from a pipeline (the command is named)
                reply = pipeline_reply(text)
                msg = f"Redis at {self._where} denied {command}: {reply}"
                raise errors.PermissionDenied(msg, operation, command) from None
            code = refusal_code(text, exc)
            if code is not None:
                msg = f"Redis at {self._where} refused {operation} ({code}): {text}"
                raise errors.Refused(msg, operation, code) from None
            if "NOGROUP" in text:  # pipelines prefix the command's position
                raise NoGroup(text, operation) from None
            if text.startswith("WRONGPASS") or _needs_auth(text):
                msg = self._auth_message(text)
                raise errors.AuthenticationError(self._scrub(msg), operation) from None
            msg = f"Redis at {self._where} rejected {operation}: {text}"
            raise errors.TransportError(self._scrub(msg), operation) from None
        except rex.RedisError as exc:
            msg = f"Redis error at {self._where} ({operation}): {exc}"
            raise errors.TransportError(self._scrub(msg), operation) from None
        except RuntimeError as exc:
            # Cluster connections are redis-py's own: uvloop's word for a reset
            # connection reaches us unconverted (see closed_transport).
            if not closed_transport(exc):
                raise
            msg = f"cannot reach Redis at {self._where} ({operation}): {exc}"
            raise errors.ConnectionError(self._scrub(msg), operation) from None

    def _auth_message(self, text: str) -> str:
        if not self._secrets and _needs_auth(text):
            # Redis 6+ answers HELLO (or any command) this way without AUTH.
            return (
                f"Redis at {self._where} requires a password and none was given: "
                "set redis.password_file (AGENTSTREAM_REDIS__PASSWORD_FILE), "
                "redis.password, or a password in redis.url"
            )
        return f"Redis at {self._where} refused the credentials: {text}"

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
        """Run ``fn`` with errors translated; tell the pool's observer how it went."""
        observer = self._pool.observer
        if observer is None:
            return await self._acall(operation, fn, recreate)
        try:
            result = await self._acall(operation, fn, recreate)
        except (errors.ConnectionError, errors.Refused) as exc:
            observer.failed(exc)
            raise
        except errors.TransportError:
            observer.answered()
            raise
        observer.answered()
        return result

    async def _acall(
        self, operation: str, fn: Callable[[], Awaitable[T]], recreate: bool
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
        """Create the consumer group at id 0 (and the stream) when missing.

        An existing group needs no write (XINFO GROUPS first), so that a server
        refusing writes (``maxmemory``, a read-only replica) still lets a worker
        start on it.
        """
        if self._group_exists(self.call("xinfo groups", self._sync_groups)):
            return
        try:
            with self.translated("xgroup create"):
                self.sync.xgroup_create(self.stream, self.group, "0", mkstream=True)
        except errors.TransportError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def aensure_group(self) -> None:
        """Async version of ``ensure_group()``."""
        with self.translated("xinfo groups"):
            rows = await self._agroups()
        if self._group_exists(rows):
            return
        try:
            with self.translated("xgroup create"):
                await self.raw.xgroup_create(
                    self.stream, self.group, "0", mkstream=True
                )
        except errors.TransportError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _sync_groups(self) -> Any:
        try:
            return self.sync.xinfo_groups(self.stream)
        except rex.ResponseError as exc:
            if "no such key" in str(exc):
                return []
            raise

    async def _agroups(self) -> Any:
        try:
            return await self.raw.xinfo_groups(self.stream)
        except rex.ResponseError as exc:
            if "no such key" in str(exc):
                return []
            raise

    def _group_exists(self, rows: Any) -> bool:
        return any(decode_id(row["name"]) == self.group for row in rows)

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

    async def axinfo(self, client: Any, command: str, *args: Any) -> Any:
        """Run ``command`` (``"XINFO GROUPS"``, ...) on this stream.

        On a cluster it goes straight to the node of the stream's slot: redis-py's
        cluster client does not always find the key of an XINFO subcommand
        ("No way to dispatch this command ... Missing key").
        """
        if not self.cluster:
            return await client.execute_command(command, self.stream, *args)
        await client.initialize()
        node = client.get_node_from_key(self.stream)
        return await client.execute_command(
            command, self.stream, *args, target_nodes=node
        )

    def derived_key(self, suffix: str) -> str:
        """A key of this stream, in its cluster slot (see ``transport.keys``)."""
        return derived_key(self.stream, suffix, cluster=self.cluster)

    def _trim_args(self) -> dict[str, Any]:
        # "processed" retention never trims on publish: acknowledgements and the
        # worker's trimmer remove what every group has handled.
        if self.retention == "length":
            return {"maxlen": self.max_len, "approximate": True}
        return {}

    def publish_fields(self, fields: dict[Any, Any]) -> str:
        """XADD ``fields`` (approximate MAXLEN in ``"length"`` retention, no
        trimming in ``"processed"``), then WAIT if the pool asks to."""
        wait = self._pool.wait_replicas
        xadd = self._trim_args()
        if not wait:
            return decode_id(
                self.call("xadd", lambda: self.sync.xadd(self.stream, fields, **xadd))
            )

        def run() -> list[Any]:
            client: Any = self.sync
            if self.cluster:  # XADD and WAIT on one connection to the slot's node
                client = client.get_node_from_key(self.stream).redis_connection
            try:
                with client.pipeline(transaction=False) as pipe:
                    pipe.xadd(self.stream, fields, **xadd)
                    pipe.wait(wait, self._pool.wait_timeout_ms)
                    return list(pipe.execute())
            except (rex.ConnectionError, rex.TimeoutError, rex.ResponseError):
                if self.cluster:  # the node failed or lost the slot: relearn
                    with suppress(rex.RedisError, OSError):
                        self._pool.refresh_topology()
                raise

        entry_id, replicas = self.call("xadd", run)
        return self._replicated(decode_id(entry_id), int(replicas))

    async def apublish_fields(self, fields: dict[Any, Any]) -> str:
        """Async version of ``publish_fields()``."""
        wait = self._pool.wait_replicas
        xadd = self._trim_args()
        if not wait:
            return decode_id(
                await self.acall(
                    "xadd", lambda: self.aio.xadd(self.stream, fields, **xadd)
                )
            )

        async def run() -> list[Any]:
            client: Any = self.aio
            if self.cluster:
                client = await self._pool.anode_client(self.stream)
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd(self.stream, fields, **xadd)
                pipe.wait(wait, self._pool.wait_timeout_ms)
                return list(await pipe.execute())

        try:
            with self.translated("xadd"):
                entry_id, replicas = await run()
        except errors.TransportError as exc:
            # Our node client follows no redirection: after a resharding or a
            # failover, learn the slot map again (and retry a MOVED once).
            if not self.cluster:
                raise
            with suppress(rex.RedisError, OSError):
                await self._pool.arefresh_topology()
            if "MOVED" not in str(exc):
                raise
            with self.translated("xadd"):
                entry_id, replicas = await run()
        return self._replicated(decode_id(entry_id), int(replicas))

    def _replicated(self, entry_id: str, replicas: int) -> str:
        wanted = self._pool.wait_replicas
        if replicas < wanted:
            raise errors.ReplicationTimeout(
                f"entry {entry_id} of {self.stream} reached {replicas} of "
                f"{wanted} replicas within {self._pool.wait_timeout_ms} ms "
                f"(WAIT at {self._where}); a failover now could lose it",
                entry_id,
                replicas,
            )
        return entry_id

    async def apublish(
        self,
        event_type: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Publish an event (XADD with approximate MAXLEN); returns the new id.

        With the pool's ``wait_replicas`` above 0, returns once that many
        replicas have it (WAIT), else raises ``ReplicationTimeout``.
        In ``"processed"`` retention it does not trim at all.
        """
        fields: dict[Any, Any] = encode_fields(event_type, data, metadata)
        return await self.apublish_fields(fields)

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
            base: Any = self.sync
            if self.cluster:  # the node of the stream's slot answers for it
                base = base.get_node_from_key(self.stream).redis_connection
            client = type(base)(connection_pool=base.connection_pool)
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
                "xinfo groups", lambda: self.axinfo(self.aio, "XINFO GROUPS")
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

    async def afirst_after(self, entry_id: str) -> str | None:
        """The id of the first entry after ``entry_id`` (XRANGE, exclusive), or None."""
        rows: Any = await self.acall(
            "xrange",
            lambda: self.raw.xrange(self.stream, min=f"({entry_id}", max="+", count=1),
        )
        return decode_id(rows[0][0]) if rows else None

    async def arecent_types(self, count: int) -> dict[str, int]:
        """Event types among the stream's last ``count`` entries (XREVRANGE), counted."""
        rows: Any = await self.acall(
            "xrevrange", lambda: self.raw.xrevrange(self.stream, count=count)
        )
        types: dict[str, int] = {}
        for _, fields in rows:
            raw_type = fields.get(b"type", fields.get("type"))
            name = "(no type)" if raw_type is None else to_text(raw_type)
            types[name] = types.get(name, 0) + 1
        return types

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
                raw = await self.axinfo(self.raw, "XINFO STREAM")
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
            to_text(p["consumer"]),
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
