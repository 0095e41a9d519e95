"""Throughput cases: the same preloaded stream drained by each consumer."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.cpu import CpuSample, sampler
from bench.observe import time_drain
from bench.procs import Child, WorkerSpec, bench_module, worker
from bench.workload import Snapshot

__all__ = [
    "IO_CONCURRENCY",
    "IO_WAIT_S",
    "P1",
    "P2",
    "STREAM",
    "Case",
    "CaseResult",
    "cases",
    "io_case",
    "run_cases",
]

STREAM = "bench:throughput"
P1 = "worker p=1 c=1"
P2 = "worker p=2 c=1"
#: The I/O-bound cases: one process, one consumer, these concurrencies, and a
#: handler awaiting IO_WAIT_S: the ceiling is concurrency / IO_WAIT_S events/s.
IO_CONCURRENCY = (16, 256, 1024)
IO_WAIT_S = 0.02


def io_case(concurrency: int) -> str:
    """The name of the I/O-bound case at ``concurrency``."""
    return f"io-20ms p=1 c=1 C={concurrency}"


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    events: int
    worker: WorkerSpec | None = None  # None: the raw consumer
    pipelined: bool = False  # raw consumer only


@dataclass(slots=True)
class CaseResult:
    case: str
    events: int
    seconds: list[float] = field(default_factory=list)
    cpu_s: list[CpuSample] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.events / s for s in self.seconds]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def cpu_share(self, role: str) -> float:
        """Median CPU seconds per second of draining spent by ``role`` (cores)."""
        return statistics.median(
            c[role] / s for c, s in zip(self.cpu_s, self.seconds, strict=True)
        )

    def cpu_us_per_event(self, role: str) -> float:
        """Median CPU microseconds per event spent by ``role`` while draining."""
        return statistics.median(c[role] for c in self.cpu_s) / self.events * 1e6


def cases(
    events: int, sync_events: int, sleep_events: int, io_ceiling_s: float
) -> list[Case]:
    """Every throughput case, the reference ``raw`` first.

    Each I/O-bound case drains ``io_ceiling_s`` seconds' worth of events at
    its ceiling.
    """
    io = [
        Case(
            io_case(c),
            int(c / IO_WAIT_S * io_ceiling_s),
            WorkerSpec(1, 1, "io20", concurrency=c),
        )
        for c in IO_CONCURRENCY
    ]
    return [
        Case("raw", events),
        Case("raw-pipelined", events, pipelined=True),
        Case(P1, events, WorkerSpec(1, 1)),
        # The same on the stdlib's event loop: what uvloop (the default) adds.
        Case(f"{P1} asyncio", events, WorkerSpec(1, 1, event_loop="asyncio")),
        Case("worker p=1 c=4", events, WorkerSpec(1, 4)),
        Case(P2, events, WorkerSpec(2, 1)),
        Case("sync p=1 c=1", sync_events, WorkerSpec(1, 1, "sync")),
        Case("sync p=1 c=16", sync_events, WorkerSpec(1, 16, "sync")),
        Case("sleep-1ms p=1 c=1", sleep_events, WorkerSpec(1, 1, "sleep")),
        Case("sleep-1ms p=1 c=16", sleep_events, WorkerSpec(1, 16, "sleep")),
        Case(
            "sleep-1ms p=1 c=16 asyncio",
            sleep_events,
            WorkerSpec(1, 16, "sleep", event_loop="asyncio"),
        ),
        *io,
    ]


def _start(case: Case, url: str, tmp: Path) -> Child:
    if case.worker is not None:
        return worker(case.worker, url, STREAM, tmp)
    args = ["--url", url, "--stream", STREAM]
    if case.pipelined:
        args.append("--pipelined")
    return bench_module("raw_consumer", args, tmp / f"{case.name}.log")


def run_cases(
    client: redis.Redis,
    url: str,
    redis_pid: int,
    tmp: Path,
    selected: Sequence[Case],
    repeats: int,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> list[CaseResult]:
    """Run every case ``repeats`` times, interleaved, on identical streams."""
    snapshots: dict[int, Snapshot] = {}
    for case in selected:
        if case.events not in snapshots:
            log(f"preloading {case.events} events")
            snapshots[case.events] = Snapshot(client, STREAM, case.events)
    results = [CaseResult(c.name, c.events) for c in selected]
    for repeat in range(1, repeats + 1):
        for case, result in zip(selected, results, strict=True):
            snapshots[case.events].restore(client)
            with _start(case, url, tmp) as child:
                cpu = sampler(redis_pid, child.pid)
                drain = time_drain(client, STREAM, case.events, child.alive, cpu)
                child.stop_cleanly()
            result.seconds.append(drain.seconds)
            result.cpu_s.append(drain.cpu_s)
            rate = case.events / drain.seconds
            log(f"  [{repeat}/{repeats}] {case.name:<20} {rate:>10,.0f} events/s")
    client.delete(STREAM)
    return results
