"""Memory: the worker's RSS after a warm-up and after many more events."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import GROUP
from bench.observe import wait_consumer, wait_drained
from bench.procs import Child, WorkerSpec, rss_kb, worker
from bench.workload import add_entries

__all__ = ["MemoryResult", "run_memory"]

STREAM = "bench:memory"
CHUNK = 100_000


@dataclass(frozen=True, slots=True)
class MemoryResult:
    warmup_events: int
    events: int
    rss_after_warmup_mb: float
    rss_after_events_mb: float
    growth_mb: float
    seconds: float


def _feed(client: redis.Redis, child: Child, events: int, first: int) -> None:
    """Publish in chunks, letting the worker drain each, then trim the stream."""
    for start in range(first, first + events, CHUNK):
        count = min(CHUNK, first + events - start)
        add_entries(client, STREAM, count, start)
        wait_drained(client, STREAM, child.alive)
        client.xtrim(STREAM, maxlen=0)


def run_memory(
    client: redis.Redis,
    url: str,
    tmp: Path,
    warmup: int,
    events: int,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> MemoryResult:
    client.delete(STREAM)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    with worker(WorkerSpec(), url, STREAM, tmp) as child:
        wait_consumer(client, STREAM, child.alive)
        _feed(client, child, warmup, 0)
        time.sleep(0.5)
        before = rss_kb(child.pid)
        log(f"  RSS after {warmup:,} events: {before / 1024:.1f} MB")
        started = time.perf_counter()
        _feed(client, child, events, warmup)
        seconds = time.perf_counter() - started
        time.sleep(0.5)
        after = rss_kb(child.pid)
        log(f"  RSS after {events:,} more: {after / 1024:.1f} MB")
        child.stop_cleanly()
    client.delete(STREAM)
    return MemoryResult(
        warmup_events=warmup,
        events=events,
        rss_after_warmup_mb=before / 1024,
        rss_after_events_mb=after / 1024,
        growth_mb=(after - before) / 1024,
        seconds=seconds,
    )
