"""Chaos 3: a network partition between one worker and Redis, then healing.

Worker A talks to Redis through :class:`chaos_harness.BlackholeProxy`; worker B
talks to it directly. The proxy stops forwarding for longer than
``reaper.min_idle_ms`` while A's handlers run, holding the connections open (a
blackhole, not a refusal), then heals. A notices only when its socket timeout
(``block_ms / 1000 + 10`` s) expires. Also here: a read whose reply was lost
(what a partition does to a read in flight) must not strand its entries on a
live consumer. CI and ``CHAOS_SCALE=full`` differ in the number of events
only::

    CHAOS_SCALE=full .venv/bin/pytest tests/chaos/test_chaos_partition.py -s
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_harness import (
    GROUP,
    BlackholeProxy,
    Chaos,
    Producer,
    crashed,
    http_status,
    live_consumer_names,
    outcome,
    print_report,
    publish,
    sized,
)

from agentstream.testing import RedisServer, free_port

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]

#: ok events before the cut.
PHASE = sized(300, 3000)
#: ok events a second in the flow through the cut and the heal.
RATE = sized(100.0, 500.0)
FLOW_FIRST = 100_000
SLOW = 6
SLOW_S = 3.0
MIN_IDLE_MS = 1000


@pytest.fixture(name="chaos")
def _chaos(
    tmp_path: Path, fresh_redis: RedisServer, redis_url: str, stream_name: str
) -> Iterator[Chaos]:
    world = Chaos(tmp_path / "chaos", fresh_redis.url, redis_url, stream_name)
    try:
        yield world
    finally:
        world.close()


@pytest.fixture(name="proxy")
def _proxy(fresh_redis: RedisServer) -> Iterator[BlackholeProxy]:
    proxy = BlackholeProxy(fresh_redis.port)
    try:
        yield proxy
    finally:
        proxy.close()


def _started(chaos: Chaos, n: int) -> Callable[[], bool]:
    return lambda: bool(chaos.recorder.deliveries(n))


class TestPartition:
    @pytest.mark.timeout(sized(150, 300))
    def test_blackholed_worker_reconnects_by_itself_and_nothing_is_lost(
        self, chaos: Chaos, proxy: BlackholeProxy, request: pytest.FixtureRequest
    ) -> None:
        """A worker cut off from Redis past min_idle_ms mid-handler reports not ready, reconnects by itself after the heal, and no event is lost."""
        metrics_port = free_port()
        common = {
            "consumers": 2,
            "block_ms": 200,
            "reaper": {"min_idle_ms": MIN_IDLE_MS},
        }
        config_a = chaos.write_config(
            common
            | {
                "name_prefix": "chaos-a",
                "metrics": {"enabled": True, "port": metrics_port},
            },
            name="a.toml",
            url=proxy.url,
        )
        config_b = chaos.write_config(
            common | {"name_prefix": "chaos-b"}, name="b.toml"
        )
        a = chaos.start(config_a, name="a")
        b = chaos.start(config_b, name="b")
        a.wait_for_log("worker_started", timeout=30)
        b.wait_for_log("worker_started", timeout=30)
        chaos.wait(
            lambda: http_status(metrics_port, "/readyz") == 200, 30, "A ready", a
        )

        before = range(PHASE)
        publish(
            chaos.client, chaos.stream, "ok", ({"n": n, "s": 0.005} for n in before)
        )
        chaos.wait(chaos.recorder.all_handled(before), 60, "handled before", a, b)
        assert chaos.recorder.by_pid(a.pid) > 0, "A handled nothing before the cut"

        # Slow handlers, one at a time: once B's two consumers are busy, A
        # takes the rest, so A has handlers running when the cut comes.
        slow = range(10_000, 10_000 + SLOW)
        for n in slow:
            publish(chaos.client, chaos.stream, "slow", [{"n": n, "s": SLOW_S}])
            chaos.wait(_started(chaos, n), 10, f"{n} started", a, b)
        on_a = [n for n in slow if chaos.recorder.deliveries(n)[0]["pid"] == a.pid]
        assert on_a, "no slow handler running on A"

        # A steady flow throughout, so that reads A sent before or during the
        # cut find entries when the healed network finally delivers them.
        producer = Producer(
            chaos.worker_url, chaos.stream, 1_000_000, RATE, first=FLOW_FIRST
        )
        request.addfinalizer(producer.close)
        producer.start()
        chaos.wait(lambda: producer.published >= RATE, 30, "the flow going", a, b)

        proxy.cut()
        cut_at = time.monotonic()
        chaos.wait(
            lambda: http_status(metrics_port, "/readyz") == 503,
            60,
            "A's /readyz reporting the outage",
            a,
        )
        detected_s = time.monotonic() - cut_at
        assert http_status(metrics_port, "/healthz") is not None
        assert detected_s > MIN_IDLE_MS / 1000
        handled_by_a_at_heal = chaos.recorder.by_pid(a.pid)
        proxy.heal()
        cut_s = time.monotonic() - cut_at

        chaos.wait(
            lambda: http_status(metrics_port, "/readyz") == 200, 60, "A ready", a
        )
        chaos.wait(
            lambda: chaos.recorder.by_pid(a.pid) > handled_by_a_at_heal,
            60,
            "A handling again after the heal",
            a,
        )
        published_at_heal = producer.published
        chaos.wait(
            lambda: producer.published >= published_at_heal + 3 * RATE,
            60,
            "3 s more of the flow",
        )
        producer.stop()
        everything = [*before, *slow, *producer.acked]
        chaos.wait(chaos.recorder.all_handled(everything), 60, "all handled", a, b)
        chaos.wait(lambda: chaos.pending() == 0, 60, "pending list empty", a, b)

        result = outcome(chaos.recorder, everything)
        print_report(
            "partition",
            events=len(everything),
            cut_s=round(cut_s, 1),
            outage_detected_after_s=round(detected_s, 1),
            slow_on_a_at_cut=len(on_a),
            lost=len(result.missing),
            duplicates=result.duplicates,
        )
        assert not result.missing
        assert chaos.dead_letter_ids() == []
        for worker in (a, b):
            assert worker.is_running(), worker.tail()
            assert not crashed(worker), worker.tail()
            worker.terminate()
        for worker in (a, b):
            assert worker.wait(20) == 0, worker.tail()

    @pytest.mark.timeout(60)
    def test_blackholed_redis_is_noticed_within_the_socket_timeout(
        self, chaos: Chaos, proxy: BlackholeProxy
    ) -> None:
        """A blackholed Redis turns /readyz to 503 within one socket timeout (block_ms / 1000 + 10 s) plus 3 s."""
        metrics_port = free_port()
        block_ms = 200
        config = chaos.write_config(
            {
                "consumers": 2,
                "block_ms": block_ms,
                "metrics": {"enabled": True, "port": metrics_port},
            },
            url=proxy.url,
        )
        worker = chaos.start(config)
        chaos.wait(
            lambda: http_status(metrics_port, "/readyz") == 200, 30, "ready", worker
        )
        proxy.cut()
        socket_timeout_s = block_ms / 1000 + 10
        chaos.wait(
            lambda: http_status(metrics_port, "/readyz") == 503,
            socket_timeout_s + 3,
            "/readyz reporting the outage",
            worker,
        )

    @pytest.mark.timeout(60)
    def test_entries_a_lost_read_reply_gave_a_live_consumer_are_handled(
        self, chaos: Chaos
    ) -> None:
        """Entries that a read whose reply never arrived (timed out, cut off) assigned to a live consumer are still handled."""
        config = chaos.write_config({"consumers": 2, "reaper": {"min_idle_ms": 500}})
        worker = chaos.start(config)
        worker.wait_for_log("worker_started", timeout=30)
        live = live_consumer_names(worker)[0]
        before = range(20)
        publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in before))
        chaos.wait(chaos.recorder.all_handled(before), 30, "handled before", worker)

        # What Redis does with a read sent just before the network failed:
        # the entries go to the consumer's pending list, the reply nowhere.
        lost_reply = range(100, 105)
        pipe = chaos.client.pipeline(transaction=True)
        for n in lost_reply:
            pipe.xadd(chaos.stream, {"type": "ok", "data": json.dumps({"n": n})})
        pipe.xreadgroup(GROUP, live, {chaos.stream: ">"}, count=len(lost_reply))
        assert len(pipe.execute()[-1][0][1]) == len(lost_reply)

        chaos.wait(chaos.recorder.all_handled(lost_reply), 30, "all handled", worker)
        chaos.wait(lambda: chaos.pending() == 0, 30, "pending list empty", worker)
        assert worker.is_running() and not crashed(worker), worker.tail()
