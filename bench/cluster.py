"""``python -m bench.cluster``: partitioned throughput on Redis Cluster.

For 1 and 3 masters (cluster-enabled ``redis-server``s on loopback, slots split
evenly, no replicas) and 1 and 2 worker processes: preload ``--events`` events
over 8 partitions, start the workers (no-op handler, 8 consumers each), and
time them to drain every partition. Reports events/s and CPU per event of the
workers and of the Redis masters; writes ``bench/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from agentstream.transport.keys import partition_streams, slot_of
from bench import GROUP
from bench.procs import APP_MODULE, Child, worker_command

PARTITIONS = 8
STREAM = "bench"
_TICKS = os.sysconf("SC_CLK_TCK")


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


def _wait(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.05)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _remaining(client: redis.cluster.RedisCluster) -> int:
    total = 0
    for key in partition_streams(STREAM, PARTITIONS):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        (group,) = client.execute_command("XINFO GROUPS", key, target_nodes=node)  # type: ignore[no-untyped-call]
        total += int(group["lag"] or 0) + int(group["pending"])
    return total


def run_case(masters: int, workers: int, events: int, tmp: Path) -> dict[str, Any]:
    """Drain ``events`` preloaded events with ``workers`` processes."""
    cluster = Masters(masters, tmp)
    try:
        client = redis.cluster.RedisCluster(
            host="127.0.0.1", port=cluster.ports[0], decode_responses=True
        )
        keys = partition_streams(STREAM, PARTITIONS)
        for key in keys:
            client.xgroup_create(key, GROUP, "0", mkstream=True)
        fields = {"type": "token", "timestamp": "0", "data": '{"token": "x"}'}
        pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
        for n in range(events):
            pipe.xadd(keys[n % PARTITIONS], fields)
            if n % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        shutil.copyfile(
            Path(__file__).with_name("worker_app.py"), tmp / f"{APP_MODULE}.py"
        )
        config = tmp / "worker.toml"
        config.write_text(
            f'app = "{APP_MODULE}:app"\nconsumers = 8\nbatch_size = 100\n'
            f'block_ms = 100\n[[subscriptions]]\nstream = "{STREAM}"\n'
            f'group = "{GROUP}"\npartitions = {PARTITIONS}\n[redis]\n'
            f'url = "{cluster.url}"\n[metrics]\nenabled = false\n'
            '[log]\nlevel = "warning"\nformat = "json"\n'
        )
        redis_cpu = cluster.cpu_s()
        children = [
            Child(
                [*worker_command(config)],
                tmp / f"w{i}.log",
                cwd=tmp,
                env={"AGENTSTREAM_NAME_PREFIX": f"w{i}", "BENCH_HANDLER": "noop"},
            )
            for i in range(workers)
        ]
        try:
            _wait(lambda: _remaining(client) < events, timeout=60)
            started = time.monotonic()
            base = sum(_cpu_s(c.pid) for c in children)
            redis_cpu = cluster.cpu_s()
            at_start = _remaining(client)
            _wait(lambda: _remaining(client) == 0, timeout=600)
            elapsed = time.monotonic() - started
            worker_cpu = sum(_cpu_s(c.pid) for c in children) - base
            redis_cpu = cluster.cpu_s() - redis_cpu
        finally:
            for child in children:
                child.stop()
        client.close()
    finally:
        cluster.stop()
    return {
        "masters": masters,
        "workers": workers,
        "events": at_start,
        "seconds": round(elapsed, 3),
        "events_per_s": round(at_start / elapsed),
        "worker_cpu_us_per_event": round(worker_cpu / at_start * 1e6, 1),
        "redis_cpu_us_per_event": round(redis_cpu / at_start * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/cluster.json"))
    args = parser.parse_args()
    slots = sorted({slot_of(k) for k in partition_streams(STREAM, PARTITIONS)})
    results = []
    for masters in (1, 3):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                result = run_case(masters, workers, args.events, Path(tmp))
            print(json.dumps(result))
            results.append(result)
    summary = {
        "cpus": os.cpu_count(),
        "partitions": PARTITIONS,
        "slots": slots,
        "results": results,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
