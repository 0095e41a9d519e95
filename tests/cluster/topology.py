"""Throwaway Redis Cluster and Sentinel deployments on 127.0.0.1, for the tests.

A ``Cluster`` is six ``redis-server --cluster-enabled yes`` (three masters, one
replica each) joined with ``redis-cli --cluster create``; a ``SentinelGroup`` is
a primary, one replica and three Sentinels. Every process is ours, started
here and signalled by pid only. Kept out of a ``conftest.py`` (see
tests/e2e/worker_harness.py for why); pytest puts this directory on sys.path.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from redis_server import HOST, RedisServer, free_port, wait_for

__all__ = ["Cluster", "SentinelGroup", "crossslot_errors"]

_NODE_TIMEOUT_MS = 1500
_NODE_ARGS = [
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",
    "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
    # A promoted replica serves even if it lagged: a test kills masters.
    "--cluster-replica-validity-factor", "0",
]  # fmt: skip


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux: 32768)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text("ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too.

    Both stay below the ports the kernel hands out to outgoing connections
    (a bus port in that range was taken, now and then, by some client's
    connection between this check and the node's start), and node ports
    (10000-19999) never meet bus ports (20000-29999) of other nodes.
    """
    high = min(19999, _ephemeral_low() - 1 - 10000)
    while True:
        port = random.randint(10000, high)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind((HOST, candidate))
        except OSError:
            continue
        return port


def _client(port: int) -> redis.Redis:
    return redis.Redis(HOST, port, socket_timeout=5, decode_responses=True)


def crossslot_errors(ports: list[int]) -> int:
    """CROSSSLOT replies the servers on ``ports`` sent so far (INFO errorstats)."""
    total = 0
    for port in ports:
        with _client(port) as client:
            stats = client.info("errorstats")
        total += int(stats.get("errorstat_CROSSSLOT", {}).get("count", 0))
    return total


class Cluster:
    """Three masters with one replica each, slots spread by redis-cli."""

    def __init__(self, tmp_dir: Path) -> None:
        self.nodes = [
            RedisServer(
                tmp_dir / f"node{i}",
                port=cluster_port(),
                extra_args=_NODE_ARGS,
            )
            for i in range(6)
        ]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """A seed-list URL of the masters and replicas."""
        return "redis://" + ",".join(f"{HOST}:{p}" for p in self.ports[:3])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH")
        subprocess.run(
            [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_for(
            self.healthy, timeout=30, interval=0.2, message="cluster never became ok"
        )

    def healthy(self, replicas: bool = True) -> bool:
        """Every live node says cluster_state:ok and knows all slots are served
        (and, with ``replicas``, every master has a synced replica)."""
        for node in self.nodes:
            if not node.is_running():
                continue
            try:
                with _client(node.port) as client:
                    info = client.cluster("info")
            except redis.RedisError:
                return False
            if info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_slots_ok", 0)) != 16384:
                return False
            if not replicas:
                continue
            with _client(node.port) as client:
                replication = client.info("replication")
            if replication["role"] == "slave":
                if replication.get("master_link_status") != "up":
                    return False
            elif int(replication.get("connected_slaves", 0)) < 1:
                return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        with _client(self.ports[0]) as client:
            slot = int(client.cluster("keyslot", key))
            shards = client.execute_command("CLUSTER SLOTS")
        for start, end, master, *_ in shards:
            if int(start) <= slot <= int(end):
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(key)

    def replica_of(self, master: RedisServer) -> RedisServer:
        with _client(master.port) as client:
            info = client.info("replication")
        port = int(info["slave0"]["port"])
        return next(n for n in self.nodes if n.port == port)

    def role(self, node: RedisServer) -> str:
        """``master`` or ``slave``, as the node itself says."""
        with _client(node.port) as client:
            return str(client.info("replication")["role"])

    def live_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.is_running()]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Sentinel:
    """One ``redis-server --sentinel`` process with its own config file."""

    def __init__(self, tmp_dir: Path, primary_port: int, service: str) -> None:
        self.dir = tmp_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind {HOST}\ndir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {service} {HOST} {primary_port} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
            f"sentinel parallel-syncs {service} 1\n",
            encoding="utf-8",
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found on PATH")
        self._proc = subprocess.Popen(
            [exe, str(self.config), "--sentinel"],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


class SentinelGroup:
    """A primary, one replica and three Sentinels watching them as ``service``."""

    service = "agentstream-test"

    def __init__(self, tmp_dir: Path) -> None:
        self.primary = RedisServer(tmp_dir / "primary")
        self._tmp = tmp_dir
        self.replica: RedisServer | None = None
        self.sentinels: list[_Sentinel] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> None:
        self.primary.start()
        self.replica = RedisServer(
            self._tmp / "replica",
            extra_args=["--replicaof", HOST, str(self.primary.port)],
        )
        self.replica.start()
        wait_for(self._replica_synced, 30, 0.1, "replica never synced")
        self.sentinels = [
            _Sentinel(self._tmp / f"sentinel{i}", self.primary.port, self.service)
            for i in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(self._sentinels_agree, 30, 0.2, "sentinels not ready")

    def _replica_synced(self) -> bool:
        assert self.replica is not None
        with _client(self.replica.port) as client:
            status: str = client.info("replication").get("master_link_status", "")
            return status == "up"

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            try:
                with _client(sentinel.port) as client:
                    state = client.sentinel_master(self.service)
            except redis.RedisError:
                return False
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
        return True

    def primary_port(self) -> int:
        """The port the Sentinels currently name as the primary's."""
        with _client(self.sentinels[0].port) as client:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        if self.replica is not None:
            self.replica.stop()
        self.primary.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_s(seconds: float) -> float:
    """A deadline ``seconds`` from now, on the monotonic clock."""
    return time.monotonic() + seconds
