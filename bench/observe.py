"""What the group has done, seen from Redis: XINFO GROUPS, polled."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from bench import GROUP
from bench.cpu import CpuSample

__all__ = [
    "BenchError",
    "Drain",
    "GroupState",
    "group_state",
    "time_drain",
    "wait_consumer",
    "wait_drained",
]

POLL_S = 0.001


class BenchError(RuntimeError):
    """A case did not run as expected (a consumer died, nothing moved...)."""


@dataclass(frozen=True, slots=True)
class GroupState:
    entries_read: int
    lag: int | None
    pending: int
    consumers: int
    last_delivered: bytes


def group_state(client: redis.Redis, stream: str) -> GroupState:
    groups: Any = client.xinfo_groups(stream)
    for group in groups:
        if group["name"] in (GROUP, GROUP.encode()):
            return GroupState(
                entries_read=int(group["entries-read"] or 0),
                lag=None if group["lag"] is None else int(group["lag"]),
                pending=int(group["pending"]),
                consumers=int(group["consumers"]),
                last_delivered=bytes(group["last-delivered-id"]),
            )
    raise BenchError(f"no group {GROUP!r} on {stream!r}")


@dataclass(frozen=True, slots=True)
class Drain:
    seconds: float
    cpu_s: CpuSample  # CPU used between t0 and t1, by role


def time_drain(
    client: redis.Redis,
    stream: str,
    total: int,
    alive: Callable[[], bool],
    cpu: Callable[[], CpuSample] = dict,
    stall_s: float = 60.0,
) -> Drain:
    """Time from the first delivery until all ``total`` are read and acked.

    t0 is the first poll that sees ``entries-read > 0``; t1 the first that sees
    ``entries-read == total``, ``pending == 0`` and ``lag == 0``. ``cpu`` is
    sampled at both.
    """
    t0: float | None = None
    cpu0: CpuSample = {}
    seen: GroupState | None = None
    deadline = time.perf_counter() + stall_s
    while True:
        state = group_state(client, stream)
        now = time.perf_counter()
        if t0 is None and state.entries_read > 0:
            t0, cpu0 = now, cpu()
        if t0 is not None and (
            state.entries_read == total and state.pending == 0 and state.lag == 0
        ):
            if now <= t0:
                raise BenchError("drained before a second poll: use more events")
            cpu1 = cpu()
            return Drain(now - t0, {k: cpu1[k] - cpu0[k] for k in cpu1})
        if state != seen:
            seen, deadline = state, now + stall_s
        elif now > deadline:
            raise BenchError(f"no progress for {stall_s:.0f}s on {stream}: {state}")
        if not alive():
            raise BenchError(f"the consumer exited before draining {stream}")
        time.sleep(POLL_S)


def wait_drained(
    client: redis.Redis, stream: str, alive: Callable[[], bool], stall_s: float = 60.0
) -> None:
    """Wait until the group delivered the last entry and nothing is pending."""
    last = client.xinfo_stream(stream)["last-generated-id"]
    seen: GroupState | None = None
    deadline = time.monotonic() + stall_s
    while True:
        state = group_state(client, stream)
        if state.last_delivered == last and state.pending == 0:
            return
        if state != seen:
            seen, deadline = state, time.monotonic() + stall_s
        elif time.monotonic() > deadline:
            raise BenchError(f"no progress for {stall_s:.0f}s on {stream}: {state}")
        if not alive():
            raise BenchError(f"the consumer exited before draining {stream}")
        time.sleep(0.01)


def wait_consumer(
    client: redis.Redis, stream: str, alive: Callable[[], bool], timeout: float = 30
) -> None:
    """Wait until a reading consumer (not a reaper) has joined the group."""
    deadline = time.monotonic() + timeout
    while True:
        names = [bytes(c["name"]) for c in client.xinfo_consumers(stream, GROUP)]
        if any(not n.endswith(b"-reaper") for n in names):
            return
        if not alive():
            raise BenchError(f"the worker exited before reading {stream}")
        if time.monotonic() > deadline:
            raise BenchError(f"no consumer joined {stream} within {timeout:.0f}s")
        time.sleep(0.02)
