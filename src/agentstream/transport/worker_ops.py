"""Transport operations of the worker: hot-path reads, claims, leases."""

from __future__ import annotations

import time
from collections.abc import (
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

from agentstream import errors
from agentstream.transport.core import (
    ClaimResult,
    RawEntry,
    RawFields,
    StreamCore,
    consumer_idle_ms,
    decode_id,
    pairs_to_fields,
    send,
)
from agentstream.transport.retention import ackdel_args

__all__ = ["Dropped", "TrimResult", "WorkerOps"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """Entries the hard cap removed before one group acknowledged them.

    Attributes:
        unread: not yet delivered to the group: lost to it.
        pending: delivered and not acknowledged: still handled if the consumer
            holding them lives; otherwise counted as ``lost`` when found gone.
    """

    unread: int
    pending: int


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What one processed-retention trim removed (``WorkerOps.atrim_processed``).

    Attributes:
        acknowledged: entries removed because every group acknowledged them.
        capped: entries removed by the hard cap, needed or not.
        over_cap: entries still above the cap (another call removes them).
        dropped: by group name, the capped entries it had not acknowledged.
    """

    acknowledged: int = 0
    capped: int = 0
    over_cap: int = 0
    dropped: dict[str, Dropped] = field(default_factory=dict)


class WorkerOps(StreamCore):
    """The worker's stream operations (async only): one stream and group."""

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
        block = self.block(block_ms)
        streams: dict[Any, Any] = {self.stream: ">"}
        ackdel = bool(ack_ids) and await self.adeletes_on_ack()

        async def read() -> Any:
            if not ack_ids:
                return await self.raw.xreadgroup(
                    self.group, consumer, streams, count=count, block=block
                )
            async with self.raw.pipeline(transaction=False) as pipe:
                if ackdel:
                    send(pipe, ackdel_args(self.stream, self.group, ack_ids))
                else:
                    pipe.xack(self.stream, self.group, *ack_ids)
                pipe.xreadgroup(self.group, consumer, streams, count=count, block=block)
                acked, rows = await pipe.execute(raise_on_error=False)
            if isinstance(acked, Exception):
                if not (ackdel and self.feature_lost(acked)):
                    raise acked
                # The server lost XACKDEL: the read happened; acknowledge plainly.
                await self.raw.xack(self.stream, self.group, *ack_ids)
            if isinstance(rows, Exception):
                raise rows
            return rows

        rows: Any = await self.acall("xreadgroup", read, recreate=True)
        return rows[0][1] if rows else []

    async def aread_own_pending(
        self, consumer: str, count: int, after_id: str = "0"
    ) -> list[RawEntry]:
        """Re-read entries pending on ``consumer`` after ``after_id``.

        Entries whose data is gone come back with ``fields=None``. The delivery
        count is the one after this read (re-reading counts as a delivery).
        """

        async def run() -> list[Any]:
            async with self.raw.pipeline(transaction=True) as pipe:
                pipe.xreadgroup(
                    self.group, consumer, {self.stream: after_id}, count=count
                )
                pipe.xpending_range(
                    self.stream, self.group, "-", "+", count * 2, consumer
                )
                return await pipe.execute()

        rows, pending = await self.acall("xreadgroup", run, recreate=True)
        if not rows or not rows[0][1]:
            return []
        counts = {p["message_id"]: p["times_delivered"] for p in pending}
        # A real entry has at least one field; a pending id whose data is gone
        # comes back with none (and its delivery count is not raised).
        return [
            RawEntry(decode_id(i), f or None, int(counts.get(i, 1)))
            for i, f in rows[0][1]
        ]

    async def aclaim_entries(
        self, consumer: str, min_idle_ms: int, ids: Sequence[str]
    ) -> ClaimResult:
        """Atomically claim ids idle for ``min_idle_ms`` with their delivery counts.

        Ids whose data left the stream are acknowledged and returned as ``lost``;
        ids that another consumer claimed or acknowledged meanwhile are skipped.
        """
        if not ids:
            return ClaimResult([], [])
        args = [self.group, consumer, min_idle_ms, *ids]
        claimed, lost = await self.acall(
            "xclaim",
            lambda: self._claim(keys=[self.stream], args=args),  # type: ignore[arg-type]
            recreate=True,
        )
        entries = [
            RawEntry(decode_id(i), pairs_to_fields(f), int(n)) for i, f, n in claimed
        ]
        return ClaimResult(entries, [decode_id(i) for i in lost])

    async def arenew(
        self, consumer: str, ids: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Reset the idle time of ids ``consumer`` still owns (its lease).

        Uses XCLAIM ... JUSTID, which leaves the delivery count alone.

        Returns:
            ``(renewed, gone)``: an id in neither was taken over by another
            consumer; ``gone`` ids left the stream and were acknowledged (the
            owner still holds their data: it handles them, and counts them as
            lost only if that fails).
        """
        return await self.atransfer(consumer, consumer, ids)

    async def atransfer(
        self, owner: str, new_owner: str, ids: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """Hand the ids ``owner`` still owns to ``new_owner`` (JUSTID, atomic).

        The delivery count stays; the idle time restarts.

        Returns:
            ``(moved, lost)``; ``lost`` ids had left the stream (trimmed or
            deleted) and were acknowledged instead of moved, or (unless this is
            a renewal) are pending nowhere because the group was deleted.
        """
        if not ids:
            return [], []
        args = [self.group, owner, new_owner, *ids]
        moved, lost = await self.acall(
            "xclaim",
            lambda: self._transfer(keys=[self.stream], args=args),
            recreate=True,
        )
        return [decode_id(i) for i in moved], [decode_id(i) for i in lost]

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
                "dlq_stream": self.stream,
                "dlq_id": entry_id,
                "dlq_group": self.group,
                "dlq_at": str(time.time()),
            }
        )
        dead.update({f"dlq_{k}": v for k, v in details.items()})
        ackdel = await self.adeletes_on_ack()

        async def run() -> list[Any]:
            async with self.raw.pipeline(transaction=True) as pipe:
                pipe.xadd(dead_letter_stream, dead, maxlen=max_len, approximate=True)
                if ackdel:
                    send(pipe, ackdel_args(self.stream, self.group, [entry_id]))
                else:
                    pipe.xack(self.stream, self.group, entry_id)
                return await pipe.execute()

        try:
            new_id, _ = await self.acall("dead letter", run)
        except errors.TransportError as exc:
            if not (ackdel and self.feature_lost(exc)):
                raise
            ackdel = False
            new_id, _ = await self.acall("dead letter", run)
        return decode_id(new_id)

    # -- processed-only retention ----------------------------------------------

    async def atrim_processed(self, max_len: int, chunk: int = 1000) -> TrimResult:
        """Remove what every group acknowledged, then enforce the hard cap.

        One atomic script (``scripts.TRIM``): ``XTRIM MINID`` below the oldest
        entry any group of the stream still has pending or unread; then, while
        the stream is longer than ``max_len`` (0: no cap), up to ``chunk`` of
        its oldest entries are removed anyway and counted per group. Call again
        while ``over_cap`` is above 0.
        """
        acknowledged, capped, over_cap, flat = await self.acall(
            "xtrim",
            lambda: self._trim(keys=[self.stream], args=[max_len, chunk]),
        )
        dropped = {
            decode_id(flat[i]): Dropped(int(flat[i + 1]), int(flat[i + 2]))
            for i in range(0, len(flat), 3)
        }
        return TrimResult(int(acknowledged), int(capped), int(over_cap), dropped)

    # -- failures remembered between deliveries ------------------------------

    def _error_key(self, entry_id: str) -> str:
        return f"{self.stream}:lasterror:{self.group}:{entry_id}"

    async def aset_last_error(self, entry_id: str, error: str, ttl_s: float) -> None:
        """Remember the last error of an entry for ``ttl_s`` seconds."""
        key = self._error_key(entry_id)
        ttl_ms = max(int(ttl_s * 1000), 1)
        await self.acall("set", lambda: self.raw.set(key, error, px=ttl_ms))

    async def aget_last_error(self, entry_id: str) -> str | None:
        """Return the last error remembered for an entry, if any."""
        key = self._error_key(entry_id)
        value = await self.acall("get", lambda: self.raw.get(key))
        return None if value is None else decode_id(value)

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
        args = [self.group, min_idle_ms, "only" if only else "except", *names]
        removed = await self.acall(
            "xgroup delconsumer",
            lambda: self._delete_idle(keys=[self.stream], args=args),
            recreate=True,
        )
        return [decode_id(n) for n in removed]

    async def aconsumers(self) -> list[dict[str, Any]]:
        """List the group's consumers: ``name``, ``pending`` and ``idle`` (ms).

        ``idle`` is the time since the consumer last read or claimed something:
        ``inactive`` where the server reports it (Redis 7.2+, Valkey), whose
        ``idle`` counts reads that returned nothing too (see
        ``consumer_idle_ms``).
        """
        rows = await self.acall(
            "xinfo consumers",
            lambda: self.aio.xinfo_consumers(self.stream, self.group),
            recreate=True,
        )
        return [
            {
                "name": r["name"],
                "pending": int(r["pending"]),
                "idle": consumer_idle_ms(r),
            }
            for r in rows
        ]

    # -- consumer-name leases --------------------------------------------------

    def lease_key(self, name: str) -> str:
        """The key of the lease on a consumer-name base in this group."""
        return f"{self.stream}:owner:{self.group}:{name}"

    async def aacquire_lease(self, name: str, token: str, ttl_ms: int) -> bool:
        """Take or extend the lease on ``name``; False when another holds it."""
        held = await self.acall(
            "lease",
            lambda: self._lease(keys=[self.lease_key(name)], args=[token, ttl_ms]),
        )
        return bool(held)

    async def arelease_lease(self, name: str, token: str) -> None:
        """Give the lease on ``name`` up, if ``token`` still holds it."""
        await self.acall(
            "lease",
            lambda: self._release(keys=[self.lease_key(name)], args=[token]),
        )
