"""CPU seconds used by processes, read from ``/proc`` (Linux)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ROLES", "CpuSample", "cpu_s", "family", "machine_busy_s", "sampler"]

_TICK = os.sysconf("SC_CLK_TCK")

#: CPU seconds by role: ``redis``, ``consumer`` (all its processes), ``bench``
#: (this process, which polls Redis every millisecond), ``other`` (the rest).
CpuSample = dict[str, float]
ROLES = ("consumer", "redis", "bench", "other")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads); 0 once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (a multi-process worker's children)."""
    out = [pid]
    for child in out:
        try:
            text = Path(f"/proc/{child}/task/{child}/children").read_text()
        except OSError:
            continue
        out += [int(p) for p in text.split()]
    return out


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def sampler(redis_pid: int, consumer_pid: int) -> Callable[[], CpuSample]:
    """A function returning the CPU used so far by Redis, the consumer, us and
    everything else on the machine (``other``: noise, if not near zero)."""

    def sample() -> CpuSample:
        consumer: Iterable[int] = family(consumer_pid)
        out = {
            "redis": cpu_s(redis_pid),
            "consumer": sum(cpu_s(p) for p in consumer),
            "bench": time.process_time(),
        }
        out["other"] = machine_busy_s() - sum(out.values())
        return out

    return sample
