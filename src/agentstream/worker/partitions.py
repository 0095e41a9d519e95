"""PartitionAssigner: which partitions of an ordered subscription this process owns.

Each partition of an ordered subscription has a lease in Redis
(``<partition>:lease:<group>``, in the partition's slot), taken with ``SET NX
PX`` and a fencing token (a counter that grows with each new owner). The
assigner of every worker process:

1. records itself in the group's member set (a sorted set scored with Redis'
   clock) and reads the live members;
2. renews the leases it holds; a lease it cannot confirm within two thirds of
   its lifetime is given up *locally first*: the partition's loops are
   cancelled before the lease can expire and another member take it;
3. computes its fair share (``P // members``, plus one for the first
   ``P % members`` members in sorted order), gives up partitions above it
   (gracefully: stop reading, finish the event in hand, then release), and
   takes free ones below it.

A new member thus gets its share within a few renewal periods without anyone
dying, and a dead member's partitions are taken once their leases expire.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import structlog

from agentstream.errors import TransportError
from agentstream.transport.worker_ops import WorkerOps

__all__ = ["OwnedPartition", "PartitionAssigner", "fair_share"]

log = structlog.get_logger("agentstream.partitions")


def fair_share(partitions: int, members: Sequence[str], member: str) -> int:
    """How many partitions ``member`` should own among ``members`` (sorted)."""
    if member not in members:
        return 0
    rank = list(members).index(member)
    base, extra = divmod(partitions, len(members))
    return base + (1 if rank < extra else 0)


@dataclass
class OwnedPartition:
    """A partition lease this process holds."""

    index: int
    token: int
    confirmed_at: float  # monotonic time the last renewal was sent


#: Start a partition's loops (given its index and fencing token).
Start = Callable[[int, int], None]
#: Stop a partition's loops: ``graceful`` lets the event in hand finish.
Stop = Callable[[int, bool], Awaitable[None]]


class PartitionAssigner:
    """Holds this process's share of an ordered subscription's partitions.

    Args:
        logical_stream: the subscription's stream (before partitioning).
        transports: one per partition, in partition order.
        member: this process's unique member id (its consumer-name base).
        lease_s: lifetime of a partition lease, in seconds.
        start: called when a partition is taken.
        stop: awaited when a partition is given up or lost.
    """

    def __init__(
        self,
        logical_stream: str,
        transports: Sequence[WorkerOps],
        member: str,
        lease_s: float,
        start: Start,
        stop: Stop,
    ) -> None:
        self._stream = logical_stream
        self._transports = list(transports)
        self.member = member
        self._ttl_ms = int(lease_s * 1000)
        self._period_s = lease_s / 3
        self._start = start
        self._stop = stop
        self.owned: dict[int, OwnedPartition] = {}
        self.members: list[str] = []

    async def run(self) -> None:
        """Rebalance every third of the lease lifetime until cancelled."""
        try:
            while True:
                await self.tick()
                await anyio.sleep(self._period_s)
        finally:
            with anyio.CancelScope(shield=True):
                await self.release_all()

    async def tick(self) -> None:
        """One round: membership, renewals, then give up or take partitions."""
        try:
            with anyio.fail_after(self._period_s / 2):
                self.members = await self._transports[0].amembers(
                    self._stream, self.member, self._ttl_ms
                )
        except (TransportError, TimeoutError) as exc:
            log.warning("partition_members_failed", error=str(exc))
            await self._renew()  # still fence ourselves if Redis is gone
            return
        await self._renew()
        share = fair_share(len(self._transports), self.members, self.member)
        for index in sorted(self.owned, reverse=True)[
            : max(len(self.owned) - share, 0)
        ]:
            await self._give_up(index)
        if len(self.owned) < share:
            await self._take(share)

    async def _renew(self) -> None:
        deadline_s = self._ttl_ms / 1000 * 2 / 3
        for index, owned in list(self.owned.items()):
            sent = time.monotonic()
            try:
                with anyio.fail_after(self._period_s / 2):
                    held = await self._transports[index].arenew_partition(
                        self.member, owned.token, self._ttl_ms
                    )
            except (TransportError, TimeoutError):
                if time.monotonic() - owned.confirmed_at < deadline_s:
                    continue
                held = False
            if held:
                owned.confirmed_at = sent
                continue
            log.error("partition_lost", stream=self._stream, partition=index)
            del self.owned[index]
            await self._stop(index, False)

    async def _take(self, share: int) -> None:
        count = len(self._transports)
        rank = self.members.index(self.member) if self.member in self.members else 0
        first = rank * count // max(len(self.members), 1)
        for step in range(count):
            if len(self.owned) >= share:
                return
            index = (first + step) % count
            if index in self.owned:
                continue
            sent = time.monotonic()
            try:
                token = await self._transports[index].aacquire_partition(
                    self.member, self._ttl_ms
                )
            except TransportError as exc:
                log.warning("partition_acquire_failed", error=str(exc))
                return
            if token:
                self.owned[index] = OwnedPartition(index, token, sent)
                log.info(
                    "partition_taken", stream=self._stream, partition=index, token=token
                )
                self._start(index, token)

    async def _give_up(self, index: int) -> None:
        owned = self.owned.pop(index)
        await self._stop(index, True)
        try:
            await self._transports[index].arelease_partition(self.member, owned.token)
        except TransportError:
            pass  # it expires by itself
        log.info("partition_released", stream=self._stream, partition=index)

    async def release_all(self) -> None:
        """Stop and release every partition held (at shutdown)."""
        with anyio.move_on_after(5):
            for index in list(self.owned):
                await self._give_up(index)
