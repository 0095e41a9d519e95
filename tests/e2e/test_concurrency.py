"""Many handler calls in flight per process, few connections, per-key order.

Real worker processes against a real redis-server; the handlers of
``dispatch_harness`` count what is in flight inside the worker and record it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dispatch_harness import (
    DISPATCH_APP,
    DISPATCH_ORDERED_APP,
    DispatchRecorder,
    publish,
    write_dispatch_app,
)
from worker_harness import E2E, WorkerProcess, drained, pending_count

from redis_server import RedisServer, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


class World:
    """One test's workers on the dispatcher app, and what they recorded."""

    def __init__(self, e2e: E2E) -> None:
        self.e2e = e2e
        self.client = e2e.client
        self.stream = e2e.stream
        self.rec = DispatchRecorder(e2e.client, e2e.key_prefix)
        write_dispatch_app(e2e.dir)

    def start(
        self, overrides: dict[str, Any], name: str = "worker.toml"
    ) -> WorkerProcess:
        config = {"app": DISPATCH_APP, **overrides}
        worker = self.e2e.start(self.e2e.write_config(config, name))
        worker.wait_for_log("worker_started", timeout=30)
        return worker

    def wait(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: str,
        *workers: WorkerProcess,
    ) -> None:
        try:
            wait_for(predicate, timeout=timeout, interval=0.05)
        except AssertionError:
            tails = "".join(f"\n{w.tail()}" for w in workers)
            raise AssertionError(f"{what}: not reached in {timeout}s{tails}") from None

    def all_done(self, total: int) -> Callable[[], bool]:
        return lambda: len(self.rec.done()) >= total

    def drained(self) -> bool:
        return drained(self.client, self.stream)


@pytest.fixture(name="world")
def _world(tmp_path: Path, redis_url: str, stream_name: str) -> Iterator[World]:
    e2e = E2E(tmp_path / "w", redis_url, stream_name)
    try:
        yield World(e2e)
    finally:
        e2e.close()


def _io(count: int, seconds: float, first: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [("io", {"n": n, "s": seconds}) for n in range(first, first + count)]


class TestConcurrency:
    def test_200_calls_in_flight_through_one_consumer(self, world: World) -> None:
        """concurrency=200 and one consumer: 2,000 calls of 200 ms overlap (sequential would take 400 s), never more than 200 at once."""
        worker = world.start({"consumers": 1, "concurrency": 200})
        publish(world.client, world.stream, _io(2000, 0.2))
        world.wait(world.all_done(2000), 40, "2,000 events handled", worker)
        assert set(world.rec.done().values()) == {1}
        assert 100 <= world.rec.max_live() <= 200
        world.wait(world.drained, 10, "group drained", worker)

    def test_slow_event_does_not_hold_up_the_fast_ones_read_with_it(
        self, world: World
    ) -> None:
        """A 5 s event read in the same batch as 500 fast ones: the fast ones all finish while it still runs."""
        worker = world.start({"consumers": 1, "concurrency": 64})
        publish(world.client, world.stream, [("io", {"n": "slow", "s": 5})])
        publish(world.client, world.stream, _io(500, 0))
        world.wait(lambda: len(world.rec.done()) >= 500, 30, "the fast events", worker)
        assert "slow" not in world.rec.done()
        world.wait(lambda: "slow" in world.rec.done(), 30, "the slow event", worker)

    def test_two_processes_share_the_work_fairly(self, world: World) -> None:
        """Two worker processes with concurrency=50 and a 100 ms handler: neither takes more than 65 % of the events."""
        config = {"consumers": 1, "concurrency": 50}
        first = world.start(config, "a.toml")
        second = world.start(config, "b.toml")
        publish(world.client, world.stream, _io(1500, 0.1))
        world.wait(world.all_done(1500), 60, "all handled", first, second)
        shares = world.rec.by_pid()
        assert len(shares) == 2, shares
        assert max(shares.values()) <= 0.65 * 1500, shares

    def test_sigterm_drains_150_calls_in_flight(self, world: World) -> None:
        """SIGTERM with 150 calls in flight: all finish and are acknowledged, exit 0, nothing pending."""
        worker = world.start({"concurrency": 200, "shutdown_timeout_s": 20.0})
        publish(world.client, world.stream, _io(150, 2.0))
        world.wait(lambda: world.rec.live() == 150, 20, "150 in flight", worker)
        worker.terminate()
        assert worker.wait(30) == 0, worker.tail()
        assert len(world.rec.done()) == 150
        assert pending_count(world.client, world.stream) == 0

    def test_kill_9_with_150_calls_in_flight_loses_nothing(self, world: World) -> None:
        """SIGKILL with 150 calls in flight: a new worker handles all of them again; none is lost."""
        config = {"concurrency": 200, "reaper": {"min_idle_ms": 1000}}
        worker = world.start(config)
        events = [("io", {"n": n, "s": 30.0, "s_after": 0.1}) for n in range(150)]
        publish(world.client, world.stream, events)
        world.wait(lambda: world.rec.live() == 150, 20, "150 in flight", worker)
        worker.kill()
        assert world.rec.done() == {}
        restarted = world.start(config)
        world.wait(world.all_done(150), 60, "all redelivered", restarted)
        world.wait(world.drained, 10, "group drained", restarted)

    def test_connections_follow_consumers_not_concurrency(
        self, tmp_path: Path, fresh_redis: RedisServer, stream_name: str
    ) -> None:
        """With 500 calls in flight, the worker holds no more connections than 2 x subscriptions x (consumers + 1) + 2."""
        e2e = E2E(tmp_path / "c", fresh_redis.url, stream_name)
        try:
            world = World(e2e)
            consumers = 2
            worker = world.start(
                {"consumers": consumers, "concurrency": 500, "shutdown_timeout_s": 30.0}
            )
            publish(world.client, world.stream, _io(500, 8.0))
            world.wait(lambda: world.rec.live() == 500, 30, "500 in flight", worker)
            world.client.client_setname("test-client")
            clients: Any = world.client.client_list()
            ours = [
                c for c in clients if c.get("name") not in ("test-app", "test-client")
            ]
            assert len(ours) <= 2 * 1 * (consumers + 1) + 2, ours
        finally:
            e2e.close()


def _interleaved_runs(
    runs: int, per_run: int, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    cursors = {f"run-{r}": 0 for r in range(runs)}
    events = []
    n = 0
    while cursors:
        run = rng.choice(sorted(cursors))
        seq = cursors[run]
        events.append(
            ("io", {"n": n, "run_id": run, "seq": seq, "s": rng.uniform(0, 0.02)})
        )
        n += 1
        if seq + 1 == per_run:
            del cursors[run]
        else:
            cursors[run] = seq + 1
    return events


class TestPerKeyOrder:
    def test_each_run_in_publish_order_while_runs_overlap(self, world: World) -> None:
        """order_key = "data.run_id", 50 runs of 40 interleaved events: each run in order, never two of a run at once, runs concurrently."""
        stream = world.stream
        worker = world.start(
            {
                "consumers": 2,
                "concurrency": 64,
                "subscriptions": [
                    {"stream": stream, "group": "agents", "order_key": "data.run_id"}
                ],
            }
        )
        publish(world.client, stream, _interleaved_runs(50, 40, seed=14))
        world.wait(world.all_done(2000), 60, "2,000 events handled", worker)
        assert world.rec.violations() == []
        assert world.rec.max_runs() > 1

    def test_app_key_function_orders_events(self, world: World) -> None:
        """App(order_key=...) orders the events of a run as the setting does."""
        worker = world.start({"app": DISPATCH_ORDERED_APP, "concurrency": 32})
        publish(world.client, world.stream, _interleaved_runs(10, 30, seed=12))
        world.wait(world.all_done(300), 60, "300 events handled", worker)
        assert world.rec.violations() == []
        assert world.rec.max_runs() > 1

    def test_without_a_key_the_same_runs_overlap(self, world: World) -> None:
        """The same events with no order key do overlap (so the order test can fail)."""
        worker = world.start({"concurrency": 64})
        publish(world.client, world.stream, _interleaved_runs(5, 40, seed=3))
        world.wait(world.all_done(200), 60, "200 events handled", worker)
        assert world.rec.violations() != []
