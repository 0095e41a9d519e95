"""Failovers under load: a cluster master killed, a Sentinel-managed primary killed.

Both times the worker process carries on (the same process, no restart), and
with ``wait_replicas = 1`` every event whose publish returned is handled: WAIT
closed the window in which asynchronous replication can lose a write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from cluster_harness import (
    Producer,
    Recorder,
    Worker,
    worker_env,
    write_app,
    write_config,
)
from topology import Cluster, SentinelGroup

from agentstream.config import RedisSettings
from agentstream.transport.partitioned import PartitionedStream
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings
from redis_server import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

EVENTS = 3_000


def _producer_pool(url: str) -> RedisConnectionPool:
    settings = RedisSettings(url=url, wait_replicas=1, wait_timeout_ms=2000)
    return pool_from_settings(settings, socket_timeout_s=5, max_connections=4)


def _run_through_failover(
    tmp_path: Path,
    redis_url: str,
    url: str,
    partitions: int,
    fail: Callable[[], None],
) -> tuple[Producer, Recorder]:
    prefix = f"t:{uuid4().hex}:"
    stream = f"fo-{uuid4().hex[:8]}"
    write_app(tmp_path)
    sub = {"stream": stream, "group": "agents", "partitions": partitions}
    worker = Worker(
        tmp_path,
        write_config(tmp_path, "w1", url, sub),
        worker_env(redis_url, prefix, tmp_path),
    )
    pool = _producer_pool(url)
    producer = Producer(PartitionedStream(stream, partitions, pool=pool), EVENTS)
    recorder = Recorder(redis_url, prefix)
    try:
        producer.start()
        wait_for(lambda: len(producer.acked) >= 500, timeout=60, interval=0.05)
        fail()
        producer.join(180)
        assert not producer.is_alive(), "the producer never got through"
        acked = set(producer.acked)
        wait_for(
            lambda: acked <= {int(n) for n in recorder.handled()},
            timeout=40,
            interval=0.5,
            message=f"acknowledged events not handled: "
            f"{sorted(acked - {int(n) for n in recorder.handled()})[:20]}... "
            f"of {len(acked)}\n{worker.tail()}",
        )
        assert worker.proc.poll() is None, "the worker exited"
    finally:
        producer.stopped.set()
        worker.stop()
        pool.close()
    return producer, recorder


def test_cluster_master_killed_mid_run(
    tmp_path: Path,
    redis_url: str,
    redis_server_bin: str,
    record_property: Callable[[str, object], None],
) -> None:
    with Cluster(tmp_path / "cluster") as cluster:
        victim = cluster.master_of("x:{0}")
        heir = cluster.replica_of(victim)

        def fail() -> None:
            victim.kill()
            wait_for(lambda: cluster.role(heir) == "master", timeout=30, interval=0.1)
            wait_for(lambda: cluster.healthy(replicas=False), timeout=30, interval=0.2)
            # Back (empty: no persistence here) as the new master's replica, so
            # that WAIT can succeed again. Restarted before the failover, it
            # would have come back as an empty master of its slots.
            victim.start()
            wait_for(cluster.healthy, timeout=60, interval=0.2)

        producer, _ = _run_through_failover(tmp_path, redis_url, cluster.url, 8, fail)
    assert len(producer.acked) == EVENTS
    # What the failover cost the producer: refused or unconfirmed publishes it
    # retried (at-least-once), never an acknowledged event lost.
    record_property("publish_errors", len(producer.errors))


@pytest.fixture(name="sentinels")
def _sentinels(tmp_path: Path, redis_server_bin: str) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path / "sentinel") as group:
        yield group


def test_sentinel_primary_killed_mid_run(
    tmp_path: Path,
    redis_url: str,
    sentinels: SentinelGroup,
    record_property: Callable[[str, object], None],
) -> None:
    old = sentinels.primary.port

    def fail() -> None:
        sentinels.primary.kill()
        wait_for(lambda: sentinels.primary_port() != old, timeout=60, interval=0.2)
        sentinels.primary.start()  # Sentinel turns it into the new primary's replica

    producer, _ = _run_through_failover(tmp_path, redis_url, sentinels.url, 1, fail)
    assert len(producer.acked) == EVENTS
    record_property("publish_errors", len(producer.errors))
