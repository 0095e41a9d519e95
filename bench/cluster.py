"""``python -m bench.cluster``: partitioned throughput on Redis Cluster.

For 1 and 3 masters (cluster-enabled ``redis-server``s on loopback, slots split
evenly, no replicas): preload ``--events`` events over 8 partitions once, then
drain them, restored identically before every run, with each case in turn,
``--repeats`` times: ``raw`` (``bench/raw_consumer.py --cluster``: redis-py's
asyncio ``RedisCluster``, one task per partition doing XREADGROUP + XACK),
``raw-pipelined`` (the XACK sent with the next read), then 1 and 2
``agentstream-worker`` processes (no-op handler, 8 consumers each). Reports the
median events/s, ``vs_raw`` (events/s over ``raw``'s on the same masters), and
CPU per event of the consumer and of the Redis masters; writes
``bench/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from agentstream.transport.keys import partition_streams, slot_of
from bench import GROUP
from bench.cpu import cpu_s
from bench.procs import APP_MODULE, Child, bench_module, worker_command
from bench.workload import Snapshot

PARTITIONS = 8
STREAM = "bench"
#: How often a drain polls the partitions' groups, in seconds.
POLL_S = 0.01


def _free_port() -> int:
    import random
    import socket

    while True:
        port = random.randint(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class Masters:
    """``count`` cluster-enabled masters sharing the 16384 slots, no replicas."""

    def __init__(self, count: int, tmp: Path) -> None:
        self.ports = [_free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        exe = shutil.which("redis-server") or "redis-server"
        for port in self.ports:
            directory = tmp / f"node{port}"
            directory.mkdir()
            self.procs.append(
                subprocess.Popen(
                    [exe, "--port", str(port), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--save", "", "--appendonly", "no",
                     "--dir", str(directory), "--daemonize", "no"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in self.ports:
            _wait(lambda p=port: _ping(p))
        share = 16384 // count
        for index, port in enumerate(self.ports):
            last = 16383 if index == count - 1 else (index + 1) * share - 1
            with _client(port) as client:
                client.execute_command("CLUSTER ADDSLOTSRANGE", index * share, last)
                for other in self.ports[1:]:
                    client.execute_command("CLUSTER MEET", "127.0.0.1", other)
        _wait(self._ok)

    def _ok(self) -> bool:
        for port in self.ports:
            with _client(port) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
        return True

    @property
    def url(self) -> str:
        return "redis://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def cpu_s(self) -> float:
        total = 0.0
        for port in self.ports:
            with _client(port) as client:
                info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return total

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)


def _client(port: int) -> redis.Redis:
    return redis.Redis("127.0.0.1", port, decode_responses=True)


def _ping(port: int) -> bool:
    try:
        with _client(port) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def _wait(predicate: Any, timeout: float = 30, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(poll_s)


def _remaining(client: redis.cluster.RedisCluster) -> int:
    total = 0
    for key in partition_streams(STREAM, PARTITIONS):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        (group,) = client.execute_command("XINFO GROUPS", key, target_nodes=node)  # type: ignore[no-untyped-call]
        total += int(group["lag"] or 0) + int(group["pending"])
    return total


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    workers: int  # agentstream-worker processes; 0: the raw consumer
    pipelined: bool = False  # raw consumer only


#: The raw references first, then the workers, interleaved on every repeat.
CASES = (
    Case("raw", 0),
    Case("raw-pipelined", 0, pipelined=True),
    Case("1 worker", 1),
    Case("2 workers", 2),
)


@dataclass(frozen=True, slots=True)
class Run:
    events: int
    seconds: float
    consumer_cpu_s: float
    redis_cpu_s: float


class Bench:
    """One cluster of ``masters``, its partitions preloaded once, drained per case.

    Every run starts from the same state: each master flushed, then the 8
    partition keys (entries and group at id 0) restored from their dumps.
    """

    def __init__(self, masters: int, events: int, tmp: Path) -> None:
        self.tmp = tmp
        self.cluster = Masters(masters, tmp)
        self.client = redis.cluster.RedisCluster(
            host="127.0.0.1", port=self.cluster.ports[0], decode_responses=True
        )
        self.snapshots: list[tuple[redis.Redis, Snapshot]] = []
        for key in partition_streams(STREAM, PARTITIONS):
            node = self.client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            owner = redis.Redis("127.0.0.1", node.port)
            self.snapshots.append((owner, Snapshot(owner, key, events // PARTITIONS)))
        self.events = events // PARTITIONS * PARTITIONS
        shutil.copyfile(
            Path(__file__).with_name("worker_app.py"), tmp / f"{APP_MODULE}.py"
        )
        self.config = tmp / "worker.toml"
        self.config.write_text(
            f'app = "{APP_MODULE}:app"\nconsumers = 8\nbatch_size = 100\n'
            f'block_ms = 100\n[[subscriptions]]\nstream = "{STREAM}"\n'
            f'group = "{GROUP}"\npartitions = {PARTITIONS}\n[redis]\ncluster = true\n'
            f'url = "{self.cluster.url}"\n[metrics]\nenabled = false\n'
            '[log]\nlevel = "warning"\nformat = "json"\n'
        )

    def _start(self, case: Case) -> list[Child]:
        if case.workers == 0:
            url = f"redis://127.0.0.1:{self.cluster.ports[0]}"
            args = ["--url", url, "--stream", STREAM, "--cluster"]
            args += ["--partitions", str(PARTITIONS)]
            if case.pipelined:
                args.append("--pipelined")
            return [bench_module("raw_consumer", args, self.tmp / "raw.log")]
        return [
            Child(
                [*worker_command(self.config)],
                self.tmp / f"w{i}.log",
                cwd=self.tmp,
                env={"AGENTSTREAM_NAME_PREFIX": f"w{i}", "BENCH_HANDLER": "noop"},
            )
            for i in range(case.workers)
        ]

    def run(self, case: Case) -> Run:
        """Restore the partitions, then time ``case`` draining them."""
        for port in self.cluster.ports:
            with _client(port) as client:
                client.flushall()
        for owner, snapshot in self.snapshots:
            snapshot.restore(owner)
        children = self._start(case)

        def remaining() -> int:
            for child in children:
                if not child.alive():
                    raise RuntimeError(f"{child.argv} exited:\n{child.tail()}")
            return _remaining(self.client)

        try:
            _wait(lambda: remaining() < self.events, timeout=60, poll_s=POLL_S)
            started = time.monotonic()
            consumer_cpu = sum(cpu_s(c.pid) for c in children)
            redis_cpu = self.cluster.cpu_s()
            at_start = remaining()
            _wait(lambda: remaining() == 0, timeout=600, poll_s=POLL_S)
            elapsed = time.monotonic() - started
            consumer_cpu = sum(cpu_s(c.pid) for c in children) - consumer_cpu
            redis_cpu = self.cluster.cpu_s() - redis_cpu
        finally:
            for child in children:
                child.stop()
        return Run(at_start, elapsed, consumer_cpu, redis_cpu)

    def close(self) -> None:
        self.client.close()
        for owner, _ in self.snapshots:
            owner.close()
        self.cluster.stop()


def _row(masters: int, events: int, case: Case, runs: list[Run]) -> dict[str, Any]:
    """The medians of a case's runs (each timed from its first acknowledgement)."""
    return {
        "masters": masters,
        "case": case.name,
        "workers": case.workers,
        "events": events,
        "events_per_s": round(statistics.median(r.events / r.seconds for r in runs)),
        "events_per_s_runs": [round(r.events / r.seconds) for r in runs],
        "consumer_cpu_us_per_event": round(
            statistics.median(r.consumer_cpu_s / r.events for r in runs) * 1e6, 1
        ),
        "redis_cpu_us_per_event": round(
            statistics.median(r.redis_cpu_s / r.events for r in runs) * 1e6, 1
        ),
    }


def run_masters(
    masters: int, events: int, repeats: int, tmp: Path
) -> list[dict[str, Any]]:
    """Every case ``repeats`` times, interleaved, on one cluster of ``masters``."""
    bench = Bench(masters, events, tmp)
    runs: dict[Case, list[Run]] = {case: [] for case in CASES}
    try:
        for repeat in range(1, repeats + 1):
            for case in CASES:
                run = bench.run(case)
                runs[case].append(run)
                rate = run.events / run.seconds
                print(
                    f"masters={masters} [{repeat}/{repeats}] {case.name:<14}"
                    f" {rate:>10,.0f} events/s",
                    file=sys.stderr,
                )
    finally:
        bench.close()
    rows = [_row(masters, bench.events, case, runs[case]) for case in CASES]
    raw = rows[0]["events_per_s"]
    for row in rows:
        row["vs_raw"] = round(row["events_per_s"] / raw, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cluster.json"))
    args = parser.parse_args()
    slots = sorted({slot_of(k) for k in partition_streams(STREAM, PARTITIONS)})
    results = []
    for masters in (1, 3):
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_masters(masters, args.events, args.repeats, Path(tmp))
        for row in rows:
            print(json.dumps(row))
        results += rows
    summary = {
        "cpus": os.cpu_count(),
        "partitions": PARTITIONS,
        "slots": slots,
        "repeats": args.repeats,
        "results": results,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
