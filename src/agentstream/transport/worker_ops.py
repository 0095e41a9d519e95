"""Transport operations of the worker: hot-path reads, claims, leases."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from agentstream import errors
from agentstream.errors import Refused
from agentstream.transport.core import (
    ClaimResult,
    RawEntry,
    RawFields,
    StreamCore,
    consumer_idle_ms,
    decode_id,
    denied_command,
    pairs_to_fields,
    refusal_code,
    send,
    to_text,
)
from agentstream.transport.keys import derived_key, errors_key, pause_key
from agentstream.transport.retention import ackdel_args, acked_count
from agentstream.transport.round_trip import round_trip, stream_entries, xreadgroup_args

__all__ = ["DeadLetterRefused", "Dropped", "TrimResult", "WorkerOps"]


class DeadLetterRefused(errors.TransportError):
    """The dead-letter stream refused the entry (WRONGTYPE, OOM, ...).

    Nothing changed: the entry is still pending where it was.
    """


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
    """The worker's stream operations (async only): one stream and group.

    Error records (the last error of an entry that failed, for its dead letter)
    live in one hash per stream and group, ``errors_key``, field = entry id. A
    record goes away with its entry's acknowledgement: every XACK the worker
    sends (batched acks, dead letters, lost entries) drops the records of the
    same ids in the same round trip, so the hash holds what is in flight. The
    worker's batched acks leave out ids delivered once (``forget_ids``): a
    failure parks its entry, and the redelivery raises the delivery count, so
    an entry on its first delivery has no record. A record left behind anyway
    (a failure whose park did not reach Redis) goes with the reaper's sweep,
    which drops the records of entries no longer pending.
    """

    @property
    def errors_key(self) -> str:
        """The hash of this group's error records: ``{stream}:errors:{group}``
        (in the stream's cluster slot, see ``transport.keys``)."""
        return errors_key(self.stream, self.group, cluster=self.cluster)

    # -- worker reads (undecoded bytes, for the strict decoder) -----------------

    async def aread_batch(
        self,
        consumer: str,
        count: int,
        block_ms: int | None,
        ack_ids: Sequence[bytes | str] = (),
        forget_ids: Sequence[bytes | str] | None = None,
    ) -> list[tuple[bytes, RawFields]]:
        """Read new entries for ``consumer`` as undecoded ``(id, fields)`` pairs.

        This is the worker's hot path: one XREADGROUP, no per-entry decoding, and
        ``ack_ids`` acknowledged in the same round trip (XACK, and HDEL of the
        error records of ``forget_ids``, all of ``ack_ids`` if None, sent
        before the read in one write; see `round_trip`). The block is capped
        below the socket timeout; an empty list means no entry arrived in time.
        """
        block = self.block(block_ms)
        ackdel = bool(ack_ids) and await self.adeletes_on_ack()
        forget = ack_ids if forget_ids is None else forget_ids
        commands: list[Sequence[Any]] = []
        if ack_ids:
            if ackdel:
                commands.append(ackdel_args(self.stream, self.group, ack_ids))
            else:
                commands.append(["XACK", self.stream, self.group, *ack_ids])
            # Error records go with their entries; a failure to drop them
            # (a key of another type) is bookkeeping, and ignored.
            if forget:
                commands.append(["HDEL", self.errors_key, *forget])
        commands.append(
            xreadgroup_args(self.group, consumer, self.stream, count, block)
        )

        async def read() -> list[tuple[bytes, RawFields]]:
            client = self.raw
            entries: Callable[[Any], list[tuple[bytes, RawFields]]]
            if isinstance(client, aioredis.Redis):
                replies = await round_trip(client, commands)
                entries = stream_entries
            else:  # a cluster: redis-py routes by slot and parses the replies
                async with client.pipeline(transaction=False) as pipe:
                    for command in commands:
                        send(pipe, command)
                    replies = await pipe.execute(raise_on_error=False)
                entries = _parsed_entries
            acked, rows = replies[0], replies[-1]
            if ack_ids and isinstance(acked, Exception):
                if not (ackdel and self.feature_lost(acked)):
                    raise acked
                # The server lost XACKDEL: the read happened; acknowledge plainly.
                await client.xack(self.stream, self.group, *ack_ids)
            if isinstance(rows, Exception):
                raise rows
            return entries(rows)

        return await self.acall("xreadgroup", read, recreate=True)

    async def aread_own_pending(
        self,
        consumer: str,
        count: int,
        after_id: str = "0",
        *,
        count_delivery: bool = True,
    ) -> list[RawEntry]:
        """Re-read entries pending on ``consumer`` after ``after_id``.

        Entries whose data is gone come back with ``fields=None``. With
        ``count_delivery`` (XREADGROUP from ``after_id``) re-reading counts as a
        delivery, and the delivery count returned is the one after this read.
        Without it (XPENDING, XCLAIM JUSTID to renew the lease, XRANGE) the
        counts stay as they were: for a consumer that restarts after a Redis
        error, which must not use up its entries' delivery budget.
        """
        if not count_delivery:
            return await self._peek_own_pending(consumer, count, after_id)

        async def run() -> list[Any]:
            # Not MULTI: under maxmemory Redis refuses every command queued in a
            # transaction, even those (XREADGROUP, XPENDING) it runs outside one,
            # and redis-py's async cluster transactions fail on XREADGROUP.
            # The entries are this consumer's, their idle time just reset: no
            # reaper takes them between the two commands.
            pipeline: Any = self.raw.pipeline(transaction=False)
            async with pipeline as pipe:
                pipe.xreadgroup(
                    self.group, consumer, {self.stream: after_id}, count=count
                )
                pipe.xpending_range(
                    self.stream, self.group, "-", "+", count * 2, consumer
                )
                return list(await pipe.execute())

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

    async def _peek_own_pending(
        self, consumer: str, count: int, after_id: str
    ) -> list[RawEntry]:
        start = "-" if after_id in ("0", "0-0") else "(" + after_id
        pending = await self.apending_range(count, consumer=consumer, start=start)
        if not pending:
            return []
        kept, lost = await self.arenew(consumer, [p.id for p in pending])
        owned = set(kept) | set(lost)

        async def read() -> list[Any]:
            async with self.raw.pipeline(transaction=False) as pipe:
                for entry_id in kept:
                    pipe.xrange(self.stream, entry_id, entry_id, count=1)
                return await pipe.execute()

        rows = dict(zip(kept, await self.acall("xrange", read), strict=True))
        return [
            RawEntry(
                p.id,
                dict(rows[p.id][0][1]) if rows.get(p.id) else None,
                p.delivery_count,
            )
            for p in pending
            if p.id in owned
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
        keys = [self.stream, self.errors_key]
        claimed, lost = await self.acall(
            "xclaim",
            lambda: self._claim(keys=keys, args=args),  # type: ignore[arg-type]
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
        keys = [self.stream, self.errors_key]
        moved, lost = await self.acall(
            "xclaim",
            lambda: self._transfer(keys=keys, args=args),
            recreate=True,
        )
        return [decode_id(i) for i in moved], [decode_id(i) for i in lost]

    async def aack(
        self,
        ids: Sequence[str | bytes],
        forget_ids: Sequence[str | bytes] | None = None,
    ) -> int:
        """Acknowledge ids and drop the error records (HDEL) of ``forget_ids``
        (all of ``ids`` if None), pipelined.

        In ``"processed"`` retention on servers with ``XACKDEL`` (Redis 8.2+) the
        acknowledgement is ``XACKDEL ... ACKED``, which also deletes the entries
        every group has acknowledged. Returns how many were pending.
        """
        if not ids:
            return 0
        ackdel = await self.adeletes_on_ack()
        forget = ids if forget_ids is None else forget_ids

        async def run() -> Any:
            async with self.raw.pipeline(transaction=False) as pipe:
                if ackdel:
                    send(pipe, ackdel_args(self.stream, self.group, ids))
                else:
                    pipe.xack(self.stream, self.group, *ids)
                if forget:
                    pipe.hdel(self.errors_key, *forget)
                return _replies(await pipe.execute(raise_on_error=False))[0]

        try:
            reply = await self.acall("xack", run, recreate=True)
        except errors.TransportError as exc:
            if not (ackdel and self.feature_lost(exc)):
                raise
            return await self.aack(ids, forget)  # the server lost XACKDEL: plain XACK
        return acked_count(reply) if ackdel else int(reply)

    async def adead_letter(
        self,
        entry_id: str,
        fields: RawFields | None,
        dead_letter_stream: str,
        details: dict[str, str],
        max_len: int,
    ) -> str:
        """Move one entry to a dead-letter stream, then acknowledge it (Lua).

        The dead-letter entry keeps the original fields (when the data still
        exists) and adds ``details`` (each key prefixed with ``dlq_``), plus the
        original stream, id and group. The XACK (and dropping the entry's error
        record) runs only once the XADD succeeded; when it fails, the entry keeps
        its error record, or gets one naming the refused dead letter.

        Returns:
            The dead letter's id.

        Raises:
            DeadLetterRefused: the XADD failed (the key holds another type,
                ...); nothing changed, the entry is still pending.
            agentstream.errors.Refused: the server refuses writes (``OOM``,
                ``READONLY``...); nothing changed either.
            agentstream.errors.TransportError: Redis failed otherwise.
        """
        dead: dict[bytes, bytes | str] = dict(fields or {})
        ours = {
            "stream": self.stream,
            "id": entry_id,
            "group": self.group,
            "at": str(time.time()),
            **details,
        }
        # Bytes keys: an original field of the same name is replaced, not doubled.
        dead.update({f"dlq_{k}".encode(): v for k, v in ours.items()})
        error = f"dead letter ({details.get('reason', '?')}) refused: " + details.get(
            "error", ""
        )
        ack = "ackdel" if await self.adeletes_on_ack() else "ack"
        args: list[Any] = [self.group, entry_id, max_len, error, ack]
        for name, value in dead.items():
            args.extend((name, value))
        keys = [self.stream, dead_letter_stream, self.errors_key]
        done, result = await self.acall(
            "dead letter", lambda: self._dead_letter(keys=keys, args=args)
        )
        if not done:
            text = to_text(result)
            denied = denied_command(text)
            if denied is not None:  # the ACL refused the XADD
                command = denied or "xadd"
                msg = f"Redis at {self.location} denied {command}: {text}"
                refusal = errors.PermissionDenied(msg, "dead letter", command)
                if self._pool.observer is not None:
                    self._pool.observer.failed(refusal)
                raise refusal
            code = refusal_code(text)
            if code is not None:  # the server refuses writes: OOM, READONLY...
                msg = (
                    f"Redis at {self.location} refused the dead letter of "
                    f"{entry_id} ({code}): {text}"
                )
                refused = errors.Refused(self._scrub(msg), "dead letter", code)
                if self._pool.observer is not None:
                    self._pool.observer.failed(refused)
                raise refused
            msg = (
                f"Redis at {self.location} refused the dead letter of {entry_id} "
                f"in {dead_letter_stream!r}: {text}"
            )
            raise DeadLetterRefused(self._scrub(msg), "dead letter")
        return decode_id(result)

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

    async def aset_last_error(self, entry_id: str, error: str, ttl_s: float) -> bool:
        """Remember the last error of an entry (HSET in ``errors_key``).

        The record goes when the entry is acknowledged or dead-lettered; the
        hash itself expires ``ttl_s`` seconds after the last error written (a
        bound for records of entries acknowledged behind the worker's back, which
        ``aprune_error_records`` also removes).

        The record is bookkeeping: when Redis refuses the write (``maxmemory``
        with ``noeviction``, a read-only replica, the ACL...) the refusal goes
        to the pool's observer and False is returned, so that handling goes on.

        Raises:
            ConnectionError: Redis could not be reached.
        """
        ttl_ms = max(int(ttl_s * 1000), 1)

        async def run() -> Any:
            async with self.raw.pipeline(transaction=False) as pipe:
                pipe.hset(self.errors_key, entry_id, error)
                pipe.pexpire(self.errors_key, ttl_ms)
                return await pipe.execute()

        try:
            await self.acall("hset", run)
        except Refused:
            return False
        return True

    async def aget_last_error(self, entry_id: str) -> str | None:
        """Return the last error recorded for an entry, if any."""
        value = await self.acall(
            "hget", lambda: self.raw.hget(self.errors_key, entry_id)
        )
        return None if value is None else to_text(value)

    async def aprune_error_records(self, cursor: str = "0", count: int = 100) -> str:
        """Drop error records of entries no longer pending, ``count`` at a time.

        Follows an HSCAN cursor: call again with the cursor returned (``"0"``:
        the pass is complete). All records go when the group is gone.
        """
        keys = [self.stream, self.errors_key]
        args = [self.group, cursor, count]
        next_cursor = await self.acall(
            "error records",
            lambda: self._prune_errors(keys=keys, args=args),  # type: ignore[arg-type]
        )
        return to_text(next_cursor)

    async def apaused(self) -> bool:
        """Whether an operator paused this subscription (GET of its pause key)."""
        key = pause_key(self.stream, self.group, cluster=self.cluster)
        return await self.acall("get", lambda: self.raw.get(key)) is not None

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
        return [to_text(n) for n in removed]

    async def aconsumers(self) -> list[dict[str, Any]]:
        """List the group's consumers: ``name``, ``pending`` and ``idle`` (ms).

        A name that is not UTF-8 (another tool's consumer) stays ``bytes``, so
        that commands given it name that very consumer.

        ``idle`` is the time since the consumer last read or claimed something:
        ``inactive`` where the server reports it (Redis 7.2+, Valkey), whose
        ``idle`` counts reads that returned nothing too (see
        ``consumer_idle_ms``).
        """
        rows = await self.acall(
            "xinfo consumers",
            lambda: self.axinfo(self.raw, "XINFO CONSUMERS", self.group),
            recreate=True,
        )
        return [
            {
                "name": _name(r["name"]),
                "pending": int(r["pending"]),
                "idle": consumer_idle_ms(r),
            }
            for r in rows
        ]

    # -- consumer-name leases --------------------------------------------------

    def lease_key(self, name: str) -> str:
        """The key of the lease on a consumer-name base in this group."""
        return self.derived_key(f"owner:{self.group}:{name}")

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

    # -- partition leases (ordered subscriptions) ------------------------------

    def _partition_keys(self) -> list[str]:
        return [
            self.derived_key(f"lease:{self.group}"),
            self.derived_key(f"fence:{self.group}"),
        ]

    async def aacquire_partition(self, member: str, ttl_ms: int) -> int:
        """Take this stream's partition lease if free (SET NX PX in a script).

        Returns:
            The fencing token (a counter that grows with each new owner), or 0
            when another member holds the lease.
        """
        script = self._acquire_partition
        keys = self._partition_keys()
        token = await self.acall(
            "partition lease", lambda: script(keys=keys, args=[member, ttl_ms])
        )
        return int(token)

    async def arenew_partition(self, member: str, token: int, ttl_ms: int) -> bool:
        """Extend the lease held as ``token``; False when it was lost."""
        script = self._renew_partition
        keys = self._partition_keys()[:1]
        args: list[str | int] = [f"{token}:{member}", ttl_ms]
        return bool(
            await self.acall("partition lease", lambda: script(keys=keys, args=args))
        )

    async def arelease_partition(self, member: str, token: int) -> None:
        """Give the lease up, if ``token`` still holds it."""
        keys = self._partition_keys()[:1]
        value = f"{token}:{member}"
        await self.acall(
            "partition lease", lambda: self._release(keys=keys, args=[value])
        )

    async def apartition_owner(self) -> str | None:
        """The lease value ``"<token>:<member>"`` of this partition, or None."""
        key = self._partition_keys()[0]
        value = await self.acall("get", lambda: self.raw.get(key))
        return None if value is None else decode_id(value)

    async def amembers(
        self, logical_stream: str, member: str, ttl_ms: int
    ) -> list[str]:
        """Record ``member`` as alive in the group of ``logical_stream``.

        Returns:
            The members heard from within ``ttl_ms``, sorted (Redis' clock).
        """
        key = derived_key(logical_stream, f"members:{self.group}", cluster=self.cluster)
        script = self._members
        rows = await self.acall(
            "members", lambda: script(keys=[key], args=[member, ttl_ms])
        )
        return sorted(decode_id(r) for r in rows)


def _parsed_entries(rows: Any) -> list[tuple[bytes, RawFields]]:
    """The entries of an XREADGROUP reply redis-py parsed (``parse_xread``)."""
    return rows[0][1] if rows else []


def _replies(results: list[Any]) -> list[Any]:
    """The replies of a pipeline whose second command drops error records (HDEL),
    without that one: its failure (a key of another type) is bookkeeping and
    ignored; any other command's error is raised."""
    for i, result in enumerate(results):
        if i != 1 and isinstance(result, Exception):
            raise result
    return [r for i, r in enumerate(results) if i != 1]


def _name(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw
