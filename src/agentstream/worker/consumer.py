"""Consumer: fetch what capacity allows, start each event as a slot frees, ack."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from itertools import repeat

import anyio
import anyio.abc
import anyio.lowlevel
import structlog

from agentstream.app import App, Handler, OrderKey
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
from agentstream.transport.keys import RECOVERED_CONSUMER, RETRY_CONSUMER
from agentstream.transport.worker_ops import DeadLetterRefused, WorkerOps
from agentstream.worker.dispatcher import Dispatcher, EscapedBaseException
from agentstream.worker.ordering import order_key_of
from agentstream.worker.pause import PauseWatch
from agentstream.worker.unhandled import warn_unhandled

__all__ = [
    "NO_ERROR_RECORDED",
    "RECOVERED_CONSUMER",
    "RETRY_CONSUMER",
    "Consumer",
    "Job",
    "describe_error",
]

#: The dead-letter error of an entry that used up its deliveries without a
#: handler ever reporting a failure: each delivery ended with its process (a
#: crash, an OOM kill, os._exit) or its consumer stalled past its lease.
NO_ERROR_RECORDED = (
    "no error recorded: the worker process died (or stalled past its lease) "
    "while handling it, on every delivery"
)

log = structlog.get_logger("agentstream.consumer")

_ERROR_MAX = 2000
_monotonic = time.monotonic
_time = time.time
_current_task = asyncio.current_task


def describe_error(exc: BaseException) -> str:
    """One-line ``Type: message`` of an exception, truncated for storage."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 3] + "..."


def _classify(exc: BaseException) -> tuple[int, BaseException | None]:
    """The outcome of a handler call that raised ``exc``.

    SystemExit, KeyboardInterrupt, GeneratorExit... raised by a handler fail
    its event, never the worker; only the worker's own cancellation (a
    timeout, the shutdown) is raised again.
    """
    if isinstance(exc, DeadLetter):
        return DEAD_LETTER, exc
    if isinstance(exc, Retry):
        return RETRY, None
    if isinstance(exc, anyio.get_cancelled_exc_class()) and _being_cancelled():
        raise exc
    return FAILED, exc


def _being_cancelled() -> bool:
    # anyio cancels a task through Task.cancel(): a CancelledError that arrives
    # without it was raised by the handler itself, and is its failure.
    task = _current_task()
    return task is not None and task.cancelling() > 0


class Job:
    """One fetched entry, from its read until it is finished."""

    __slots__ = (
        "confirmed_at",
        "consumer",
        "count",
        "done",
        "event",
        "fields",
        "generation",
        "gone",
        "handler",
        "id",
        "in_handler",
        "is_sync",
        "key",
        "lost",
        "raw_id",
        "scope",
        "started_at",
        "timed_out",
    )

    def __init__(
        self,
        consumer: Consumer,
        raw_id: bytes | str,
        fields: RawFields | None,
        count: int,
        confirmed_at: float,
    ) -> None:
        self.consumer = consumer
        self.generation = consumer.generation
        self.raw_id = raw_id
        self.id = raw_id.decode() if type(raw_id) is bytes else str(raw_id)
        self.fields = fields
        self.count = count
        # When this consumer last knew it owned the entry: the read or renewal
        # was sent then, so nobody can claim it before min_idle_ms after that.
        self.confirmed_at = confirmed_at
        self.done: anyio.Event | None = None  # set when finished, if wanted
        self.event: Event | str | None = None
        self.handler: Handler | None = None
        self.key: tuple[str, str] | None = None
        self.started_at = 0.0
        self.scope: anyio.CancelScope | None = None
        self.is_sync = False
        self.in_handler = False
        self.timed_out = False
        self.lost = False  # another consumer took it over
        self.gone = False  # its data left the stream (the renewal acked it)


class Consumer:
    """One consumer of one consumer group: fetches, dispatches, acknowledges.

    The consumer fetches no more entries than its process has room for (see
    `Dispatcher`) and starts a task per entry, which waits for a handler slot
    and, with an ordering key, for the entries of the same key before it. It
    acknowledges each event as it finishes, gathered into one XACK per
    ``ack_interval_ms`` (or sent with the next read). A companion task renews
    the lease of every entry fetched and unfinished in one command per
    ``min_idle_ms / 3``, and enforces ``handler_timeout_s``.

    Redis bookkeeping of handled events (acks, parking, dead letters, error
    records, renewals) goes through one connection at a time per consumer, so
    connections depend on consumers, not on concurrency.
    """

    def __init__(
        self,
        name: str,
        transport: WorkerOps,
        app: App,
        subscription: SubscriptionSettings,
        settings: Settings,
        dispatcher: Dispatcher,
        on_read: Callable[[], None] | None = None,
        pause: PauseWatch | None = None,
        in_order: bool = False,
    ) -> None:
        self.name = name
        self.pause = pause
        self._on_read = on_read
        self.transport = transport
        self.tally = Tally(app.event_types())
        self.last_tick = _monotonic()
        self._app = app
        self._stream = transport.stream_name
        self._group = transport.consumer_group
        self._sub = subscription
        self._settings = settings
        self._dispatcher = dispatcher
        self._order: OrderKey | None = order_key_of(subscription.order_key, app)
        self._in_order = in_order
        self._recovered = False
        if in_order and self._order is None:
            # An ordered partition without a key: the whole stream is one key.
            self._order = _whole_stream
        self._unhandled_dead = settings.unhandled == "dead_letter"
        self._settings_unhandled = settings.unhandled
        self._timeout_s = settings.handler_timeout_s
        self._ack_interval_s = settings.ack_interval_ms / 1000
        self._lease_interval_s = settings.reaper.min_idle_ms / 3000
        # Past this age a lease is confirmed again before a handler starts: a
        # third of min_idle_ms is left for the renewal's round trip.
        self._stale_s = 2 * self._lease_interval_s
        self._jobs: dict[str, Job] = {}
        self._acks: list[bytes | str] = []
        # The acks whose error records may exist: delivered more than once.
        self._forget: list[bytes | str] = []
        self._ack_due: anyio.Event | None = None
        self._lane = anyio.Lock()
        self._renewal: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._ready: deque[Job] = deque()  # admitted, waiting for a runner
        self._spare = 0  # runners started or woken, not running yet
        self._parked: list[anyio.Event] = []  # idle runners
        self._closing = False
        self._read_scope: anyio.CancelScope | None = None
        self._waiting_room = False
        self._last_renew = 0.0
        # time.time() - time.monotonic(), as of the last dispatch: event ages
        # from monotonic readings (one wall-clock reading per batch).
        self._wall_offset_s = _time() - _monotonic()
        self._published_ms = ""  # the last entry id's ms part, and in seconds
        self._published_s = 0.0
        self._stopping = False
        #: Counts runs: a job fetched by an earlier run is never started by a
        #: later one (that run parked it on the retry consumer).
        self.generation = 0

    # -- the loop ----------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching; what was fetched is still handled and acknowledged."""
        self._stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping

    async def run(self) -> None:
        """Park this consumer's leftover pending entries, then consume new ones."""
        with structlog.contextvars.bound_contextvars(
            stream=self._stream, group=self._group, consumer=self.name
        ):
            failure: Exception | None = None
            async with self.active():
                await self.recover()
                try:
                    await self._consume()
                except Exception as exc:  # noqa: BLE001 - raised once jobs end
                    # A failed read (Redis gone, the stream deleted) stops
                    # reading only: the calls in flight finish, and are
                    # acknowledged or parked, before the consumer restarts.
                    failure = exc
            if failure is not None:
                raise failure

    @asynccontextmanager
    async def active(self) -> AsyncIterator[None]:
        """Run handler tasks, renew leases, enforce timeouts, flush acks.

        On the way out, waits for every started handler task, then sends the
        acks gathered.
        """
        self.generation += 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            tg.start_soon(self._flush_when_due)
            try:
                async with anyio.create_task_group() as jobs:
                    self._tg = jobs
                    self._closing = False
                    try:
                        yield
                    finally:
                        # Idle runners end; busy ones finish what is ready.
                        self._closing = True
                        while self._parked:
                            self._spare += 1
                            self._parked.pop().set()
            finally:
                self._parked.clear()
                self._spare = 0
                self._tg = None
                self._drop_unstarted()
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self.flush_acks()
                tg.cancel_scope.cancel()

    async def recover(self) -> None:
        """Hand the entries left pending on this consumer to the reaper (or,
        for an ordered partition's consumer, handle them first, in order).

        They were in flight when this consumer's previous run ended (a crash, a
        restart, a shutdown deadline), perhaps because of them: the reaper
        gives them the backoff and the ``max_deliveries`` limit that every
        redelivery gets, instead of handling them again at once. The move
        (XCLAIM JUSTID to `RECOVERED_CONSUMER`) leaves their delivery counts
        alone.
        """
        if self._in_order:
            await self._recover_in_order()
            return
        batch = self._settings.batch_size
        while not self._stopping:
            page = await self.transport.apending_range(batch, consumer=self.name)
            if page:
                ids = [p.id for p in page]
                async with self._lane:
                    moved, lost = await self.transport.atransfer(
                        self.name, RECOVERED_CONSUMER, ids
                    )
                self.report_lost(lost)
                if moved:
                    log.info("pending_parked_for_recovery", count=len(moved))
                continue
            # Its own pending list now empty, reading its history returns
            # nothing and counts no delivery, but makes the consumer known to
            # the group (a blocked XREADGROUP on a quiet stream does not).
            if not await self.transport.aread_own_pending(self.name, 1):
                return

    async def _recover_in_order(self) -> None:
        # Parked leftovers would be retried after the events behind them: an
        # ordered partition's consumer (one name whoever owns the partition)
        # re-reads them and handles them first, in stream order. One whose
        # deliveries are used up goes to the dead-letter stream instead. Only
        # this process's first recovery counts as a delivery (a restart after a
        # Redis error must not use up their budget).
        after = "0"
        count_delivery, self._recovered = not self._recovered, True
        limit = self._settings.reaper.max_deliveries
        while not self._stopping:
            reserved = await self.reserve(self._settings.batch_size)
            if not reserved:
                return
            try:
                entries = await self.transport.aread_own_pending(
                    self.name, reserved, after, count_delivery=count_delivery
                )
            except BaseException:
                self.unreserve(reserved)
                raise
            if not entries:
                self.unreserve(reserved)
                return
            after = entries[-1].id
            spent = [
                e
                for e in entries
                if e.fields is not None and e.delivery_count - 1 >= limit
            ]
            self.dispatch_entries([e for e in entries if e not in spent], reserved)
            for entry in spent:
                error = await self.transport.aget_last_error(entry.id)
                await self.dead_letter(
                    entry.id,
                    entry.fields,
                    "max_deliveries",
                    error or NO_ERROR_RECORDED,
                    entry.delivery_count - 1,
                )

    async def _consume(self) -> None:
        dispatcher = self._dispatcher
        transport = self.transport
        most = self._settings.batch_size
        block_ms = self._settings.block_ms
        if self.pause is not None:  # pause: a read started before one ends soon
            block_ms = min(block_ms, self.pause.max_block_ms)
        lock = dispatcher.read_lock(self._stream) if self._order else None
        dispatcher.readers += 1
        try:
            await self._read_loop(dispatcher, transport, most, block_ms, lock)
        finally:
            dispatcher.readers -= 1

    async def _read_loop(
        self,
        dispatcher: Dispatcher,
        transport: WorkerOps,
        most: int,
        block_ms: int,
        lock: anyio.Lock | None,
    ) -> None:
        # While reads come back full, the stream has a backlog: the next read
        # returns at once, so it may reserve all the room free, not a share of
        # it (with many readers, partitions or streams, a share is a few
        # entries). A read short of what it asked for blocks next, holding a
        # share only.
        backlog = True
        while not self._stopping:
            self.last_tick = _monotonic()
            with anyio.CancelScope() as scope:
                self._read_scope = scope
                if self._stopping:
                    break
                pause = self.pause
                if pause is not None and pause.paused(self._stream, self._group):
                    # Paused: send what finished, then wait (in flight calls
                    # go on) until resumed; stop() cancels the wait.
                    await self.flush_acks()
                    await pause.hold(self, [])
                if self._ready and dispatcher.free() < most:
                    # Short of room for a full batch: let the runners start
                    # what the last read brought first. Handlers that return
                    # without suspending free their room at once, and the next
                    # read fetches a full batch instead of the prefetch's few.
                    await anyio.lowlevel.checkpoint()
                self._waiting_room = True
                try:
                    reserved = await dispatcher.reserve_read(
                        most, self._ack_interval_s, blocking=not backlog
                    )
                finally:
                    self._waiting_room = False
                self.last_tick = sent_at = _monotonic()
                acks, self._acks = self._acks, []
                forget, self._forget = self._forget, []
                try:
                    if lock is not None:
                        await lock.acquire()
                    try:
                        batch = await transport.aread_batch(
                            self.name,
                            reserved,
                            None if backlog else block_ms,
                            acks,
                            forget,
                        )
                        backlog = len(batch) == reserved
                        dispatcher.end_read(reserved, len(batch))
                        reserved = 0
                        self.dispatch(batch, sent_at)
                    finally:
                        if lock is not None:
                            lock.release()
                except BaseException:
                    self._acks[:0] = acks  # unknown whether they went out
                    self._forget[:0] = forget
                    if reserved:
                        dispatcher.end_read(reserved, 0)
                    raise
            self._read_scope = None
            if self._on_read is not None and not scope.cancelled_caught:
                self._on_read()

    # -- dispatching ---------------------------------------------------------------

    async def reserve(self, most: int) -> int:
        """Wait for room in the process, then reserve up to ``most`` entries.

        Returns 0 when stopped meanwhile. Give what goes unused back with
        `dispatch_entries` or `unreserve`.
        """
        with anyio.CancelScope() as scope:
            self._read_scope = scope
            if self._stopping:
                return 0
            try:
                return await self._dispatcher.reserve_claim(most)
            finally:
                self._read_scope = None
        return 0

    def unreserve(self, n: int) -> None:
        """Give back ``n`` reserved entries that will not be dispatched."""
        self._dispatcher.release(n)

    def dispatch_entries(
        self, entries: Sequence[RawEntry], reserved: int, *, track: bool = False
    ) -> list[Job]:
        """Start handling claimed entries; ``reserved`` came from `reserve`.

        With ``track``, each job's ``done`` event is set when it finishes.
        """
        self._dispatcher.release(reserved - len(entries))
        return self.dispatch(
            [(e.id, e.fields) for e in entries],
            _monotonic(),
            [e.delivery_count for e in entries],
            track=track,
        )

    def dispatch(
        self,
        entries: Iterable[tuple[bytes | str, RawFields | None]],
        confirmed_at: float,
        counts: Iterable[int] | None = None,
        *,
        track: bool = False,
    ) -> list[Job]:
        """Start a task per entry (already counted as outstanding).

        ``counts`` are the entries' delivery counts, all 1 (a first read) if
        None.
        """
        assert self._tg is not None, "dispatch() outside active()"
        self._wall_offset_s = _time() - _monotonic()
        admit = self._dispatcher.admit
        jobs = self._jobs
        ready = self._ready
        stream, name, group = self._stream, self.name, self._group
        resolve = self._app.resolve
        handlers: dict[str, Handler | None] = {}
        keyed = self._order is not None
        started = []
        for (raw_id, fields), count in zip(
            entries, repeat(1) if counts is None else counts, strict=False
        ):
            job = Job(self, raw_id, fields, count, confirmed_at)
            jobs[job.id] = job
            if track:
                job.done = anyio.Event()
                started.append(job)
            if fields is not None:
                event = job.event = decode_event(
                    stream, job.id, fields, count, name, group
                )
                if type(event) is Event:
                    event_type = event.type
                    if event_type in handlers:  # the batch's types, resolved once
                        job.handler = handlers[event_type]
                    else:
                        job.handler = handlers[event_type] = resolve(stream, event_type)
                    if keyed and job.handler is not None:
                        self._set_key(job, event)
            if job.key is None or admit(job):  # else next_in_chain() starts it
                ready.append(job)
        self._kick()
        return started

    def _set_key(self, job: Job, event: Event) -> None:
        assert self._order is not None
        try:
            key = self._order(event)
        except Exception as exc:  # noqa: BLE001 - a bad key runs unordered
            log.warning("order_key_failed", event_id=job.id, error=describe_error(exc))
            return
        if key is not None:
            job.key = (self._stream, key)

    def _start(self, job: Job) -> bool:
        if self._tg is None or job.generation != self.generation:
            return False
        self._ready.append(job)
        self._kick()
        return True

    def _kick(self) -> None:
        # Keep one runner spare while jobs are ready: a runner whose handler
        # suspends leaves the next job to the spare, which wakes another. A
        # handler that never suspends lets one runner run a whole batch.
        # Runners with nothing to do park, and are woken before new ones start.
        if self._ready and not self._spare and self._tg is not None:
            self._spare += 1
            if self._parked:
                self._parked.pop().set()
            else:
                self._tg.start_soon(self._runner)

    async def _runner(self) -> None:
        ready = self._ready
        job: Job | None = None
        self._spare -= 1
        try:
            while True:
                # One cancel scope serves every job this runner runs until a
                # handler timeout uses it up.
                with anyio.CancelScope() as scope:
                    while True:
                        while ready:
                            job = ready.popleft()
                            if ready and not self._spare:
                                self._kick()
                            job.scope = scope
                            await self._handle(job)
                            self._finish(job)
                            job = None
                        if self._closing:
                            return
                        parked = anyio.Event()
                        self._parked.append(parked)
                        await parked.wait()
                        self._spare -= 1
                if job is not None:  # its handler timed out
                    timed_out, job = job, None
                    try:
                        await self._conclude(timed_out, TIMEOUT, None)
                    finally:
                        self._finish(timed_out)
        finally:
            if job is not None:  # cancelled: left pending for redelivery
                self._finish(job)

    def _finish(self, job: Job) -> None:
        dispatcher = self._dispatcher
        if job.key is None and job.done is None:  # the usual case
            job.consumer._jobs.pop(job.id, None)
            dispatcher.release(1)
            return
        while True:
            job.consumer._jobs.pop(job.id, None)
            dispatcher.release(1)
            if job.done is not None:
                job.done.set()
            if job.key is None:
                return
            after = dispatcher.next_in_chain(job)
            if after is None or after.consumer._start(after):
                return
            # Its consumer stopped: the entry stays pending on it (parked at
            # its next start); pass the key's turn on.
            job = after

    def _drop_unstarted(self) -> None:
        # Entries fetched but not started when the handler tasks ended: they
        # stay pending (parked at the next start); give their room back.
        while self._ready:
            self._finish(self._ready.popleft())

    # -- handling ----------------------------------------------------------------

    async def _handle(self, job: Job) -> None:
        handler = job.handler
        if handler is None:
            await self._handle_unrunnable(job)
            return
        event = job.event
        assert type(event) is Event
        tally = self.tally
        dispatcher = self._dispatcher
        asked = _monotonic()
        if dispatcher.running < dispatcher.capacity and not dispatcher.slots_waited:
            dispatcher.running += 1  # the usual case: a slot is free
            now = asked
        else:
            await dispatcher.acquire_slot()
            now = _monotonic()
        try:
            if now == asked:
                tally.slot_free += 1
            else:
                tally.waited("slot", now - asked)
            if (job.lost or now - job.confirmed_at > self._stale_s) and not (
                await self._still_owned(job)
            ):
                return
            if handler.is_async:
                job.started_at = self.last_tick = now
                job.in_handler = True
                try:
                    await handler.func(event)
                    outcome, error = OK, None
                except BaseException as exc:  # noqa: BLE001 - _classify re-raises ours
                    outcome, error = _classify(exc)
                finally:
                    job.in_handler = False
                if job.timed_out:
                    # The handler swallowed its timeout's cancellation: it
                    # still timed out. This ends in the runner's cancel scope.
                    await anyio.lowlevel.checkpoint()
            else:
                outcome, error = await self._call_sync(job, event, handler)
        finally:
            dispatcher.release_slot()
        if outcome == OK and not job.timed_out:
            # Looked up after the handler: the reporter may have taken the
            # tally meanwhile, and counts added to the old one would be lost.
            started = job.started_at
            type_tally = self.tally.of(event.type)
            type_tally.observe(_monotonic() - started, self._age_at(job.id, started))
            type_tally.counts[OK] += 1
            self._ack(job)
        else:
            await self._conclude(job, outcome, error)

    async def _handle_unrunnable(self, job: Job) -> None:
        """An entry with no handler to call: lost, malformed or unhandled."""
        fields = job.fields
        if fields is None:
            self.report_lost([job.id])
            self._ack(job)
            return
        event = job.event
        if type(event) is str:
            self.tally.count(UNKNOWN_TYPE, MALFORMED)
            log.warning("event_malformed", event_id=job.id, reason=event)
            await self.dead_letter(job.id, fields, "malformed", event, job.count)
            return
        assert isinstance(event, Event)
        self.tally.count(event.type, UNHANDLED)
        warn_unhandled(self._stream, event.type, self._settings_unhandled)
        if self._unhandled_dead:
            await self.dead_letter(job.id, fields, "unhandled", "no handler", job.count)
        else:
            self._ack(job)

    async def _call_sync(
        self, job: Job, event: Event, handler: Handler
    ) -> tuple[int, BaseException | None]:
        job.is_sync = True
        asked = _monotonic()

        def granted() -> None:
            job.started_at = self.last_tick = _monotonic()
            self.tally.waited("thread", job.started_at - asked)

        try:
            await self._dispatcher.call_sync(handler.func, event, granted)
        except EscapedBaseException as exc:
            return FAILED, exc.original
        except BaseException as exc:  # noqa: BLE001 - _classify re-raises ours
            return _classify(exc)
        return OK, None

    async def _conclude(
        self, job: Job, outcome: int, error: BaseException | None
    ) -> None:
        """Count one call's outcome and act on it: ack, park or dead-letter."""
        event = job.event
        assert isinstance(event, Event)
        ended = _monotonic()
        # Looked up after the handler: the reporter may have taken the tally
        # meanwhile, and counts added to the old one would be lost.
        type_tally = self.tally.of(event.type)
        if job.started_at:
            type_tally.observe(
                ended - job.started_at, self._age_at(job.id, job.started_at)
            )
        if job.is_sync and job.timed_out:
            log.warning(
                "handler_returned_late",
                event_id=job.id,
                event_type=event.type,
                duration_s=round(ended - job.started_at, 3),
                outcome=_OUTCOME_NAMES[outcome],
            )
        if outcome == OK:
            type_tally.counts[OK] += 1
            self._ack(job)
        elif outcome == RETRY:
            type_tally.counts[RETRY] += 1
            await self._park(job.id)
        elif outcome == TIMEOUT:
            error = TimeoutError(
                f"handler exceeded handler_timeout_s={self._timeout_s}"
            )
            await self._failed(job.id, error, "timeout", event)
        elif isinstance(error, DeadLetter):
            type_tally.counts[DEAD_LETTER] += 1
            await self.dead_letter(
                job.id, job.fields, error.reason, describe_error(error), job.count
            )
        else:
            assert error is not None
            await self._failed(job.id, error, "failed", event)

    def _age_at(self, entry_id: str, at: float) -> float:
        """Seconds between the entry's publication and ``at`` (monotonic)."""
        # The id's first part is the publish time in ms (Redis' clock); under
        # load many entries in a row share it: parsed once for them.
        ms = entry_id.partition("-")[0]
        if ms != self._published_ms:
            self._published_ms = ms
            self._published_s = int(ms) / 1000
        return at + self._wall_offset_s - self._published_s

    def _ack(self, job: Job) -> None:
        self._acks.append(job.raw_id)
        if job.count > 1:
            self._forget.append(job.raw_id)
        if len(self._acks) == 1 and self._ack_due is not None:
            self._ack_due.set()

    async def _failed(
        self, entry_id: str, exc: BaseException, kind: str, event: Event
    ) -> None:
        self.tally.count(event.type, TIMEOUT if kind == "timeout" else FAILED)
        text = describe_error(exc)
        log.error(
            "handler_failed" if kind == "failed" else "handler_timeout",
            event_id=entry_id,
            event_type=event.type,
            delivery_count=event.delivery_count,
            exc_info=exc if kind == "failed" else None,
            error=text,
        )
        if kind == "failed":
            text += "\n" + "".join(traceback.format_exception(exc)[-3:])[-1000:]
        async with self._lane:
            await self.transport.aset_last_error(
                entry_id, text, self._settings.reaper.error_ttl_s
            )
        await self._park(entry_id)

    async def _park(self, entry_id: str) -> None:
        async with self._lane:
            _, lost = await self.transport.atransfer(
                self.name, RETRY_CONSUMER, [entry_id]
            )
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
        type, ``maxmemory``...), the entry stays pending, parked for the reaper
        (which tries again), the refusal is counted and logged, and False is
        returned.
        """
        try:
            async with self._lane:
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
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        forget, self._forget = self._forget, []
        try:
            async with self._lane:
                await self.transport.aack(acks, forget)
        except BaseException:
            self._acks[:0] = acks
            self._forget[:0] = forget
            raise

    async def _flush_when_due(self) -> None:
        while True:
            if not self._acks:
                self._ack_due = anyio.Event()
                await self._ack_due.wait()
                self._ack_due = None
            await anyio.sleep(self._ack_interval_s)
            try:
                await self.flush_acks()
            except Exception as exc:  # noqa: BLE001 - kept; the next flush retries
                log.warning("ack_failed", error=describe_error(exc))

    # -- leases and timeouts -----------------------------------------------------

    def held_ids(self) -> list[str]:
        """Ids this consumer holds: entries fetched and unfinished, unsent acks."""
        held = [j.id for j in self._jobs.values() if not (j.gone or j.lost)]
        held.extend(to_text(i) for i in self._acks)
        return held

    @property
    def in_flight(self) -> int:
        """Entries fetched and not finished."""
        return len(self._jobs)

    async def _still_owned(self, job: Job) -> bool:
        # After a stall (a stopped process, a blocked loop, a pause), the reaper
        # of another worker may have taken the entry: learn it before starting.
        for _ in range(3):
            if job.lost:
                break
            if _monotonic() - job.confirmed_at <= self._stale_s:
                return True
            await self._renew()
        if not job.lost:
            log.warning("lease_unconfirmed", event_id=job.id)
        return False

    async def _watch(self) -> None:
        tick = min(self._lease_interval_s, self._timeout_s / 4, 1.0)
        while True:
            await anyio.sleep(tick)
            now = _monotonic()
            if self._waiting_room:  # all slots busy: waiting, not stuck
                self.last_tick = now
            self._enforce_timeouts(now)
            if (self._jobs or self._acks) and (
                now - self._last_renew >= self._lease_interval_s
            ):
                await self._renew()

    def _enforce_timeouts(self, now: float) -> None:
        limit = self._timeout_s
        for job in self._jobs.values():
            started = job.started_at
            if not started or job.timed_out or now - started <= limit:
                continue
            if not job.is_sync:
                if job.in_handler and job.scope is not None:
                    job.timed_out = True
                    job.scope.cancel()
                continue
            job.timed_out = True
            # A thread cannot be stopped: report, keep the lease and the
            # thread's place until the call returns, then go by its outcome.
            self.tally.overran += 1
            log.warning(
                "handler_timeout",
                event_id=job.id,
                event_type=job.event.type if isinstance(job.event, Event) else None,
                timeout_s=limit,
                cancelled=False,
            )

    async def _renew(self) -> None:
        """Renew every lease held in one command; learn which were taken."""
        if self._renewal is not None:
            await self._renewal.wait()
            return
        done = self._renewal = anyio.Event()
        try:
            ids = self.held_ids()
            if not ids:
                return
            sent_at = self._last_renew = _monotonic()
            try:
                async with self._lane:
                    renewed, gone = await self.transport.arenew(self.name, ids)
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                log.warning("lease_renew_failed", error=describe_error(exc))
                return
            jobs = self._jobs
            for entry_id in renewed:
                job = jobs.get(entry_id)
                if job is not None:
                    job.confirmed_at = sent_at
            # Acknowledged by the renewal: no lease to keep; a failure reports them.
            for entry_id in gone:
                job = jobs.get(entry_id)
                if job is not None:
                    job.gone = True
            if len(renewed) + len(gone) < len(ids):
                # Not pending here any more: taken over, unless it finished and
                # its ack went out with a read meanwhile (then it is no loss).
                unsent = {to_text(i) for i in self._acks}
                taken = sorted(
                    i
                    for i in set(ids) - set(renewed) - set(gone)
                    if i in jobs or i in unsent
                )
                for entry_id in taken:
                    job = jobs.get(entry_id)
                    if job is not None:
                        job.lost = True
                if taken:
                    log.warning("lease_lost", event_ids=taken[:20], count=len(taken))
        finally:
            self._renewal = None
            done.set()


_OUTCOME_NAMES: dict[int, str] = {
    OK: "ok",
    RETRY: "retry",
    FAILED: "failed",
    TIMEOUT: "timeout",
    DEAD_LETTER: "dead_letter",
}


def _whole_stream(event: Event) -> str:
    """The ordering key that puts every event of a stream in one line."""
    return ""
