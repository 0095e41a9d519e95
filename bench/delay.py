"""Delay: publish at a fixed rate to an idle worker; handler start - publish."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import GROUP
from bench.cpu import sampler
from bench.observe import BenchError, wait_consumer, wait_drained
from bench.procs import WorkerSpec, bench_module, worker

__all__ = ["DelayResult", "percentile", "run_delay"]


@dataclass(frozen=True, slots=True)
class DelayResult:
    rate: int
    duration_s: float
    events: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    producer_late_max_ms: float
    others_cpu_cores: float  # CPU used by the rest of the machine meanwhile


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def run_delay(
    client: redis.Redis,
    url: str,
    redis_pid: int,
    tmp: Path,
    rate: int,
    duration_s: float,
) -> DelayResult:
    stream = f"bench:delay:{rate}"
    out = tmp / f"delays-{rate}.txt"
    out.unlink(missing_ok=True)
    client.delete(stream)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    env = {"BENCH_DELAY_FILE": str(out)}
    with worker(WorkerSpec(handler="delay"), url, stream, tmp, env) as child:
        wait_consumer(client, stream, child.alive)
        time.sleep(0.5)  # let the worker settle into its blocking read
        cpu = sampler(redis_pid, child.pid)
        cpu0, started = cpu(), time.perf_counter()
        args = ["--url", url, "--stream", stream]
        args += ["--rate", str(rate), "--duration", str(duration_s)]
        producer = bench_module("producer", args, tmp / f"producer-{rate}.log")
        with producer:
            status = producer.wait(timeout=duration_s * 3 + 30)
        if status != 0:
            raise BenchError(f"producer exited with {status}:\n{producer.tail()}")
        report = json.loads(producer.tail(1))
        wait_drained(client, stream, child.alive)
        others = (cpu()["other"] - cpu0["other"]) / (time.perf_counter() - started)
        child.stop_cleanly()
    delays = [float(line) for line in out.read_text().split()]
    client.delete(stream)
    if len(delays) != report["published"]:
        raise BenchError(f"{len(delays)} delays for {report['published']} events")
    return DelayResult(
        rate=rate,
        duration_s=duration_s,
        events=len(delays),
        p50_ms=percentile(delays, 50) * 1000,
        p99_ms=percentile(delays, 99) * 1000,
        max_ms=max(delays) * 1000,
        producer_late_max_ms=report["late_max_s"] * 1000,
        others_cpu_cores=others,
    )
