"""PauseWatch: which subscriptions an operator paused, polled from Redis.

``agentstream pause`` (or the web console) sets the key
``{stream}:paused:{group}``; every worker process polls the keys of its
subscriptions, so all replicas obey. A paused subscription's consumers finish
the batch in hand, send its acknowledgements, and read nothing more until it is
resumed; its reaper does not sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import structlog

from agentstream.errors import TransportError
from agentstream.transport.worker_ops import WorkerOps

__all__ = ["POLL_INTERVAL_S", "PauseWatch", "Reader"]

log = structlog.get_logger("agentstream.pause")

#: How often the pause keys are read. With the read cap below, a consumer
#: stops reading within a second of ``agentstream pause``.
POLL_INTERVAL_S = 0.2
#: Longest XREADGROUP block while pausing is possible: a read that began just
#: before a pause returns within this, and the next one waits.
MAX_BLOCK_MS = 700


class Reader(Protocol):
    """What ``hold`` needs of a consumer."""

    last_tick: float

    @property
    def transport(self) -> WorkerOps: ...


class PauseWatch:
    """Polls the pause key of each subscription; consumers wait on it.

    Args:
        transports: one per subscription (its stream and group).
        on_change: called with ``(stream, group, paused)`` at the first poll and
            on every change (the metrics gauge).
        interval_s: seconds between two polls.
    """

    max_block_ms = MAX_BLOCK_MS

    def __init__(
        self,
        transports: Sequence[WorkerOps],
        on_change: Callable[[str, str, bool], None] | None = None,
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._transports = list(transports)
        self._on_change = on_change
        self._interval_s = interval_s
        self._paused: dict[tuple[str, str], bool] = {}
        self._resumed: dict[tuple[str, str], anyio.Event] = {}
        self._failing = False
        #: Completed polls, for whoever must know the state was read since.
        self.polls = 0
        #: Readers waiting in ``hold`` now.
        self.holding = 0

    def paused(self, stream: str, group: str) -> bool:
        """Whether the subscription was paused at the last poll."""
        return self._paused.get((stream, group), False)

    async def run(self) -> None:
        """Poll every ``interval_s`` until cancelled.

        While Redis cannot be read, the last known state holds.
        """
        while True:
            await self.poll()
            await anyio.sleep(self._interval_s)

    async def poll(self) -> None:
        """Read every pause key once and apply changes."""
        for transport in self._transports:
            key = (transport.stream_name, transport.consumer_group)
            try:
                paused = await transport.apaused()
            except TransportError as exc:
                if not self._failing:
                    log.warning("pause_state_unreadable", error=str(exc))
                self._failing = True
                return
            self._failing = False
            if self._paused.get(key) == paused:
                continue
            first = key not in self._paused
            self._paused[key] = paused
            if paused:
                self._resumed[key] = anyio.Event()
            elif key in self._resumed:
                self._resumed.pop(key).set()
            if paused or not first:
                log.info(
                    "subscription_paused" if paused else "subscription_resumed",
                    stream=key[0],
                    group=key[1],
                )
            if self._on_change is not None:
                self._on_change(key[0], key[1], paused)
        self.polls += 1

    async def hold(self, reader: Reader, acks: list[bytes | str]) -> list[bytes | str]:
        """Return at once unless the reader's subscription is paused; else
        acknowledge ``acks`` and wait, keeping the reader live, until resumed.

        Returns the acknowledgements still to send with the next read.
        Cancelling (the consumer's stop) ends the wait.
        """
        key = (reader.transport.stream_name, reader.transport.consumer_group)
        if not self._paused.get(key):
            return acks
        if acks:
            await reader.transport.aack(acks)
        self.holding += 1
        try:
            while self._paused.get(key):
                reader.last_tick = time.monotonic()  # paused is not stuck
                with anyio.move_on_after(1.0):
                    await self._resumed[key].wait()
        finally:
            self.holding -= 1
        return []
