"""Transport operations of the ``agentstream`` operator command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentstream import errors
from agentstream.transport import keys
from agentstream.transport.core import (
    NoGroup,
    PendingEntry,
    RawFields,
    StreamCore,
    decode_id,
    denied_command,
    pending_entries,
    to_text,
)

__all__ = ["AdminOps"]


class AdminOps(StreamCore):
    """The operator's stream operations; they create no stream or group."""

    # -- operator commands (the `agentstream` CLI) -----------------------------
    # They create nothing: no stream, no group. Keys are arguments, so that one
    # transport can also inspect and edit its dead-letter stream.

    async def astream_info(self) -> dict[str, Any] | None:
        """XINFO STREAM of this stream (``entries-added`` on Redis 7+), or None."""
        try:
            raw: Any = await self.acall(
                "xinfo stream", lambda: self.axinfo(self.raw, "XINFO STREAM")
            )
        except errors.ConnectionError:
            raise
        except errors.TransportError as exc:
            if "no such key" in str(exc):
                return None
            raise
        return {to_text(k): v for k, v in raw.items()}

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

    async def arevrange_raw(
        self,
        key: str | None = None,
        end: str = "+",
        start: str = "-",
        count: int | None = None,
    ) -> list[tuple[str, RawFields]]:
        """XREVRANGE of ``key`` (or this stream), newest first, fields undecoded."""
        name = self.stream if key is None else key
        rows: Any = await self.acall(
            "xrevrange", lambda: self.raw.xrevrange(name, end, start, count)
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

    # -- pending entries -------------------------------------------------------
    # None of these recreate a vanished stream or group: NoGroup is raised.

    async def apending_page(
        self,
        count: int,
        *,
        start: str = "-",
        end: str = "+",
        consumer: str | None = None,
        min_idle_ms: int | None = None,
    ) -> list[PendingEntry]:
        """One page of the pending entries list (XPENDING extended form).

        Raises:
            NoGroup: the stream or the group does not exist.
        """
        raw = await self.acall(
            "xpending",
            lambda: self.raw.xpending_range(
                self.stream, self.group, start, end, count, consumer, min_idle_ms
            ),
        )
        return pending_entries(raw)

    async def alast_errors(self, ids: Sequence[str]) -> list[str | None]:
        """The last error the worker recorded for each id (None where none is kept)."""
        if not ids:
            return []

        key = keys.errors_key(self.stream, self.group, cluster=self.cluster)
        values = await self.acall("hmget", lambda: self.raw.hmget(key, list(ids)))
        return [None if v is None else to_text(v) for v in values]

    async def aacknowledge(self, ids: Sequence[str]) -> int:
        """XACK ``ids``; returns how many were pending.

        Raises:
            NoGroup: the stream or the group does not exist.
        """
        if not ids:
            return 0
        return int(
            await self.acall(
                "xack", lambda: self.raw.xack(self.stream, self.group, *ids)
            )
        )

    async def ahand_over(
        self, ids: Sequence[str], consumer: str, idle_ms: int
    ) -> list[str]:
        """Give pending ``ids`` to ``consumer`` as if idle for ``idle_ms`` (XCLAIM).

        ``XCLAIM ... IDLE idle_ms JUSTID``: the delivery count stays; an id that
        is not pending is skipped. Returns the ids handed over.

        Raises:
            NoGroup: the stream or the group does not exist.
        """
        if not ids:
            return []
        rows: Any = await self.acall(
            "xclaim",
            lambda: self.raw.xclaim(
                self.stream, self.group, consumer, 0, list(ids),
                idle=idle_ms, justid=True,
            ),
        )  # fmt: skip
        return [decode_id(i) for i in rows]

    # -- consumers and the group -------------------------------------------------

    async def aconsumer_rows(self) -> list[dict[str, Any]] | None:
        """XINFO CONSUMERS: ``name``, ``pending``, ``idle_ms`` and ``inactive_ms``.

        ``inactive_ms`` (Redis 7.2+: time since the last successful read or
        claim) is None on older servers. None when the stream or group is missing.
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
                "idle_ms": int(r["idle"]),
                "inactive_ms": None
                if r.get("inactive") is None
                else int(r["inactive"]),
            }
            for r in rows
        ]

    async def aremove_empty_consumer(self, name: str) -> bool:
        """Remove consumer ``name`` if it owns no pending entry (atomic, Lua).

        Returns whether it was removed: never one that owns entries, since
        XGROUP DELCONSUMER would drop them from the pending entries list.
        """
        args: list[str | int] = [self.group, 0, "only", name]
        removed = await self.acall(
            "xgroup delconsumer",
            lambda: self._delete_idle(keys=[self.stream], args=args),
        )
        return bool(removed)

    async def aset_last_delivered(self, entry_id: str) -> None:
        """XGROUP SETID: the group's last-delivered id becomes ``entry_id``.

        ``$`` is the stream's last entry. Pending entries stay pending.

        Raises:
            NoGroup: the stream or the group does not exist.
        """
        await self.acall(
            "xgroup setid",
            lambda: self.raw.xgroup_setid(self.stream, self.group, entry_id),
        )

    # -- leases and pause --------------------------------------------------------

    async def aleases(self) -> list[tuple[str, int]]:
        """The group's consumer-name leases: ``(name base, ms left)``, sorted.

        SCAN over the keyspace for ``{stream}:owner:{group}:*``, then PTTL.
        """
        pattern = keys.lease_pattern(self.stream, self.group, cluster=self.cluster)
        prefix = len(keys.lease_key(self.stream, self.group, "", cluster=self.cluster))

        async def scan() -> list[bytes]:
            return [k async for k in self.raw.scan_iter(match=pattern, count=1000)]

        found = sorted(set(await self.acall("scan", scan)))
        names = [to_text(k)[prefix:] for k in found]
        ttls = await self.alease_ttls(names)
        return [(n, t) for n, t in zip(names, ttls, strict=True) if t is not None]

    async def alease_ttls(self, names: Sequence[str]) -> list[int | None]:
        """PTTL of each name base's lease, in ms; None where no lease is held."""
        if not names:
            return []

        async def run() -> list[Any]:
            async with self.raw.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.pttl(
                        keys.lease_key(
                            self.stream, self.group, name, cluster=self.cluster
                        )
                    )
                return await pipe.execute()

        # -2: no key; -1: no expiry (never set by the worker, but it is held).
        return [None if t == -2 else int(t) for t in await self.acall("pttl", run)]

    async def apause_state(self) -> str | None:
        """The pause note of this subscription (GET), or None while it runs."""
        key = keys.pause_key(self.stream, self.group, cluster=self.cluster)
        value = await self.acall("get", lambda: self.raw.get(key))
        return None if value is None else to_text(value)

    async def aset_pause(self, note: str | None) -> bool:
        """Pause (SET ``note``) or resume (DEL, ``note=None``) the subscription.

        Returns whether the state changed.
        """
        key = keys.pause_key(self.stream, self.group, cluster=self.cluster)
        if note is None:
            return bool(await self.acall("del", lambda: self.raw.delete(key)))
        return bool(await self.acall("set", lambda: self.raw.set(key, note, nx=True)))
