"""Dispatcher: one worker process's handler capacity, per-key order and thread cap.

Shared by every consumer of the process. Capacity is counted twice:

- entries *outstanding* (fetched and not finished), at most ``concurrency`` plus a
  small prefetch: consumers ask XREADGROUP for no more than that leaves free, and
  stop reading while it is used up (backpressure, and fair sharing with other
  processes of the group);
- handler calls *running*, at most ``concurrency`` (a semaphore, first come
  first served); an entry waits for one of these slots only when it was
  prefetched.

Entries with the same ordering key form a chain: one of them runs, the others
wait in stream-id order and start one after the other.
"""

from __future__ import annotations

import asyncio
import math
import threading
from bisect import insort
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import anyio

if TYPE_CHECKING:
    from agentstream.event import Event

__all__ = ["Dispatcher", "EscapedBaseException", "prefetch_for", "running_sync_calls"]

_PREFETCH_MAX = 64


class Ordered(Protocol):
    """What per-key order reads of a job: its entry id and its ordering key."""

    @property
    def id(self) -> str: ...
    @property
    def key(self) -> tuple[str, str] | None: ...


J = TypeVar("J", bound=Ordered)
_calls_lock = threading.Lock()
_sync_calls = 0


def prefetch_for(concurrency: int) -> int:
    """Entries a process may fetch beyond its ``concurrency``: 1/8th, 1 to 64."""
    return max(1, min(concurrency // 8, _PREFETCH_MAX))


def running_sync_calls() -> int:
    """Sync handler calls whose thread has not returned yet, in this process."""
    return _sync_calls


def _count_call(delta: int) -> None:
    global _sync_calls
    with _calls_lock:
        _sync_calls += delta


class Dispatcher:
    """Handler capacity and per-key order of one worker process.

    Args:
        concurrency: the most handler calls running at once.
        sync_threads: the most threads running sync handlers at once (a hard cap:
            a thread holds its place until its call returns, even after the
            awaiting task gave up on it).
    """

    def __init__(self, concurrency: int, sync_threads: int) -> None:
        self.capacity = concurrency
        self.prefetch = prefetch_for(concurrency)
        self.outstanding = 0
        self.reading = 0
        #: Consumers reading now (each a reader of one subscription).
        self.readers = 0
        self._readers_waiting: deque[_Turn] = deque()
        self.running = 0
        self.threads_busy = 0
        self._room: anyio.Event | None = None
        self._slot_waiters: deque[anyio.Event] = deque()
        self._threads = anyio.Semaphore(sync_threads)
        # Our own cap above is the one that holds; anyio's would be released
        # when a call is abandoned, with its thread still running.
        self._unbounded = anyio.CapacityLimiter(math.inf)
        self._chains: dict[tuple[str, str], list[Ordered]] = {}
        self._read_locks: dict[str, anyio.Lock] = {}

    # -- outstanding entries (what consumers may fetch) --------------------------

    def free(self) -> int:
        """How many more entries reads may fetch now."""
        return self.capacity + self.prefetch - self.outstanding - self.reading

    def share(self) -> int:
        """The most one read may reserve: an even share among the readers.

        A read may block for ``block_ms`` on a quiet stream with its reservation
        held; an even share leaves room for the other readers (and streams).
        """
        total = self.capacity + self.prefetch
        return max(1, -(-total // max(self.readers, 1)))

    async def reserve_read(
        self, most: int, patience_s: float, *, blocking: bool = True
    ) -> int:
        """Wait for room, first come first served, then reserve for one read.

        A read of a few entries costs a round trip as a full one does: the
        reader waits until half the prefetch is free, or ``patience_s``
        (seconds) with some room free. A ``blocking`` read (one that may wait
        ``block_ms`` on a quiet stream) reserves at most its `share`; a read
        that returns at once (a backlog) as much as the room allows.

        Returns:
            The number reserved (at least 1, at most ``most``); the read
            reports what it got with `end_read`.
        """
        if blocking:
            most = min(most, self.share())
        # Enough room for a read: half the prefetch, so that handler slots are
        # refilled before they run dry.
        turn = _Turn(most, max(1, min(most, self.prefetch) // 2))
        self._readers_waiting.append(turn)
        try:
            impatient = False
            while True:
                if self._readers_waiting[0] is turn:
                    free = self.free()
                    if free >= turn.enough or (impatient and free > 0):
                        break
                with anyio.move_on_after(patience_s) as timer:
                    await turn.event.wait()
                impatient = timer.cancelled_caught
                turn.event = anyio.Event()
                turn.woken = False
        except BaseException:
            self._readers_waiting.remove(turn)
            self._wake()
            raise
        self._readers_waiting.popleft()
        n = self._take_read(turn.most)
        self._wake()
        return n

    def _take_read(self, most: int) -> int:
        n = min(self.free(), most)
        self.reading += n
        return n

    async def reserve_claim(self, most: int) -> int:
        """Wait for room, then reserve up to ``most`` entries for a claim.

        Reads in progress are not counted (a read blocked on a quiet stream
        would otherwise keep the reaper from claiming), so claims may exceed
        the room by what those reads bring in.

        Returns:
            The number reserved, at least 1; give back the unused with `release`.
        """
        while True:
            free = self.capacity + self.prefetch - self.outstanding
            if free > 0:
                n = min(free, most)
                self.outstanding += n
                return n
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    def end_read(self, reserved: int, fetched: int) -> None:
        """A read that reserved ``reserved`` returned ``fetched`` entries."""
        self.reading -= reserved
        self.outstanding += fetched
        self._wake()

    def release(self, n: int = 1) -> None:
        """Give back ``n`` claimed-but-unused or finished entries."""
        if n <= 0:
            return
        self.outstanding -= n
        if self._room is not None or self._readers_waiting:
            self._wake()

    def _wake(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.set()
        if self._readers_waiting:
            head = self._readers_waiting[0]
            if not head.woken and self.free() >= head.enough:
                head.woken = True
                head.event.set()

    def read_lock(self, stream: str) -> anyio.Lock:
        """The lock that serialises reads of an ordered stream in this process.

        With reads one at a time, entries are admitted to their key's chain in
        stream-id order whichever consumer read them.
        """
        lock = self._read_locks.get(stream)
        if lock is None:
            lock = self._read_locks[stream] = anyio.Lock()
        return lock

    # -- per-key order -------------------------------------------------------------

    def admit(self, job: Ordered) -> bool:
        """Whether ``job`` may start now; if not, it waits for its key's turn."""
        key = job.key
        if key is None:
            return True
        chain = self._chains.get(key)
        if chain is None:
            self._chains[key] = []
            return True
        insort(chain, job, key=_position)
        return False

    def next_in_chain(self, job: J) -> J | None:
        """The job of the same key to start now that ``job`` is done, if any."""
        key = job.key
        if key is None:
            return None
        chain = self._chains.get(key)
        if chain is None:
            return None
        if chain:
            # Only jobs of one kind share a key: the consumer's.
            return cast(J, chain.pop(0))
        del self._chains[key]
        return None

    def waiting(self) -> int:
        """Entries waiting for their key's turn."""
        return sum(len(c) for c in self._chains.values())

    # -- handler slots ---------------------------------------------------------------

    @property
    def slots_waited(self) -> bool:
        """Whether calls are waiting for a handler slot."""
        return bool(self._slot_waiters)

    async def acquire_slot(self) -> None:
        """Take a free handler slot, or wait for one (first come, first served)."""
        if self.running < self.capacity and not self._slot_waiters:
            self.running += 1
            return
        handed = anyio.Event()
        self._slot_waiters.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():  # a slot was handed over as we were cancelled
                self.release_slot()
            else:
                self._slot_waiters.remove(handed)
            raise

    def release_slot(self) -> None:
        """Free a handler slot: hand it to the first waiter, if any."""
        if self._slot_waiters:
            self._slot_waiters.popleft().set()
        else:
            self.running -= 1

    async def call_sync(
        self, func: Callable[[Event], Any], event: Event, on_started: Callable[[], None]
    ) -> Any:
        """Run a sync handler in a thread, within the ``sync_threads`` cap.

        ``on_started`` is called once a thread is granted, so that the caller
        can tell waiting for a thread from handler time. Cancelled, the awaiting
        task returns at once (the thread is abandoned, as Python cannot stop
        it), but the call keeps its thread's place in the cap until it returns.
        """
        await self._threads.acquire()
        self.threads_busy += 1
        on_started()
        loop = asyncio.get_running_loop()
        state = _CallState()

        def give_back() -> None:
            self.threads_busy -= 1
            self._threads.release()

        def call() -> Any:
            with state.lock:
                if state.abandoned:
                    return None
                state.running = True
            _count_call(1)
            try:
                return func(event)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    raise
                # GeneratorExit, SystemExit... must not cross into the event
                # loop as themselves (a GeneratorExit there breaks the awaiting
                # coroutine): carry them as a plain exception.
                raise EscapedBaseException(exc) from None
            finally:
                _count_call(-1)
                try:
                    loop.call_soon_threadsafe(give_back)
                except RuntimeError:  # the loop closed: the process is exiting
                    pass

        try:
            return await anyio.to_thread.run_sync(
                call, limiter=self._unbounded, abandon_on_cancel=True
            )
        finally:
            with state.lock:
                if not state.running:
                    # Never started (cancelled while queued): its place is ours
                    # to give back; the thread will skip it.
                    state.abandoned = True
                    give_back()


class EscapedBaseException(Exception):
    """A sync handler raised a BaseException that is not an Exception.

    Attributes:
        original: what the handler raised (SystemExit, GeneratorExit...).
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


class _Turn:
    __slots__ = ("enough", "event", "most", "woken")

    def __init__(self, most: int, enough: int) -> None:
        self.most = most
        self.enough = enough
        self.woken = False
        self.event = anyio.Event()


class _CallState:
    __slots__ = ("abandoned", "lock", "running")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = False
        self.abandoned = False


def _position(job: Ordered) -> tuple[int, int]:
    ms, _, seq = job.id.partition("-")
    return int(ms), int(seq or 0)
