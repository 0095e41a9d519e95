"""Partitioned streams on a 3-master Redis Cluster: volume, no CROSSSLOT, ordered mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis.cluster
from cluster_harness import (
    Producer,
    Recorder,
    Worker,
    first_seen,
    worker_env,
    write_app,
    write_config,
)
from topology import Cluster, crossslot_errors

from agentstream.admin import run_admin
from agentstream.config import RedisSettings
from agentstream.transport.keys import partition_streams
from agentstream.transport.partitioned import PartitionedStream
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings
from redis_server import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

GROUP = "agents"


@pytest.fixture(name="cluster", scope="module")
def _cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server_bin: str
) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(name="pool")
def _pool(cluster: Cluster) -> Iterator[RedisConnectionPool]:
    settings = RedisSettings(url=cluster.url)
    pool = pool_from_settings(settings, socket_timeout_s=10, max_connections=8)
    yield pool
    pool.close()


def _client(cluster: Cluster) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster(
        host="127.0.0.1", port=cluster.ports[0], decode_responses=True
    )


def _pending(cluster: Cluster, stream: str, partitions: int) -> int:
    client = _client(cluster)
    try:
        return sum(
            int(client.xpending(key, GROUP)["pending"])
            for key in partition_streams(stream, partitions)
        )
    finally:
        client.close()


def test_two_workers_drain_eight_partitions_with_no_crossslot(
    cluster: Cluster,
    pool: RedisConnectionPool,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """20,000 events over 8 partitions, two workers x 4 consumers: all handled,
    nothing pending; retries, dead letters, the CLI's stats and dlq commands
    included, and not one CROSSSLOT reply from any node."""
    stream, prefix = f"orders-{uuid4().hex[:8]}", f"t:{uuid4().hex}:"
    before = crossslot_errors(cluster.ports)
    write_app(tmp_path)
    sub = {"stream": stream, "group": GROUP, "partitions": 8}
    env = worker_env(redis_url, prefix, tmp_path)
    workers = [
        Worker(tmp_path, write_config(tmp_path, f"w{i}", cluster.url, sub), env)
        for i in (1, 2)
    ]
    producer = PartitionedStream(stream, 8, pool=pool, max_len=100_000)
    try:
        for n in range(20_000):
            producer.publish("ev", {"n": n}, key=None if n % 2 else f"k{n % 997}")
        for n in range(20_000, 20_020):
            producer.publish("retry", {"n": n}, key=f"k{n}")
        for n in range(20_020, 20_030):
            producer.publish("dead", {"n": n}, key=f"k{n}")
        recorder = Recorder(redis_url, prefix)
        wait_for(
            lambda: recorder.handled_count() == 20_020,
            timeout=120,
            interval=0.5,
            message=f"not all handled: {recorder.handled_count()}\n{workers[0].tail()}",
        )
        wait_for(lambda: _pending(cluster, stream, 8) == 0, timeout=30, interval=0.2)
    finally:
        statuses = [w.stop() for w in workers]
    assert statuses == [0, 0]
    config = write_config(tmp_path, "cli", cluster.url, sub)
    assert run_admin(["--config", str(config), "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert len(stats["subscriptions"]) == 8
    (total,) = stats["totals"]
    assert total["pending"] == 0 and total["lag"] == 0
    assert total["dead_letters"] == 10
    dead = [p for p in stats["subscriptions"] if p["dead_letters"]]
    partition = dead[0]["stream"]
    assert run_admin(["--config", str(config), "dlq", "list", partition]) == 0
    replay = ["dlq", "replay", "--stream", partition, "--all"]
    assert run_admin(["--config", str(config), *replay]) == 0
    assert "replayed" in capsys.readouterr().out
    assert crossslot_errors(cluster.ports) == before == 0


def test_ordered_mode_keeps_per_key_order_across_a_crash_and_a_join(
    cluster: Cluster, pool: RedisConnectionPool, redis_url: str, tmp_path: Path
) -> None:
    """Three workers, 200 keys x 50 events: one SIGKILLed, another joins mid-run;
    each key's events are first handled in publish order, every partition
    ends with exactly one owner among the live workers."""
    stream, prefix = f"ordered-{uuid4().hex[:8]}", f"t:{uuid4().hex}:"
    write_app(tmp_path)
    sub = {"stream": stream, "group": GROUP, "partitions": 8, "ordered": True}
    env = worker_env(redis_url, prefix, tmp_path)

    def start(name: str) -> Worker:
        config = write_config(tmp_path, name, cluster.url, sub, consumers=1)
        return Worker(tmp_path, config, env)

    workers = {name: start(name) for name in ("w1", "w2", "w3")}
    recorder = Recorder(redis_url, prefix)
    producer = Producer(PartitionedStream(stream, 8, pool=pool, max_len=100_000),
                        count=10_000, keys=200)  # fmt: skip
    try:
        producer.start()
        wait_for(lambda: recorder.handled_count() >= 2_000, timeout=60, interval=0.1)
        workers.pop("w1").kill()
        wait_for(lambda: recorder.handled_count() >= 4_000, timeout=60, interval=0.1)
        workers["w4"] = start("w4")
        producer.join(120)
        wait_for(
            lambda: recorder.handled_count() == 10_000,
            timeout=120,
            interval=0.5,
            message=f"handled {recorder.handled_count()}\n{workers['w2'].tail()}",
        )
        wait_for(lambda: _owners(cluster, stream) is not None, timeout=30, interval=0.2)
        owners = _owners(cluster, stream)
    finally:
        producer.stopped.set()
        for worker in workers.values():
            worker.stop()
    for key in range(200):
        sequence = recorder.sequence(f"key{key}")
        assert first_seen(sequence) == list(range(50)), f"key{key}: {sequence}"
    assert owners is not None
    assert set(owners.values()) <= {"w2-0", "w3-0", "w4-0"}
    shares = sorted(list(owners.values()).count(m) for m in set(owners.values()))
    assert shares == [2, 3, 3], owners


def _owners(cluster: Cluster, stream: str) -> dict[int, str] | None:
    """Each partition's lease holder, once all 8 are held by the three live
    workers in fair shares; else None."""
    client = _client(cluster)
    try:
        owners: dict[int, str] = {}
        for index, key in enumerate(partition_streams(stream, 8)):
            value = client.get(f"{key}:lease:{GROUP}")
            if value is None:
                return None
            owners[index] = str(value).partition(":")[2]
    finally:
        client.close()
    counts = sorted(list(owners.values()).count(m) for m in set(owners.values()))
    return owners if counts == [2, 3, 3] else None
