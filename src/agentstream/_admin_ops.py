"""Transport operations of the ``agentstream`` operator command."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    Sequence,
)
from typing import Any, Self

import anyio

from agentstream import errors
from agentstream._transport_core import (
    NoGroup,
    RawFields,
    TransportCore,
    decode_id,
    pending_summary,
    to_text,
)
from agentstream.pool import RedisConnectionPool

__all__ = ["AdminOps"]


class AdminOps(TransportCore):
    """Inspection and dead-letter operations; they create no stream or group."""

    async def alength(self, key: str | None = None) -> int:
        """Return the number of entries (XLEN) of ``key``, or of this stream."""
        name = self._stream if key is None else key
        return int(await self._acall("xlen", lambda: self._raw.xlen(name)))

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
    ) -> Self:
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
        except NoGroup:
            return None
        summary = pending_summary(raw)
        for key in ("min_id", "max_id"):
            if summary[key] is not None:
                summary[key] = to_text(summary[key])
        summary["consumers"] = {
            to_text(name): n for name, n in summary["consumers"].items()
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
        except NoGroup:
            return None
        except errors.TransportError as exc:
            if "no such key" in str(exc):
                return None
            raise
        return [
            {
                "name": to_text(r["name"]),
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
        return [(decode_id(i), dict(f)) for i, f in rows]

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
        return [None if new_id is None else decode_id(new_id) for new_id in results]

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
                last_id = decode_id(entry_id)
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
        return decode_id(raw["last-generated-id"])
