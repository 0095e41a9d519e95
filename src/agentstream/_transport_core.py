"""The core of a stream transport: connections, error translation, groups."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.exceptions as rex

from agentstream import _scripts, errors
from agentstream.pool import RedisConnectionPool

__all__ = [
    "ClaimResult",
    "NoGroup",
    "PendingEntry",
    "RawEntry",
    "RawFields",
    "TransportCore",
    "decode_id",
    "pairs_to_fields",
    "pending_summary",
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


def decode_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class TransportCore:
    """What every part of ``RedisStreamTransport`` stands on."""

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
                raise NoGroup(text, operation) from None
            if "can't run this command" in text:
                # A command inside a Lua script refused by the ACL: Redis does
                # not say which one, so name all that the script runs.
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

    def _call(self, operation: str, fn: Callable[[], T], recreate: bool = False) -> T:
        try:
            with self._errors(operation):
                return fn()
        except NoGroup:
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
        except NoGroup:
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

    def _block(self, block_ms: int | None) -> int | None:
        if block_ms is None or self._max_block_ms is None:
            return block_ms
        if block_ms == 0:  # forever: wait in slices the socket timeout allows
            return self._max_block_ms
        return min(block_ms, self._max_block_ms)

    def _deadline(self, block_ms: int | None) -> float | None:
        if block_ms is None:
            return None
        if block_ms == 0:
            return float("inf")
        return time.monotonic() + block_ms / 1000


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
