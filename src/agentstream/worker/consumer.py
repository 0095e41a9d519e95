"""Consumer: read a batch, dispatch each event to its handler, acknowledge."""

from __future__ import annotations

import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from agentstream.app import App
from agentstream.config import Settings, SubscriptionSettings
from agentstream.errors import DeadLetter, Refused, Retry
from agentstream.event import Event, decode_event
from agentstream.observe.counts import (
    DEAD_LETTER,
    FAILED,
    LOST,
    MALFORMED,
    OK,
    RETRY,
    TIMEOUT,
    UNHANDLED,
    UNKNOWN_TYPE,
    Tally,
)
from agentstream.transport.core import RawEntry, RawFields, to_text
from agentstream.transport.worker_ops import DeadLetterRefused, WorkerOps
from agentstream.worker.pause import PauseWatch
from agentstream.worker.unhandled import warn_unhandled

__all__ = ["RETRY_CONSUMER", "Consumer"]

#: Where a consumer parks the entries it failed, until the reaper retries them.
#: Live consumers then hold only entries in flight (their leases fresh), so a
#: sweep looks at this consumer's and at idle consumers' entries only.
RETRY_CONSUMER = "agentstream-retry"

log = structlog.get_logger("agentstream.consumer")

_ERROR_MAX = 2000
_monotonic = time.monotonic
_time = time.time


#: A batch read ahead, and the event its handling sets when done.
_Batch = tuple[list[tuple[bytes, RawFields]], anyio.Event]


def describe_error(exc: BaseException) -> str:
    """One-line ``Type: message`` of an exception, truncated for storage."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 3] + "..."


class Consumer:
    """One consumer of one consumer group: reads, dispatches and acknowledges.

    Events are handled one after the other in stream order; acknowledgements are
    gathered and sent with the next read (one XACK per batch) or at the latest
    ``ack_interval_ms`` after the first of them. While a batch is being handled,
    a companion task renews the lease of every entry still held, so that the
    reaper does not hand a live event to another consumer, and cancels a handler
    that outlives ``handler_timeout_s``.
    """

    def __init__(
        self,
        name: str,
        transport: WorkerOps,
        app: App,
        subscription: SubscriptionSettings,
        settings: Settings,
        limiter: anyio.CapacityLimiter,
        on_read: Callable[[], None] | None = None,
        pause: PauseWatch | None = None,
    ) -> None:
        self.name = name
        self.pause = pause
        self._on_read = on_read
        self.transport = transport
        self.tally = Tally()
        self.last_tick = _monotonic()
        self._app = app
        self._stream = transport.stream_name
        self._group = transport.consumer_group
        self._sub = subscription
        self._settings = settings
        self._limiter = limiter
        self._unhandled_dead = settings.unhandled == "dead_letter"
        self._settings_unhandled = settings.unhandled
        self._timeout_s = settings.handler_timeout_s
        self._ack_interval_s = settings.ack_interval_ms / 1000
        self._lease_interval_s = settings.reaper.min_idle_ms / 3000
        self._acks: list[bytes | str] = []
        self._first_ack_at = 0.0
        self._held: Sequence[Any] = ()
        self._waiting: Sequence[Any] = ()
        self._gone: set[str] = set()
        self._fast = False
        self._reading = False
        self._pos = 0
        self._handler_started = 0.0
        self._current_type = UNKNOWN_TYPE
        self._timed_out: int | None = None
        self._scope: anyio.CancelScope | None = None
        self._read_scope: anyio.CancelScope | None = None
        self._last_renew = 0.0
        self._stopping = False
        # Only this process's first recovery counts as a delivery (the process
        # before it died holding these entries); a restart after a Redis error
        # must not use up their delivery budget.
        self._recovered = False

    # -- the loop ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; the batch in hand is still handled and acknowledged."""
        self._stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping

    async def run(self) -> None:
        """Recover this consumer's own pending entries, then consume new ones."""
        with structlog.contextvars.bound_contextvars(
            stream=self._stream, group=self._group, consumer=self.name
        ):
            async with self.active():
                await self.recover()
                await self._consume()

    @asynccontextmanager
    async def active(self) -> AsyncIterator[None]:
        """Keep leases renewed and timeouts enforced; flush acks on the way out."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self.flush_acks()
                tg.cancel_scope.cancel()

    async def recover(self) -> None:
        """Re-read and handle the entries still pending on this consumer."""
        after = "0"
        count_delivery, self._recovered = not self._recovered, True
        while not self._stopping:
            entries = await self.transport.aread_own_pending(
                self.name,
                self._settings.batch_size,
                after,
                count_delivery=count_delivery,
            )
            if not entries:
                return
            await self.process_entries(entries)
            after = entries[-1].id

    async def _consume(self) -> None:
        # While batches are handled quickly, the next one is read while this one
        # is handled, so the round trip (which also carries the previous batch's
        # acks) overlaps the handling.
        send, receive = anyio.create_memory_object_stream[_Batch]()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_ahead, send)
            async with receive:
                async for batch, done in receive:
                    self._waiting = ()
                    started = _monotonic()
                    await self.process(batch)
                    self._fast = _monotonic() - started < self._ack_interval_s
                    done.set()
                    if self._acks and self._reading:
                        # The reader is blocked waiting for new entries: do
                        # not let these acks wait for it.
                        await self.flush_acks()

    async def _read_ahead(self, send: MemoryObjectSendStream[_Batch]) -> None:
        transport = self.transport
        count = self._settings.batch_size
        block_ms = self._settings.block_ms
        if self.pause is not None:  # pause: a read started before one ends soon
            block_ms = min(block_ms, self.pause.max_block_ms)
        done = anyio.Event()
        done.set()
        async with send:
            while not self._stopping:
                if not self._fast:
                    # Slow handlers: a batch read ahead would wait behind the
                    # one in hand while other consumers idle. Read when done.
                    await done.wait()
                self.last_tick = _monotonic()
                batch: list[tuple[bytes, RawFields]] = []
                acks, self._acks = self._acks, []
                with anyio.CancelScope() as scope:
                    self._read_scope = scope
                    if self._stopping:
                        self._acks[:0] = acks
                        break
                    self._reading = True
                    try:
                        if self.pause is not None:  # pause: wait while paused
                            acks = await self.pause.hold(self, acks)
                        batch = await transport.aread_batch(
                            self.name, count, block_ms, acks
                        )
                    except BaseException:
                        self._acks[:0] = acks  # unknown whether they went out
                        raise
                    finally:
                        self._reading = False
                if scope.cancelled_caught:
                    self._acks[:0] = acks
                self._read_scope = None
                if self._on_read is not None:
                    self._on_read()
                if batch:
                    self._waiting = batch
                    done = anyio.Event()
                    try:
                        await send.send((batch, done))
                    except anyio.BrokenResourceError:
                        # The handling side failed and closed: its error is the
                        # one to report; this batch stays pending on us and is
                        # re-read by recover() when the consumer restarts.
                        return

    # -- handling ----------------------------------------------------------------

    async def process_entries(self, entries: Sequence[RawEntry]) -> None:
        """Handle claimed or re-read entries, then acknowledge them at once.

        These come from outside the read loop, so no next read would carry their
        acknowledgements; unacknowledged, the reaper would take them again.
        """
        await self.process(
            [(e.id, e.fields) for e in entries], [e.delivery_count for e in entries]
        )
        await self.flush_acks()

    async def process(
        self,
        batch: Sequence[tuple[bytes | str, RawFields | None]],
        counts: Sequence[int] | None = None,
    ) -> None:
        """Handle a batch in order; a handler timeout fails only its own event."""
        self._held = batch
        self._last_renew = _monotonic()
        n = len(batch)
        i = 0
        try:
            while i < n:
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    while i < n:
                        self._pos = i
                        entry_id, entry_fields = batch[i]
                        await self._handle(
                            entry_id, entry_fields, counts[i] if counts else 1
                        )
                        i += 1
                        if self._acks and (
                            _monotonic() - self._first_ack_at > self._ack_interval_s
                        ):
                            await self.flush_acks()
                self._scope = None
                if scope.cancelled_caught and self._timed_out == i:
                    self._timed_out = None
                    entry_id = batch[i][0]
                    error = TimeoutError(
                        f"handler exceeded handler_timeout_s={self._timeout_s}"
                    )
                    await self._failed(to_text(entry_id), error, "timeout")
                    i += 1
        finally:
            self._held = ()
            self._gone.clear()
            self._scope = None
            self._handler_started = 0.0

    async def _handle(
        self, raw_id: bytes | str, entry_fields: RawFields | None, count: int
    ) -> None:
        entry_id = raw_id.decode() if type(raw_id) is bytes else raw_id
        assert type(entry_id) is str
        tally = self.tally
        if entry_fields is None:
            self.report_lost([entry_id])
            self._ack(raw_id)
            return
        event = decode_event(
            self._stream, entry_id, entry_fields, count, self.name, self._group
        )
        if type(event) is str:
            tally.count(UNKNOWN_TYPE, MALFORMED)
            log.warning("event_malformed", event_id=entry_id, reason=event)
            await self.dead_letter(entry_id, entry_fields, "malformed", event, count)
            return
        assert isinstance(event, Event)
        handler = self._app.resolve(self._stream, event.type)
        if handler is None:
            tally.count(event.type, UNHANDLED)
            warn_unhandled(self._stream, event.type, self._settings_unhandled)
            if self._unhandled_dead:
                await self.dead_letter(
                    entry_id, entry_fields, "unhandled", "no handler", count
                )
            else:
                self._ack(raw_id)
            return
        self._current_type = event.type
        # The entry id's first part is the publish time in ms: its age at start.
        age_s = _time() - int(entry_id[: entry_id.find("-")]) / 1000
        started = self.last_tick = self._handler_started = _monotonic()
        outcome = OK
        error: Exception | None = None
        try:
            if handler.is_async:
                await handler.func(event)
            else:
                await anyio.to_thread.run_sync(
                    handler.func, event, limiter=self._limiter, abandon_on_cancel=True
                )
        except DeadLetter as exc:
            outcome, error = DEAD_LETTER, exc
        except Retry:
            outcome = RETRY
        except Exception as exc:  # noqa: BLE001 - a handler failure stops here
            outcome, error = FAILED, exc
        self._handler_started = 0.0
        # Looked up after the handler: the reporter may have taken the tally
        # meanwhile, and counts added to the old one would be lost.
        type_tally = self.tally.of(event.type)
        type_tally.observe(_monotonic() - started, age_s)
        if outcome == OK:
            type_tally.counts[OK] += 1
            self._ack(raw_id)
        elif outcome == RETRY:
            type_tally.counts[RETRY] += 1
            await self._park(entry_id)
        elif isinstance(error, DeadLetter):
            type_tally.counts[DEAD_LETTER] += 1
            await self.dead_letter(
                entry_id, entry_fields, error.reason, describe_error(error), count
            )
        else:
            assert error is not None
            await self._failed(entry_id, error, "failed", event)

    def _ack(self, raw_id: bytes | str) -> None:
        if not self._acks:
            self._first_ack_at = _monotonic()
        self._acks.append(raw_id)

    async def _failed(
        self,
        entry_id: str,
        exc: BaseException,
        kind: str,
        event: Event | None = None,
    ) -> None:
        event_type = event.type if event else self._current_type
        self.tally.count(event_type, TIMEOUT if kind == "timeout" else FAILED)
        log.error(
            "handler_failed" if kind == "failed" else "handler_timeout",
            event_id=entry_id,
            event_type=event_type,
            delivery_count=event.delivery_count if event else None,
            exc_info=exc if kind == "failed" else None,
            error=describe_error(exc),
        )
        text = describe_error(exc)
        if kind == "failed":
            text += "\n" + "".join(traceback.format_exception(exc)[-3:])[-1000:]
        await self.transport.aset_last_error(
            entry_id, text, self._settings.reaper.error_ttl_s
        )
        await self._park(entry_id)

    async def _park(self, entry_id: str) -> None:
        _, lost = await self.transport.atransfer(self.name, RETRY_CONSUMER, [entry_id])
        self.report_lost(lost)

    def report_lost(self, lost: list[str]) -> None:
        """Count and log entries whose data left the stream before handling."""
        if lost:
            self.tally.count(UNKNOWN_TYPE, LOST, len(lost))
        for entry_id in lost:
            log.error("event_lost", event_id=entry_id, reason="data gone from stream")

    async def dead_letter(
        self,
        entry_id: str,
        entry_fields: RawFields | None,
        reason: str,
        error: str,
        delivery_count: int,
    ) -> bool:
        """Move one entry to the dead-letter stream (and acknowledge it).

        When the dead-letter stream or Redis refuses it (a key of another
        type, ``maxmemory``...), the entry stays pending, parked
        for the reaper (which tries again), the refusal is counted and logged,
        and False is returned.
        """
        try:
            await self.transport.adead_letter(
                entry_id,
                entry_fields,
                self._sub.dead_letter_key,
                {
                    "reason": reason,
                    "error": error[:_ERROR_MAX],
                    "delivery_count": str(delivery_count),
                },
                self._sub.dead_letter_max_len,
            )
        except (DeadLetterRefused, Refused) as exc:
            self.tally.dead_letter_failed(reason)
            log.error(
                "dead_letter_failed",
                event_id=entry_id,
                reason=reason,
                error=str(exc),
                dead_letter_stream=self._sub.dead_letter_key,
            )
            await self._park(entry_id)
            return False
        self.tally.dead_lettered(reason)
        log.warning(
            "event_dead_lettered",
            event_id=entry_id,
            reason=reason,
            error=error,
            dead_letter_stream=self._sub.dead_letter_key,
        )
        return True

    async def flush_acks(self) -> None:
        """Send the gathered acknowledgements now."""
        if self._acks:
            acks = self._acks
            await self.transport.aack(acks)
            if acks is self._acks:
                self._acks = []

    # -- leases and timeouts -----------------------------------------------------

    def held_ids(self) -> list[str]:
        """Ids this consumer holds: its batches in hand and unsent acks."""
        held = [to_text(e[0]) for e in self._held[self._pos :]]
        held.extend(to_text(e[0]) for e in self._waiting)
        held.extend(to_text(i) for i in self._acks)
        if self._gone:
            held = [i for i in held if i not in self._gone]
        return held

    async def _watch(self) -> None:
        tick = min(self._lease_interval_s, self._timeout_s / 4, 1.0)
        while True:
            await anyio.sleep(tick)
            now = _monotonic()
            started = self._handler_started
            if started and now - started > self._timeout_s and self._scope:
                self._timed_out = self._pos
                self._scope.cancel()
            holding = self._held or self._waiting
            if holding and now - self._last_renew >= self._lease_interval_s:
                self._last_renew = now
                await self._renew()

    async def _renew(self) -> None:
        ids = self.held_ids()
        if not ids:
            return
        try:
            renewed, gone = await self.transport.arenew(self.name, ids)
        except Exception as exc:  # noqa: BLE001 - the next tick tries again
            log.warning("lease_renew_failed", error=describe_error(exc))
            return
        # Acknowledged by the renewal: no lease to keep; a failure reports them.
        self._gone.update(gone)
        if len(renewed) + len(gone) < len(ids):
            taken = sorted(set(ids) - set(renewed) - set(gone))
            log.warning("lease_lost", event_ids=taken[:20], count=len(taken))
