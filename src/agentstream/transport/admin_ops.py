"""Transport operations of the ``agentstream`` operator command."""

from __future__ import annotations

from collections.abc import (
    Sequence,
)
from typing import Any

from agentstream import errors
from agentstream.transport.core import (
    NoGroup,
    RawFields,
    StreamCore,
    consumer_idle_ms,
    decode_id,
    pending_summary,
    to_text,
)

__all__ = ["AdminOps"]


class AdminOps(StreamCore):
    """The operator's stream operations; they create no stream or group."""

    # -- operator commands (the `agentstream` CLI) -----------------------------
    # They create nothing: no stream, no group. Keys are arguments, so that one
    # transport can also inspect and edit its dead-letter stream.

    async def aexists(self, key: str | None = None) -> bool:
        """Return whether ``key`` (or this stream) exists."""
        name = self.stream if key is None else key
        return bool(await self.acall("exists", lambda: self.raw.exists(name)))

    async def aserver_time_ms(self) -> int:
        """Return the Redis server's clock (TIME) in Unix milliseconds."""
        seconds, micros = await self.acall("time", self.raw.time)
        return int(seconds) * 1000 + int(micros) // 1000

    async def apending_summary(self) -> dict[str, Any] | None:
        """Return the group's XPENDING summary, or None without stream or group.

        Unlike ``apending()`` it never recreates the group. Ids and consumer
        names are ``str`` (undecodable bytes replaced).
        """
        try:
            raw = await self.acall(
                "xpending", lambda: self.raw.xpending(self.stream, self.group)
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

        ``idle`` as the reaper sees it (``consumer_idle_ms``).

        Unlike ``aconsumers()`` it never recreates the group: None when the
        stream or the group does not exist.
        """
        try:
            rows = await self.acall(
                "xinfo consumers",
                lambda: self.raw.xinfo_consumers(self.stream, self.group),
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
                "idle": consumer_idle_ms(r),
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
        name = self.stream if key is None else key
        rows: Any = await self.acall(
            "xrange", lambda: self.raw.xrange(name, start, end, count)
        )
        return [(decode_id(i), dict(f)) for i, f in rows]

    async def adelete_entries(self, key: str, ids: Sequence[str]) -> int:
        """Delete entries from ``key`` (XDEL); returns how many existed."""
        if not ids:
            return 0
        return int(await self.acall("xdel", lambda: self.raw.xdel(key, *ids)))

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
            async with self.raw.pipeline(transaction=False) as pipe:
                for entry_id, target, fields in moves:
                    args: list[Any] = [entry_id]
                    for name, value in fields.items():
                        args.extend((name, value))
                    await self._move(keys=[source, target], args=args, client=pipe)
                return await pipe.execute()

        results = await self.acall("xadd/xdel", run)
        return [None if new_id is None else decode_id(new_id) for new_id in results]
