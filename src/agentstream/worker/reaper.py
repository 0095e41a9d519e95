"""Reaper: find stale pending entries, then claim or dead-letter them."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import anyio
import structlog

from agentstream.config import ReaperSettings
from agentstream.event import event_type
from agentstream.observe.counts import DEAD_LETTER, SweepResult
from agentstream.transport.core import PendingEntry
from agentstream.worker.consumer import (
    NO_ERROR_RECORDED,
    RECOVERED_CONSUMER,
    RETRY_CONSUMER,
    Consumer,
)

__all__ = ["NO_ERROR_RECORDED", "Reaper", "SweepResult", "backoff_ms"]

log = structlog.get_logger("agentstream.reaper")


def backoff_ms(settings: ReaperSettings, delivery_count: int) -> int:
    """Idle time an entry needs before its next delivery: doubling, capped."""
    exponent = min(max(delivery_count - 1, 0), 40)
    return int(min(settings.min_idle_ms * 2**exponent, settings.max_backoff_ms))


_PARKING = (RETRY_CONSUMER, RECOVERED_CONSUMER)


class Reaper:
    """Sweeps one consumer group for entries whose consumer stopped handling them.

    An entry idle for ``min_idle_ms`` has no live handler: live consumers renew
    their leases well before that. Such an entry is dead-lettered once its
    delivery count reached ``max_deliveries``; otherwise, once its idle time
    reached the backoff for its delivery count, it is claimed for this reaper's
    own consumer and dispatched like any event (within the process's
    ``concurrency``; the sweep does not wait for the handlers). Consumers that own nothing and idled
    for ``consumer_ttl_s`` are removed from the group.

    Several reapers (processes, replicas) may sweep one group at once: claims are
    atomic and check idle time again, so an entry goes to one of them only.

    ``spared`` consumers are never swept: an ordered partition's consumer
    recovers its own pending entries, in stream order, when its next owner
    starts; a reaper claiming them would handle them beside it, out of order.
    """

    def __init__(
        self,
        consumer: Consumer,
        settings: ReaperSettings,
        live_consumers: Collection[str],
        spared: Collection[str] = (),
    ) -> None:
        self.consumer = consumer
        self._settings = settings
        self._live = live_consumers
        self._spared = frozenset(spared)
        self._wake = anyio.Event()
        self._prune_cursor = "0"

    def stop(self) -> None:
        """Stop sweeping; an entry being handled is still finished."""
        self.consumer.stop()
        self._wake.set()

    async def run(self, on_sweep: Callable[[SweepResult], None] | None = None) -> None:
        """Sweep every ``interval_s`` until stopped, handling what it claims."""
        consumer = self.consumer
        with structlog.contextvars.bound_contextvars(
            stream=consumer.transport.stream_name,
            group=consumer.transport.consumer_group,
            consumer=consumer.name,
        ):
            await self._run(on_sweep)

    async def _run(self, on_sweep: Callable[[SweepResult], None] | None) -> None:
        consumer = self.consumer
        async with consumer.active():
            await consumer.recover()
            while not consumer.stopping:
                consumer.last_tick = time.monotonic()
                if not self._paused():
                    result = await self.sweep()
                    if on_sweep is not None:
                        on_sweep(result)
                with anyio.move_on_after(self._settings.interval_s):
                    await self._wake.wait()

    def _paused(self) -> bool:
        pause, transport = self.consumer.pause, self.consumer.transport
        return pause is not None and pause.paused(
            transport.stream_name, transport.consumer_group
        )

    async def sweep(self) -> SweepResult:
        """Run one sweep over the pending list; returns what it did."""
        started = time.monotonic()
        result = SweepResult()
        transport = self.consumer.transport
        settings = self._settings
        for owner in await self._owners_to_scan():
            await self._sweep_owner(owner, result)
            if self.consumer.stopping:
                break
        # Error records of entries acknowledged behind the worker's back (an
        # operator's XACK): a page per sweep.
        self._prune_cursor = await transport.aprune_error_records(self._prune_cursor)
        result.removed_consumers = await transport.adelete_idle_consumers(
            int(settings.consumer_ttl_s * 1000), sorted(self._live)
        )
        if result.removed_consumers:
            log.info("consumers_removed", names=result.removed_consumers)
        result.duration_s = time.monotonic() - started
        return result

    async def _owners_to_scan(self) -> list[str]:
        # A live consumer holds only entries in flight, with fresh leases, and
        # idles less than min_idle_ms (renewing a lease counts as activity):
        # skipping it keeps a sweep O(claimable) instead of O(pending). Each
        # entry's own idle time is still checked before it is claimed.
        min_idle = self._settings.min_idle_ms
        return [
            c["name"]
            for c in await self.consumer.transport.aconsumers()
            if c["pending"]
            and c["name"] not in self._spared
            and (c["name"] in _PARKING or c["idle"] >= min_idle)
        ]

    async def _sweep_owner(self, owner: str, result: SweepResult) -> None:
        settings = self._settings
        start = "-"
        while True:
            page = await self.consumer.transport.apending_range(
                settings.batch,
                min_idle_ms=settings.min_idle_ms,
                consumer=owner,
                start=start,
            )
            result.scanned += len(page)
            result.max_idle_ms = max([result.max_idle_ms, *(e.idle_ms for e in page)])
            due: list[PendingEntry] = []
            for entry in page:
                if entry.delivery_count >= settings.max_deliveries or (
                    entry.idle_ms >= backoff_ms(settings, entry.delivery_count)
                ):
                    due.append(entry)
                else:
                    result.waiting += 1
            if owner == RETRY_CONSUMER:
                await self._take(due, result)
            else:
                await self._recover(due, result)
            if len(page) < settings.batch or self.consumer.stopping:
                return
            start = "(" + page[-1].id

    async def _recover(self, due: list[PendingEntry], result: SweepResult) -> None:
        # Entries a consumer held when it died or stalled. One that was
        # already redelivered after such an end may be what kills its worker:
        # it is redelivered alone, so that the entries in flight beside it do
        # not use up their deliveries with it.
        together = [e for e in due if e.delivery_count < 2]
        if together:
            await self._take(together, result)
        for entry in due:
            if entry.delivery_count >= 2 and not self.consumer.stopping:
                await self._take([entry], result, alone=True)

    async def _take(
        self, due: list[PendingEntry], result: SweepResult, *, alone: bool = False
    ) -> None:
        if not due:
            return
        consumer = self.consumer
        transport = consumer.transport
        # Claim no more than the process has room for: what it claims is held
        # (its leases renewed) until a handler slot frees.
        reserved = await consumer.reserve(len(due))
        if not reserved:
            return
        try:
            claim = await transport.aclaim_entries(
                consumer.name,
                self._settings.min_idle_ms,
                [e.id for e in due[:reserved]],
            )
        except BaseException:
            consumer.unreserve(reserved)
            raise
        result.lost += len(claim.lost)
        consumer.report_lost(claim.lost)
        retry = []
        dead = []
        for entry in claim.entries:
            deliveries = entry.delivery_count - 1  # the claim itself counted one
            if deliveries >= self._settings.max_deliveries:
                dead.append((entry, deliveries))
            else:
                retry.append(entry)
        if retry:
            result.claimed += len(retry)
            log.info("events_claimed", count=len(retry), consumer=consumer.name)
        jobs = consumer.dispatch_entries(retry, reserved, track=alone)
        for entry, deliveries in dead:
            error = await transport.aget_last_error(entry.id)
            if await consumer.dead_letter(
                entry.id,
                entry.fields,
                "max_deliveries",
                error or NO_ERROR_RECORDED,
                deliveries,
            ):
                consumer.tally.count(event_type(entry.fields), DEAD_LETTER)
                result.dead_lettered += 1
        for job in jobs:
            if job.done is not None:
                await job.done.wait()
