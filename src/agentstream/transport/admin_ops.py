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
    decode_id,
    denied_command,
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

    async def agroup_consumers(self) -> list[dict[str, Any]] | None:
        """List the group's consumers (``name``, ``pending``, ``idle`` in ms).

        Unlike ``aconsumers()`` it never recreates the group: None when the
        stream or the group does not exist.
        """
        try:
            rows = await self.acall(
                "xinfo consumers",
                lambda: self.axinfo(self.raw, "XINFO CONSUMERS", self.group),
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
        self, source: str, moves: Sequence[tuple[str, str | bytes, RawFields]]
    ) -> list[str | None | errors.TransportError]:
        """Move entries between streams, each atomically (a Lua script).

        Args:
            source: the stream the entries leave (XDEL).
            moves: ``(entry_id, target_stream, fields)``: ``fields`` are added to
                ``target_stream`` (XADD, no trimming) and, only once that
                succeeded, ``entry_id`` is deleted from ``source``.

        Returns:
            Per move, in order: the new id; None where the entry was already gone
            (another operator moved or deleted it first); or a
            ``TransportError`` naming why the target refused it (it holds
            another type, OOM, ...), the entry then left in ``source``.
        """
        if not moves:
            return []

        def arguments(entry_id: str, fields: RawFields) -> list[Any]:
            args: list[Any] = [entry_id]
            for name, value in fields.items():
                args.extend((name, value))
            return args

        async def run() -> list[Any]:
            if self.cluster:
                # redis-py's cluster pipeline does not load scripts first (a
                # NOSCRIPT would fail the batch): one call per entry instead.
                return [
                    await self._move(keys=[source, target], args=arguments(i, f))
                    for i, target, f in moves
                ]
            pipeline: Any = self.raw.pipeline(transaction=False)
            async with pipeline as pipe:
                for entry_id, target, fields in moves:
                    args = arguments(entry_id, fields)
                    await self._move(keys=[source, target], args=args, client=pipe)
                return list(await pipe.execute())

        results = await self.acall("move", run)
        outcomes: list[str | None | errors.TransportError] = []
        for (_, target, _), (status, *rest) in zip(moves, results, strict=True):
            if status == 1:
                outcomes.append(decode_id(rest[0]))
            elif status == 0:
                outcomes.append(None)
            else:
                text = self._scrub(to_text(rest[0]))
                denied = denied_command(text)
                if denied is not None:  # the ACL: every other move fails alike
                    command = denied or "xadd"
                    msg = f"Redis at {self.location} denied {command}: {text}"
                    raise errors.PermissionDenied(msg, "move", command)
                msg = (
                    f"Redis at {self.location} refused the XADD to {to_text(target)!r}"
                )
                outcomes.append(errors.TransportError(f"{msg}: {text}", "xadd"))
        return outcomes
