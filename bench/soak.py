"""Load and soak: one worker under steady load for minutes, or a million events.

``python -m bench.soak`` (``--rate 2000 --duration-s 600``) starts a throwaway
``redis-server``, one ``agentstream-worker`` (processes=1, consumers=1) and a
producer publishing at a fixed rate for the duration. The handler records each
event's delay (handler start minus ``event.timestamp``); every ``--sample-s``
the worker's RSS, open file descriptors, threads, TCP connections to Redis and
asyncio task count are sampled. Results go to ``bench/results/soak.json`` and a
plot to ``bench/results/soak.png``.

``python -m bench.soak --events 1000000`` instead pushes a million events
through the worker as fast as it takes them (after a warm-up, in preloaded
chunks of 100,000, as ``python -m bench`` does for memory), sampling the same,
and writes ``bench/results/soak-events.json`` and ``.png``.

Connections are the worker's socket descriptors whose peer is the Redis port
(``/proc/<pid>/fd`` matched against ``/proc/<pid>/net/tcp``). Tasks cannot be
counted from outside the process: the soak app's handler (bench/soak_app.py)
writes ``len(asyncio.all_tasks())`` to a file every second or so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
except ModuleNotFoundError as _missing:  # the bench extra is optional
    sys.exit(
        f"python -m bench.soak needs the bench extra ({_missing.name} is missing): "
        ".venv/bin/pip install -e '.[bench]'"
    )

from agentstream.config import LogSettings
from agentstream.logging import configure_logging
from bench import GROUP, results_dir
from bench.cpu import cpu_s, machine_busy_s
from bench.observe import BenchError, group_state, wait_consumer, wait_drained
from bench.procs import APP_MODULE, Child, WorkerSpec, bench_module, worker_command
from bench.redis_server import BenchRedis
from bench.report import machine_info, table, write_json
from bench.workload import add_entries

__all__ = ["main", "plot", "proc_snapshot"]

RATE_STREAM = "bench:soak"
EVENTS_STREAM = "bench:soak-events"
RSS_GROWTH_LIMIT_MB = 10.0
P99_LIMIT_MS = 5.0
#: A delay window is "quiet" if the rest of the machine used less CPU than this.
QUIET_CORES = 0.1


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- what is sampled ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcSnapshot:
    rss_kb: int
    threads: int
    fds: int
    sockets: int  # socket descriptors of any kind
    redis_conns: int  # TCP sockets whose peer is the Redis port, established
    redis_ports: tuple[int, ...]  # their local ports
    cpu_s: float


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _socket_inodes(pid: int) -> tuple[int, set[int]]:
    """The number of open descriptors and the inodes of the sockets among them."""
    fd_dir = Path(f"/proc/{pid}/fd")
    names = os.listdir(fd_dir)
    inodes: set[int] = set()
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return len(names), inodes


def _tcp_peers(pid: int, inodes: set[int], port: int) -> list[int]:
    """The local ports of those of ``inodes`` that are established TCP
    connections to ``port``."""
    local_ports: list[int] = []
    for table_name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table_name}").read_text().splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            peer = int(remote.rpartition(":")[2], 16)
            if int(fields[9]) in inodes and state == "01" and peer == port:
                local_ports.append(int(local.rpartition(":")[2], 16))
    return local_ports


def proc_snapshot(pid: int, redis_port: int) -> ProcSnapshot:
    """RSS, threads, descriptors and Redis connections of one process."""
    status = _status(pid)
    fds, inodes = _socket_inodes(pid)
    ports = tuple(sorted(_tcp_peers(pid, inodes, redis_port)))
    return ProcSnapshot(
        rss_kb=int(status["VmRSS"].split()[0]),
        threads=int(status["Threads"]),
        fds=fds,
        sockets=len(inodes),
        redis_conns=len(ports),
        redis_ports=ports,
        cpu_s=cpu_s(pid),
    )


def redis_clients(client: redis.Redis, pid: int, redis_port: int) -> list[Any]:
    """``CLIENT LIST`` entries of the process's connections: what each last did."""
    _, inodes = _socket_inodes(pid)
    ports = set(_tcp_peers(pid, inodes, redis_port))
    keep = ("addr", "name", "age", "idle", "cmd")
    return [
        {k: c.get(k) for k in keep}
        for c in client.client_list()
        if int(str(c["addr"]).rpartition(":")[2]) in ports
    ]


class TasksLog:
    """The JSON lines the soak app writes: task counts and events handled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._offset = 0
        self._lock = threading.Lock()

    def read(self) -> None:
        with self._lock:
            try:
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return
            complete = data[: data.rfind(b"\n") + 1]
            self._offset += len(complete)
            self.records += [json.loads(line) for line in complete.splitlines()]

    def latest_tasks(self) -> int | None:
        with self._lock:
            for record in reversed(self.records):
                if "tasks" in record:
                    return int(record["tasks"])
        return None

    def handled(self) -> int:
        with self._lock:
            return int(self.records[-1]["handled"]) if self.records else 0

    def exit_handled(self) -> int | None:
        with self._lock:
            exits = [r for r in self.records if r.get("exit")]
        return int(exits[-1]["handled"]) if exits else None


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # since the load started
    proc: ProcSnapshot
    cpu_s: dict[str, float]  # CPU seconds so far by role (_CPU_ROLES), "machine"
    tasks: int | None
    handled: int
    entries_read: int | None
    pending: int | None
    lag: int | None
    #: Distinct connections of the worker's seen so far (by local port).
    redis_conns_seen: int
    #: Redis's ``total_connections_received``: every client's, the bench's too.
    redis_connections_received: int | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t_s": round(self.t_s, 3)}
        out.update(asdict(self.proc))
        out["rss_mb"] = round(self.proc.rss_kb / 1024, 3)
        out.update(
            cpu_s_by_role=self.cpu_s,
            tasks=self.tasks,
            handled=self.handled,
            entries_read=self.entries_read,
            pending=self.pending,
            lag=self.lag,
            redis_conns_seen=self.redis_conns_seen,
            redis_connections_received=self.redis_connections_received,
        )
        del out["redis_ports"]
        return out


class Sampler:
    """Samples the worker every ``interval_s`` on absolute deadlines, in a thread."""

    def __init__(
        self,
        pid: int,
        server: BenchRedis,
        stream: str,
        tasks: TasksLog,
        interval_s: float,
    ) -> None:
        self.pid = pid
        self.server = server
        self.stream = stream
        self.tasks = tasks
        self.interval_s = interval_s
        self.t0 = time.time()
        self.samples: list[Sample] = []
        #: Processes whose CPU is accounted by role; the producer joins later.
        self.roles = {"worker": pid, "redis": server.pid}
        self._cpu_seen: dict[str, float] = {}
        self._ports_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, client: redis.Redis | None = None) -> Sample:
        self.tasks.read()
        proc = proc_snapshot(self.pid, self.server.port)
        cpu = {"machine": machine_busy_s(), "bench": time.process_time()}
        for role, pid in list(self.roles.items()):
            # a process that has exited reads 0: keep what it last used
            used = max(cpu_s(pid), self._cpu_seen.get(role, 0.0))
            cpu[role] = self._cpu_seen[role] = used
        self._ports_seen.update(proc.redis_ports)
        entries_read = pending = lag = received = None
        if client is not None:
            try:
                state = group_state(client, self.stream)
                stats: Any = client.info("stats")
            except (redis.RedisError, BenchError):
                pass
            else:
                received = int(stats["total_connections_received"])
                entries_read, pending, lag = (
                    state.entries_read,
                    state.pending,
                    state.lag,
                )
        return Sample(
            t_s=time.time() - self.t0,
            proc=proc,
            cpu_s=cpu,
            tasks=self.tasks.latest_tasks(),
            handled=self.tasks.handled(),
            entries_read=entries_read,
            pending=pending,
            lag=lag,
            redis_conns_seen=len(self._ports_seen),
            redis_connections_received=received,
        )

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = self.server.client()
        try:
            k = 0
            while not self._stop.is_set():
                self.samples.append(self.take(client))
                k += 1
                self._stop.wait(max(self.t0 + k * self.interval_s - time.time(), 0))
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


# -- the worker ---------------------------------------------------------------


def soak_worker(
    url: str, stream: str, tmp: Path, consumers: int, env: dict[str, str]
) -> Child:
    """``agentstream-worker`` (processes=1) running bench/soak_app.py."""
    app = Path(__file__).with_name("soak_app.py")
    shutil.copyfile(app, tmp / f"{APP_MODULE}.py")
    spec = WorkerSpec(processes=1, consumers=consumers, handler="soak")
    config = tmp / f"worker-soak-c{consumers}.toml"
    config.write_text(spec.toml(url, stream))
    log = tmp / f"worker-soak-c{consumers}.log"
    return Child(worker_command(config), log, cwd=tmp, env=env)


# -- statistics -----------------------------------------------------------------


def _rank(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


def _median(values: Sequence[float]) -> float:
    return _rank(sorted(values), 50)


def _windows(
    pairs: array[float], t0: float, window_s: float
) -> list[dict[str, float | int]]:
    """Delay p50/p99/max (ms) per window of handler start times since ``t0``."""
    buckets: dict[int, list[float]] = {}
    for i in range(0, len(pairs), 2):
        k = int((pairs[i] - t0) // window_s)
        buckets.setdefault(k, []).append(pairs[i + 1])
    out: list[dict[str, float | int]] = []
    for k in sorted(buckets):
        ordered = sorted(buckets[k])
        out.append(
            {
                "t_s": (k + 1) * window_s,  # the window's end
                "events": len(ordered),
                "p50_ms": _rank(ordered, 50) * 1000,
                "p99_ms": _rank(ordered, 99) * 1000,
                "max_ms": ordered[-1] * 1000,
            }
        )
    return out


_CPU_ROLES = ("worker", "redis", "producer", "bench", "others")


def _cores(first: Sample, last: Sample) -> dict[str, float]:
    """Mean CPU cores busy between two samples, by role. ``others`` is the rest
    of the machine: anything else running meanwhile (noise, if not near 0)."""
    elapsed = last.t_s - first.t_s
    if elapsed <= 0:
        return dict.fromkeys(_CPU_ROLES, 0.0)
    out = {
        role: (last.cpu_s.get(role, 0.0) - first.cpu_s.get(role, 0.0)) / elapsed
        for role in (*_CPU_ROLES[:-1], "machine")
    }
    out["others"] = out.pop("machine") - sum(out.values())
    return {role: round(out[role], 4) for role in _CPU_ROLES}


def _cpu_rows(samples: Sequence[Sample]) -> list[dict[str, float]]:
    """Cores busy by role over each interval between samples (``t_s``: its end)."""
    return [{"t_s": b.t_s, **_cores(a, b)} for a, b in itertools.pairwise(samples)]


#: "No growth" compares the largest value in the last fifth of the measured
#: samples (after the warm-up) with the largest in the first fifth.
_FIFTH = 0.2


def _resources(
    idle: Sample, start: Sample, end: Sample, samples: Sequence[Sample]
) -> dict[str, Any]:
    """Idle/start/end/min/max of what was sampled; ``start`` (after the warm-up)
    is the baseline. ``samples`` are the periodic ones, ``end`` the last."""
    every = [idle, *samples, end]
    measured = [x for x in [*samples, end] if x.t_s >= start.t_s]
    n = max(math.ceil(len(measured) * _FIFTH), 1)
    early, late = measured[:n], measured[-n:]

    def series(get: Callable[[Sample], float | None]) -> dict[str, float | None]:
        def top(rows: Sequence[Sample]) -> float | None:
            return max((v for v in map(get, rows) if v is not None), default=None)

        values = [v for v in map(get, every) if v is not None]
        return {
            "idle": get(idle),
            "start": get(start),
            "end": get(end),
            "min": min(values, default=None),
            "max": max(values, default=None),
            "max_first_fifth": top(early),
            "max_last_fifth": top(late),
        }

    rss = series(lambda s: round(s.proc.rss_kb / 1024, 2))
    assert rss["start"] is not None and rss["end"] is not None
    rss["growth"] = round(rss["end"] - rss["start"], 2)
    return {
        "rss_mb": rss,
        "fds": series(lambda s: s.proc.fds),
        "redis_conns": series(lambda s: s.proc.redis_conns),
        "redis_conns_seen": series(lambda s: s.redis_conns_seen),
        "redis_connections_received": series(lambda s: s.redis_connections_received),
        "threads": series(lambda s: s.proc.threads),
        "tasks": series(lambda s: s.tasks),
    }


def _target(name: str, value: float, met: bool) -> dict[str, Any]:
    return {"target": name, "value": round(value, 3), "met": met}


def _no_growth(key: str, values: dict[str, Any]) -> dict[str, Any]:
    """Met if the last fifth's largest value is no larger than the first's."""
    name = f"no growth of {key.replace('_', ' ')} (max, last vs first fifth)"
    early, late = values["max_first_fifth"], values["max_last_fifth"]
    if early is None or late is None:
        return {"target": name, "value": None, "met": False}
    return _target(name, late, late <= early)


def _settled(
    client: redis.Redis, stream: str, published: int, handled: int | None
) -> dict[str, Any]:
    """Published vs read vs handled, and what is left pending, at the end."""
    state = group_state(client, stream)
    pending: Any = client.xpending(stream, GROUP)
    return {
        "published": published,
        "entries_read": state.entries_read,
        "handled": handled,
        "pending": int(pending["pending"]),
        "lag": state.lag,
    }


def _check_settled(settled: dict[str, Any]) -> list[dict[str, Any]]:
    ok = (
        settled["handled"] == settled["published"] == settled["entries_read"]
        and settled["pending"] == 0
        and settled["lag"] == 0
    )
    return [_target("all published events handled, none pending, lag 0", 1, ok)]


# -- the soak at a fixed rate -------------------------------------------------


def run_rate(
    server: BenchRedis,
    tmp: Path,
    rate: int,
    duration_s: float,
    sample_s: float,
    warmup_s: float,
    consumers: int,
) -> dict[str, Any]:
    client = server.client()
    stream = RATE_STREAM
    client.delete(stream)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    delay_file, tasks_file = tmp / "soak-delays.f64", tmp / "soak-tasks.jsonl"
    env = {
        "BENCH_SOAK_DELAY_FILE": str(delay_file),
        "BENCH_SOAK_TASKS_FILE": str(tasks_file),
        "BENCH_SOAK_TASKS_EVERY_S": "1",
    }
    tasks = TasksLog(tasks_file)
    with soak_worker(server.url, stream, tmp, consumers, env) as child:
        wait_consumer(client, stream, child.alive)
        time.sleep(1.0)  # let the worker settle into its blocking read
        sampler = Sampler(child.pid, server, stream, tasks, sample_s)
        idle = sampler.take(client)
        t0 = time.time()
        args = ["--url", server.url, "--stream", stream]
        args += ["--rate", str(rate), "--duration", str(duration_s)]
        sampler.start(t0)
        try:
            with bench_module("producer", args, tmp / "producer.log") as producer:
                sampler.roles["producer"] = producer.pid
                status = _wait_producer(producer, child, sampler, duration_s)
            if status != 0:
                raise BenchError(f"producer exited with {status}:\n{producer.tail()}")
            report = json.loads(producer.tail(1))
            wait_drained(client, stream, child.alive)
        finally:
            sampler.stop()
        time.sleep(sample_s / 2)
        end = sampler.take(client)
        settled = _settled(client, stream, int(report["published"]), None)
        connections = redis_clients(client, child.pid, server.port)
        child.stop_cleanly()
    tasks.read()
    settled["handled"] = tasks.exit_handled()
    pairs = array("d")
    pairs.frombytes(delay_file.read_bytes())
    client.delete(stream)
    delays = sorted(pairs[1::2])
    samples = sampler.samples
    start = next((s for s in samples if s.t_s >= warmup_s), end)
    cpu_rows = _cpu_rows([*samples, end])
    windows = _windows(pairs, t0, sample_s)
    others = {round(row["t_s"] / sample_s): row["others"] for row in cpu_rows}
    for window in windows:
        window["others_cores"] = others.get(round(window["t_s"] / sample_s), math.nan)
    quiet = [w for w in windows if w["others_cores"] < QUIET_CORES]
    summary = {
        "delay_ms": {
            "events": len(delays),
            "p50": _rank(delays, 50) * 1000,
            "p99": _rank(delays, 99) * 1000,
            "p99_9": _rank(delays, 99.9) * 1000,
            "max": delays[-1] * 1000,
            "windows": len(windows),
            "windows_p99_over_limit": sum(
                1 for w in windows if w["p99_ms"] >= P99_LIMIT_MS
            ),
            "window_p99_median": _median([w["p99_ms"] for w in windows]),
            # windows while the rest of the machine was (nearly) idle
            "quiet_windows": len(quiet),
            "quiet_windows_p99_over_limit": sum(
                1 for w in quiet if w["p99_ms"] >= P99_LIMIT_MS
            ),
            "quiet_windows_p99_max": max((w["p99_ms"] for w in quiet), default=None),
        },
        **_resources(idle, start, end, samples),
        "events": settled,
        "redis_clients_at_end": connections,
        "producer_late_max_ms": report["late_max_s"] * 1000,
        "producer_elapsed_s": report["elapsed_s"],
        "cpu_cores": _cores(samples[0], end),
    }
    rss = summary["rss_mb"]
    targets = _check_settled(settled)
    targets.append(
        _target(
            f"RSS growth < {RSS_GROWTH_LIMIT_MB:g} MB after the warm-up",
            rss["growth"],
            rss["growth"] < RSS_GROWTH_LIMIT_MB,
        )
    )
    p99 = summary["delay_ms"]["p99"]
    targets.append(
        _target(
            f"p99 delay < {P99_LIMIT_MS:g} ms at {rate:,}/s", p99, p99 < P99_LIMIT_MS
        )
    )
    targets += [_no_growth(k, summary[k]) for k in ("fds", "redis_conns", "tasks")]
    return {
        "mode": "rate",
        "params": {
            "rate": rate,
            "duration_s": duration_s,
            "sample_s": sample_s,
            "warmup_s": warmup_s,
            "processes": 1,
            "consumers": consumers,
            "batch_size": 100,
            "block_ms": 100,
            "handler": "async, records its delay (bench/soak_app.py)",
        },
        "summary": summary,
        "targets": targets,
        "idle": idle.as_json(),
        "samples": [s.as_json() for s in [*samples, end]],
        "cpu": cpu_rows,
        "windows": windows,
    }


def _wait_producer(
    producer: Child, worker: Child, sampler: Sampler, duration_s: float
) -> int:
    """Wait for the producer, reporting progress every minute or so."""
    deadline = time.monotonic() + duration_s * 2 + 60
    while True:
        try:
            return producer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if not worker.alive():
            raise BenchError(f"the worker exited during the soak:\n{worker.tail()}")
        if time.monotonic() > deadline:
            raise BenchError("the producer did not finish in time")
        if sampler.samples:
            _progress(_line(sampler.samples[-1]))


def _line(s: Sample) -> str:
    return (
        f"  t={s.t_s:5.0f}s handled={s.handled:,} rss={s.proc.rss_kb / 1024:.1f}MB "
        f"fds={s.proc.fds} redis_conns={s.proc.redis_conns} "
        f"threads={s.proc.threads} tasks={s.tasks} pending={s.pending} lag={s.lag}"
    )


# -- a million events as fast as the worker takes them ------------------------


def run_events(
    server: BenchRedis,
    tmp: Path,
    events: int,
    warmup: int,
    chunk: int,
    sample_s: float,
    consumers: int,
) -> dict[str, Any]:
    client = server.client()
    stream = EVENTS_STREAM
    client.delete(stream)
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    tasks_file = tmp / "soak-events-tasks.jsonl"
    env = {"BENCH_SOAK_TASKS_FILE": str(tasks_file), "BENCH_SOAK_TASKS_EVERY_S": "0.5"}
    tasks = TasksLog(tasks_file)
    checkpoints: list[dict[str, Any]] = []
    with soak_worker(server.url, stream, tmp, consumers, env) as child:
        wait_consumer(client, stream, child.alive)
        time.sleep(1.0)
        sampler = Sampler(child.pid, server, stream, tasks, sample_s)
        idle = sampler.take(client)
        t0 = time.time()
        sampler.start(t0)

        def feed(count: int, first: int) -> None:
            for begin in range(first, first + count, chunk):
                n = min(chunk, first + count - begin)
                add_entries(client, stream, n, begin)
                wait_drained(client, stream, child.alive)
                client.xtrim(stream, maxlen=0)
                sample = sampler.take(client)
                checkpoints.append({"events": begin + n, **sample.as_json()})
                _progress(_line(sample))

        try:
            feed(warmup, 0)
            time.sleep(0.5)
            after_warmup = sampler.take(client)
            started = time.perf_counter()
            feed(events, warmup)
            seconds = time.perf_counter() - started
        finally:
            sampler.stop()
        time.sleep(0.5)
        end = sampler.take(client)
        settled = _settled(client, stream, warmup + events, None)
        connections = redis_clients(client, child.pid, server.port)
        child.stop_cleanly()
    tasks.read()
    settled["handled"] = tasks.exit_handled()
    client.delete(stream)
    samples = sampler.samples
    summary = {
        "warmup_events": warmup,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        **_resources(idle, after_warmup, end, samples),
        "events_handled": settled,
        "redis_clients_at_end": connections,
    }
    summary["cpu_cores"] = _cores(samples[0], end)
    rss = summary["rss_mb"]
    targets = _check_settled(settled)
    name = f"RSS growth < {RSS_GROWTH_LIMIT_MB:g} MB over {events:,} events"
    targets.append(_target(name, rss["growth"], rss["growth"] < RSS_GROWTH_LIMIT_MB))
    keys = ("fds", "redis_conns", "threads", "tasks")
    targets += [_no_growth(k, summary[k]) for k in keys]
    return {
        "mode": "events",
        "params": {
            "events": events,
            "warmup": warmup,
            "chunk": chunk,
            "sample_s": sample_s,
            "processes": 1,
            "consumers": consumers,
            "batch_size": 100,
            "block_ms": 100,
            "handler": "async, counts events (bench/soak_app.py)",
        },
        "summary": summary,
        "targets": targets,
        "idle": idle.as_json(),
        "after_warmup": after_warmup.as_json(),
        "checkpoints": checkpoints,
        "samples": [s.as_json() for s in [*samples, end]],
        "cpu": _cpu_rows([*samples, end]),
    }


# -- output -----------------------------------------------------------------------


def _fmt(value: Any, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def summary_tables(data: dict[str, Any]) -> str:
    s = data["summary"]
    parts: list[str] = []
    if data["mode"] == "rate":
        p = data["params"]
        d = s["delay_ms"]
        head = ["soak", "events", "p50 ms", "p99 ms", "p99.9 ms", "max ms"]
        head.append(f"windows p99 ≥ {P99_LIMIT_MS:g} ms")
        row = [
            f"{p['rate']:,}/s for {p['duration_s']:g} s",
            f"{d['events']:,}",
            *(f"{d[k]:.2f}" for k in ("p50", "p99", "p99_9", "max")),
            f"{d['windows_p99_over_limit']} of {d['windows']}",
        ]
        parts.append(table(head, [row]))
        quiet = (
            f"delay windows while the rest of the machine used < {QUIET_CORES:g} "
            f"cores: {d['quiet_windows']} of {d['windows']}, "
            f"{d['quiet_windows_p99_over_limit']} with p99 ≥ {P99_LIMIT_MS:g} ms, "
            f"largest p99 {_fmt(d['quiet_windows_p99_max'], '.2f')} ms; "
            f"median window p99 {d['window_p99_median']:.2f} ms"
        )
        parts.append(quiet)
        settled = s["events"]
    else:
        settled = s["events_handled"]
        row = [
            f"{s['events']:,} (+{s['warmup_events']:,} warm-up)",
            f"{s['seconds']:.1f}",
            f"{s['events_per_s']:,.0f}",
        ]
        parts.append(table(["events", "seconds", "events/s incl. XADD"], [row]))
    if data["mode"] == "rate":
        base = f"at {data['params']['warmup_s']:g} s"
    else:
        base = "after warm-up"
    rows = []
    for key, label, spec in (
        ("rss_mb", "RSS MB", ".1f"),
        ("fds", "open fds", ""),
        ("redis_conns", "Redis connections", ""),
        ("redis_conns_seen", "distinct Redis connections so far", ""),
        ("redis_connections_received", "Redis total_connections_received", ""),
        ("threads", "threads", ""),
        ("tasks", "asyncio tasks", ""),
    ):
        v = s[key]
        keys = ("idle", "start", "end", "min", "max", "max_first_fifth")
        rows.append([label, *(_fmt(v[k], spec) for k in (*keys, "max_last_fifth"))])
    head = ["", "idle", base, "end", "min", "max", "max 1st fifth", "max last fifth"]
    parts.append(table(head, rows))
    parts.append(
        table(
            ["published", "read by group", "handled", "pending", "lag"],
            [
                [
                    _fmt(settled[k], ",")
                    for k in ("published", "entries_read", "handled", "pending", "lag")
                ]
            ],
        )
    )
    clients = s["redis_clients_at_end"]
    parts.append(
        table(
            ["worker's Redis connection at the end", "age s", "idle s", "last command"],
            [
                [
                    str(c["name"] or c["addr"]),
                    str(c["age"]),
                    str(c["idle"]),
                    str(c["cmd"]),
                ]
                for c in clients
            ],
        )
    )
    cores = s["cpu_cores"]
    parts.append(
        table(
            ["CPU cores busy (mean)", *_CPU_ROLES],
            [["", *(f"{cores[r]:.2f}" for r in _CPU_ROLES)]],
        )
    )
    checks = [
        [t["target"], _fmt(t["value"], "g"), "yes" if t["met"] else "NO"]
        for t in data["targets"]
    ]
    parts.append(table(["target", "measured", "met"], checks))
    return "\n\n".join(parts)


def _values(rows: list[dict[str, Any]], key: str) -> list[float]:
    """A column to plot, gaps (``None``) as NaN."""
    return [math.nan if r[key] is None else float(r[key]) for r in rows]


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds:g} s"


def _tick(value: float, pos: int | None) -> str:
    return f"{value:g}"


def _minor_tick(value: float, pos: int | None) -> str:
    """Label 2 and 5 of each decade on a log axis, no other minor ticks."""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(mantissa) in (2, 5) else ""


_COUNTS = (
    # key, label, colour, line style, width: the counts often coincide
    ("fds", "open fds", "tab:orange", "-", 3.0),
    ("redis_conns", "Redis connections", "tab:green", "-", 2.0),
    ("threads", "threads", "tab:red", "-", 2.0),
    ("tasks", "asyncio tasks", "tab:purple", "--", 1.5),
)


def plot(data: dict[str, Any], path: Path) -> None:
    """Delay per window and resources over time (rate), or over events (events)."""
    fig = Figure(figsize=(11, 9.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom, cpu_ax = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.6]}
    )
    p = data["params"]
    samples = data["samples"]
    baseline = data["summary"]["rss_mb"]["start"]
    if data["mode"] == "rate":
        x = [s["t_s"] / 60 for s in samples]
        w = data["windows"]
        wx = [row["t_s"] / 60 for row in w]
        for key, label in (("max_ms", "max"), ("p99_ms", "p99"), ("p50_ms", "p50")):
            top.plot(wx, [row[key] for row in w], label=label, linewidth=1)
        top.axhline(
            P99_LIMIT_MS,
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label=f"{P99_LIMIT_MS:g} ms (p99 target)",
        )
        top.set_yscale("log")
        top.yaxis.set_major_formatter(FuncFormatter(_tick))
        top.yaxis.set_minor_formatter(FuncFormatter(_minor_tick))
        top.set_ylabel(f"delay per {p['sample_s']:g} s window (ms)")
        top.set_title(
            f"agentstream soak: {p['rate']:,} events/s for {_duration(p['duration_s'])},"
            f" one worker (processes=1, consumers={p['consumers']})"
        )
        top.legend(loc="upper right", ncols=4)
        cpu_ax.set_xlabel("minutes")
        warmup = p["warmup_s"] / 60
        cpu_x = [row["t_s"] / 60 for row in data["cpu"]]
        for ax in (top, bottom, cpu_ax):
            ax.axvline(warmup, color="grey", linewidth=0.8, linestyle=":")
        bottom.annotate(
            " baseline (after warm-up)",
            (warmup, 0.02),
            xycoords=("data", "axes fraction"),
        )
    else:
        x = [(s["entries_read"] or 0) / 1e6 for s in samples]
        checkpoints = data["checkpoints"]
        warmup = p["warmup"] / 1e6
        for ax in (top, bottom, cpu_ax):
            ax.axvline(warmup, color="grey", linewidth=0.8, linestyle=":")
        bottom.annotate(
            " end of warm-up (baseline)",
            (warmup, 0.02),
            xycoords=("data", "axes fraction"),
        )
        cpu_ax.set_xlabel("events read by the group (millions)")
        read = {round(s["t_s"], 3): (s["entries_read"] or 0) / 1e6 for s in samples}
        cpu_x = [read.get(round(row["t_s"], 3), math.nan) for row in data["cpu"]]
        top.set_title(
            f"agentstream: {p['events']:,} events (+{p['warmup']:,} warm-up) through"
            f" one worker (processes=1, consumers={p['consumers']})"
        )
    rss = [s["rss_mb"] for s in samples]
    rss_ax = bottom if data["mode"] == "rate" else top
    rss_ax.plot(x, rss, color="tab:blue", label="RSS (MB)", marker=".", markersize=3)
    if data["mode"] == "events":
        rss_ax.plot(
            [c["events"] / 1e6 for c in checkpoints],
            [c["rss_mb"] for c in checkpoints],
            "o",
            color="tab:blue",
            label="RSS after each chunk drained",
        )
    limit = baseline + RSS_GROWTH_LIMIT_MB
    rss_ax.axhline(
        limit,
        color="tab:blue",
        linestyle="--",
        linewidth=0.8,
        label=f"baseline + {RSS_GROWTH_LIMIT_MB:g} MB (growth limit)",
    )
    rss_ax.set_ylim(min(rss) - 5, max(max(rss), limit) + 5)
    rss_ax.set_ylabel("worker RSS (MB)", color="tab:blue")
    counts_ax = bottom.twinx() if data["mode"] == "rate" else bottom
    for key, label, color, style, width in _COUNTS:
        counts_ax.plot(
            x,
            _values(samples, key),
            color=color,
            linestyle=style,
            linewidth=width,
            label=label,
            drawstyle="steps-post",
        )
    counts_ax.set_ylabel("count")
    counts_ax.set_ylim(0, max(s["fds"] for s in samples) * 1.6)
    lines = bottom.get_lines() + (
        counts_ax.get_lines() if counts_ax is not bottom else []
    )
    labelled = [ln for ln in lines if not str(ln.get_label()).startswith("_")]
    bottom.legend(
        labelled, [str(ln.get_label()) for ln in labelled], loc="upper left", ncols=3
    )
    if rss_ax is top:
        top.legend(loc="lower right")
    names = {"bench": "bench (XADD preload)"} if data["mode"] == "events" else {}
    for role in _CPU_ROLES:
        values = [row[role] for row in data["cpu"]]
        if any(values):  # no producer with --events
            label = names.get(role, role)
            cpu_ax.plot(cpu_x, values, label=label, linewidth=1)
    cpu_ax.set_ylabel("CPU (cores)")
    cpu_ax.set_ylim(0, max(2.0, *(row["others"] for row in data["cpu"])))
    cpu_ax.legend(loc="upper right", ncols=len(_CPU_ROLES), fontsize="small")
    for ax in (top, bottom, cpu_ax):
        ax.grid(True, which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# -- command line -------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--rate", type=int, default=2000, help="events/s (%(default)s)")
    parser.add_argument(
        "--duration-s", type=float, default=600.0, help="seconds (%(default)s)"
    )
    parser.add_argument(
        "--events",
        type=int,
        help="instead of a timed soak, push this many events as fast as possible",
    )
    parser.add_argument(
        "--million", action="store_true", help="the same as --events 1000000"
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=60.0,
        help="the soak's baseline is the first sample after this (%(default)s)",
    )
    parser.add_argument("--warmup", type=int, default=50_000, help="with --events")
    parser.add_argument("--chunk", type=int, default=100_000, help="with --events")
    parser.add_argument(
        "--sample-s",
        type=float,
        help="sampling interval and delay window (5 s; 0.5 s with --events)",
    )
    parser.add_argument("--consumers", type=int, default=1, help="(%(default)s)")
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON results, the PNG beside it (bench/results/soak.json, or "
        "soak-events.json with --events)",
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help="write to the committed bench/results/ (default: bench/results/local/)",
    )
    parser.add_argument(
        "--plot-only",
        type=Path,
        metavar="JSON",
        help="redraw the PNG of an earlier run's JSON and print its summary",
    )
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.plot_only is not None:
        data = json.loads(args.plot_only.read_text())
        plot(data, args.plot_only.with_suffix(".png"))
        print(summary_tables(data))
        return 0
    events = 1_000_000 if args.million else args.events
    mode = "rate" if events is None else "events"
    default_name = "soak.json" if mode == "rate" else "soak-events.json"
    output: Path = args.output or results_dir(args.update_results) / default_name
    sample_s = args.sample_s or (5.0 if mode == "rate" else 0.5)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    for key in [k for k in os.environ if k.startswith("AGENTSTREAM_")]:
        del os.environ[key]
    configure_logging(LogSettings(level="warning"), stream=sys.stderr)
    with (
        tempfile.TemporaryDirectory(prefix="agentstream-soak-") as tmp,
        BenchRedis(Path(tmp)) as server,
    ):
        _progress(f"redis-server {server.version()} on {server.url} (pid {server.pid})")
        if events is None:
            _progress(f"soak at {args.rate:,}/s for {args.duration_s:g} s")
            warmup_s = min(args.warmup_s, args.duration_s / 2)
            data = run_rate(
                server,
                Path(tmp),
                args.rate,
                args.duration_s,
                sample_s,
                warmup_s,
                args.consumers,
            )
        else:
            _progress(f"{events:,} events (+{args.warmup:,} warm-up)")
            data = run_events(
                server,
                Path(tmp),
                events,
                args.warmup,
                args.chunk,
                sample_s,
                args.consumers,
            )
        data = {"machine": machine_info(server.version()), **data}
    write_json(output, data)
    png = output.with_suffix(".png")
    plot(data, png)
    print(summary_tables(data))
    _progress(f"results written to {output} and {png}")
    return 0 if all(t["met"] for t in data["targets"]) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
