"""Chaos 4: handlers far slower than the reaper's patience, and handlers that hang.

A handler that runs many times ``reaper.min_idle_ms`` keeps its lease alive and
is never handed to a second consumer, even with another worker's reaper
sweeping; one that hangs past ``handler_timeout_s`` is cancelled, redelivered
with backoff and dead-lettered after ``reaper.max_deliveries``. Full size::

    CHAOS_SCALE=full .venv/bin/pytest tests/chaos/test_chaos_slow_handlers.py -s
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_harness import (
    Chaos,
    crashed,
    outcome,
    print_report,
    publish,
    sized,
)

from agentstream.testing import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(name="chaos")
def _chaos(
    tmp_path: Path, fresh_redis: RedisServer, redis_url: str, stream_name: str
) -> Iterator[Chaos]:
    world = Chaos(tmp_path / "chaos", fresh_redis.url, redis_url, stream_name)
    try:
        yield world
    finally:
        world.close()


class TestSlowHandlers:
    @pytest.mark.timeout(sized(90, 300))
    def test_handlers_far_past_min_idle_are_never_handled_twice(
        self, chaos: Chaos
    ) -> None:
        """Handlers running over 3x reaper.min_idle_ms, and entries waiting behind them in a batch far longer, are handled once while two workers' reapers sweep."""
        min_idle_ms = 600
        seconds = 2.0
        # more slow events than the 4 consumers: the rest wait in one batch
        slow = range(sized(8, 16))
        ok = range(1000, 1000 + sized(200, 2000))
        # concurrency = 1: fetched entries wait for the slot (their leases
        # renewed) as they waited behind one another before.
        config = chaos.write_config(
            {
                "consumers": 2,
                "concurrency": 1,
                "reaper": {"min_idle_ms": min_idle_ms, "interval_s": 0.1},
            }
        )
        workers = [chaos.start(config, name=f"w{i}") for i in range(2)]
        for worker in workers:
            worker.wait_for_log("worker_started", timeout=30)
        # One pipeline: a single read may take several slow events, so some
        # wait in the batch (held, leases renewed) for many min_idle_ms.
        publish(
            chaos.client, chaos.stream, "slow", ({"n": n, "s": seconds} for n in slow)
        )
        publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in ok))
        everything = [*slow, *ok]
        budget = len(slow) * seconds + 60
        chaos.wait(
            chaos.recorder.all_handled(everything), budget, "all handled", *workers
        )
        chaos.wait(lambda: chaos.pending() == 0, 30, "pending list empty", *workers)

        result = outcome(chaos.recorder, everything)
        started = chaos.recorder.started()
        starts = [chaos.recorder.deliveries(n)[0]["t"] for n in slow]
        longest_wait_s = max(starts) - min(starts)
        print_report(
            "slow-handlers",
            events=len(everything),
            handler_s=seconds,
            min_idle_ms=min_idle_ms,
            longest_wait_for_a_handler_s=round(longest_wait_s, 1),
            lost=len(result.missing),
            duplicates=result.duplicates,
        )
        assert not result.missing
        assert result.duplicates == 0, result.twice
        assert {n: started[n] for n in slow} == dict.fromkeys(slow, 1)
        for n in slow:
            assert [d["delivery_count"] for d in chaos.recorder.deliveries(n)] == [1]
        claimed = [
            r for w in workers for r in w.logs() if r.get("event") == "events_claimed"
        ]
        assert claimed == [], claimed
        assert longest_wait_s > 5 * min_idle_ms / 1000, "no entry waited long"
        assert chaos.dead_letter_ids() == []
        for worker in workers:
            assert not crashed(worker), worker.tail()

    @pytest.mark.timeout(sized(90, 300))
    def test_hung_handlers_time_out_are_redelivered_then_dead_lettered(
        self, chaos: Chaos
    ) -> None:
        """Handlers hanging past handler_timeout_s are cancelled and redelivered; those hanging on every delivery are dead-lettered after max_deliveries, the rest handled."""
        max_deliveries = 3
        config = chaos.write_config(
            {
                "consumers": 2,
                "handler_timeout_s": 1.0,
                "reaper": {
                    "min_idle_ms": 300,
                    "max_deliveries": max_deliveries,
                    "max_backoff_ms": 600,
                },
            }
        )
        forever = range(sized(3, 10))
        once = range(100, 100 + sized(3, 10))
        ok = range(1000, 1000 + sized(200, 2000))
        ids = publish(
            chaos.client, chaos.stream, "hang", ({"n": n, "hangs": 99} for n in forever)
        )
        publish(
            chaos.client, chaos.stream, "hang", ({"n": n, "hangs": 1} for n in once)
        )
        publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in ok))
        worker = chaos.start(config)

        # Each hang costs handler_timeout_s; the reaper handles its claims in turn.
        budget = (len(forever) * max_deliveries + len(once) * 2) * 1.5 + 60
        chaos.wait(
            lambda: len(chaos.dead_letter_ids()) >= len(forever),
            budget,
            "the hanging events dead-lettered",
            worker,
        )
        chaos.wait(
            chaos.recorder.all_handled([*once, *ok]), 60, "the others handled", worker
        )
        chaos.wait(lambda: chaos.pending() == 0, 30, "pending list empty", worker)

        result = outcome(chaos.recorder, [*once, *ok])
        print_report(
            "hung-handlers",
            events=len(forever) + len(once) + len(ok),
            dead_lettered=len(chaos.dead_letter_ids()),
            lost=len(result.missing),
            duplicates=result.duplicates,
        )
        assert sorted(chaos.dead_letter_ids()) == sorted(ids)
        for dead in chaos.dead_letters():
            assert dead["dlq_reason"] == "max_deliveries", dead
            assert "handler_timeout_s" in dead["dlq_error"], dead
            assert dead["dlq_delivery_count"] == str(max_deliveries), dead
        for n in forever:
            counts = [d["delivery_count"] for d in chaos.recorder.deliveries(n)]
            assert counts == list(range(1, max_deliveries + 1)), (n, counts)
            assert chaos.recorder.cancelled(n) == counts, n
        for n in once:
            counts = [d["delivery_count"] for d in chaos.recorder.deliveries(n)]
            assert counts == [1, 2], (n, counts)
            assert chaos.recorder.cancelled(n) == [1], n
        assert not result.missing
        assert result.duplicates == 0, result.twice
        assert worker.is_running() and not crashed(worker), worker.tail()
