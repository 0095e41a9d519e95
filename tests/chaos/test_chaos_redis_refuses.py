"""A Redis that answers but refuses writes: ``maxmemory`` with ``noeviction``, a
read-only replica. The worker reports what it is (log, /readyz, metric), starts
on an existing group without a write, keeps handling and acknowledging what
Redis still allows, and no refusal uses up an event's delivery budget.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from chaos_harness import (
    GROUP,
    Chaos,
    WorkerProcess,
    crashed,
    make_chaos_fixture,  # noqa: F401 - the make_chaos fixture
    metric_samples,
    publish,
)
from worker_harness import http_get

from redis_server import HOST, RedisServerFactory, free_port

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]

MAX_DELIVERIES = 3
FAILING = 5
GOOD = 20


def readyz(port: int) -> tuple[int | None, str]:
    return http_get(port, "/readyz")


def refusals(port: int, reason: str) -> float:
    return sum(
        v
        for labels, v in metric_samples(port, "agentstream_redis_refusals_total")
        if labels.get("reason") == reason
    )


def events(worker: WorkerProcess, *names: str) -> list[dict[str, object]]:
    return [r for r in worker.logs() if r.get("event") in names]


def _start(chaos: Chaos, port: int) -> WorkerProcess:
    config = chaos.write_config(
        {
            "consumers": 2,
            "metrics": {"enabled": True, "port": port},
            "reaper": {
                "min_idle_ms": 300,
                "max_backoff_ms": 600,
                "max_deliveries": MAX_DELIVERIES,
            },
            "log": {"level": "debug"},
        }
    )
    return chaos.start(config)


def test_out_of_memory_worker_starts_handles_and_spends_no_delivery(
    make_chaos: Callable[[str], Chaos], redis_factory: RedisServerFactory
) -> None:
    """maxmemory reached (noeviction) with the group existing: the worker starts,
    handles the good events, reports OOM, never restarts a consumer; failing
    events get exactly max_deliveries handler calls and are dead-lettered once
    Redis accepts writes again."""
    server = redis_factory()
    chaos = make_chaos(server.url)
    chaos.client.xgroup_create(chaos.stream, GROUP, "0", mkstream=True)
    failing = range(FAILING)
    good = range(100, 100 + GOOD)
    publish(chaos.client, chaos.stream, "fail", ({"n": n} for n in failing))
    publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in good))
    chaos.client.config_set("maxmemory-policy", "noeviction")
    chaos.client.config_set("maxmemory", 1)

    port = free_port()
    worker = _start(chaos, port)
    chaos.wait(chaos.recorder.all_handled(good), 30, "good events handled", worker)

    def handler_calls() -> list[list[int]]:
        return [
            [d["delivery_count"] for d in chaos.recorder.deliveries(n)] for n in failing
        ]

    chaos.wait(
        lambda: all(len(c) >= MAX_DELIVERIES for c in handler_calls()),
        30,
        "every failing event handled max_deliveries times",
        worker,
    )
    status, body = readyz(port)
    assert status == 503 and "OOM" in body, body
    assert refusals(port, "OOM") > 0
    assert not events(worker, "redis_unavailable"), worker.tail()
    assert events(worker, "redis_refused"), worker.tail()

    chaos.client.config_set("maxmemory", 0)
    chaos.wait(
        lambda: len(chaos.dead_letter_ids()) == FAILING and chaos.pending() == 0,
        30,
        "failing events dead-lettered once writes are accepted",
        worker,
    )
    # A refused write never cost a delivery: each call had its own count.
    assert handler_calls() == [list(range(1, MAX_DELIVERIES + 1))] * FAILING
    assert {d["dlq_reason"] for d in chaos.dead_letters()} == {"max_deliveries"}
    restarts = events(worker, "consumer_retrying", "consumer_restarting")
    assert not restarts, restarts[:3]
    assert not crashed(worker)
    worker.terminate()
    assert worker.wait(15) == 0, worker.tail()


def test_read_only_replica_is_reported_as_refusing_not_unavailable(
    make_chaos: Callable[[str], Chaos], redis_factory: RedisServerFactory
) -> None:
    """Pointed at a read-only replica, the worker starts on the existing group,
    says READONLY in its log, /readyz and metric, and never "unavailable";
    once the replica is promoted it handles the events."""
    server = redis_factory()
    chaos = make_chaos(server.url)
    chaos.client.xgroup_create(chaos.stream, GROUP, "0", mkstream=True)
    publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in range(GOOD)))
    # A replica of a master that never answers: it keeps its data, read-only.
    chaos.client.replicaof(HOST, free_port())

    port = free_port()
    worker = _start(chaos, port)
    worker.wait_for_log("worker_started", 30)
    chaos.wait(lambda: "READONLY" in readyz(port)[1], 20, "READONLY reported", worker)
    assert readyz(port)[0] == 503
    chaos.wait(lambda: refusals(port, "READONLY") > 0, 10, "READONLY counted", worker)
    assert events(worker, "redis_refused"), worker.tail()
    assert not events(worker, "redis_unavailable"), worker.tail()

    chaos.client.replicaof("NO", "ONE")
    chaos.wait(
        chaos.recorder.all_handled(range(GOOD)), 30, "handled after promotion", worker
    )
    assert not crashed(worker)
    worker.terminate()
    assert worker.wait(15) == 0, worker.tail()
