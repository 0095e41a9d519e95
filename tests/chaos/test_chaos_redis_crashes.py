"""Chaos 2: redis-server killed with SIGKILL twice while a worker runs.

Redis keeps an append-only file; a producer publishes at a steady rate and
retries an XADD that failed. The worker must resume by itself after each
restart. With ``appendfsync always`` nothing acknowledged may be lost; with
``appendfsync everysec`` the test counts the acknowledged events the crash took
(the producer's ids missing from the stream afterwards) and bounds them by one
second of publishing. CI: 3,000 events at 500/s; ``CHAOS_SCALE=full``: 20,000
at 1,000/s::

    CHAOS_SCALE=full .venv/bin/pytest tests/chaos/test_chaos_redis_crashes.py -s
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_harness import (
    Chaos,
    Producer,
    WorkerProcess,
    chaos_worlds,
    crashed,
    outcome,
    print_report,
    sized,
)

from agentstream.testing.pytest_plugin import RedisServerFactory

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]

TOTAL = sized(3000, 20_000)
RATE = sized(500.0, 1000.0)
CRASHES = 2


@pytest.fixture(name="make_chaos")
def _make_chaos(
    tmp_path: Path, redis_url: str, stream_name: str
) -> Iterator[Callable[[str], Chaos]]:
    with chaos_worlds(tmp_path, redis_url, stream_name) as make:
        yield make


def _logged(worker: WorkerProcess, event: str) -> Callable[[], int]:
    return lambda: sum(1 for r in worker.logs() if r.get("event") == event)


def _at_least(count: Callable[[], int], n: int) -> Callable[[], bool]:
    return lambda: count() >= n


class TestRedisCrashes:
    @pytest.mark.timeout(sized(120, 300))
    @pytest.mark.parametrize("appendfsync", ["always", "everysec"])
    def test_redis_killed_twice_the_worker_resumes_and_loses_nothing_acknowledged(
        self,
        make_chaos: Callable[[str], Chaos],
        redis_factory: RedisServerFactory,
        request: pytest.FixtureRequest,
        appendfsync: str,
    ) -> None:
        """An AOF Redis SIGKILLed twice mid-run: the same worker resumes by itself and handles every event that survived, and only everysec may lose acknowledged ones."""
        server = redis_factory(appendonly=True, appendfsync=appendfsync)
        chaos = make_chaos(server.url)
        worker = chaos.start(chaos.write_config({"consumers": 4}))
        worker.wait_for_log("worker_started", timeout=30)
        producer = Producer(server.url, chaos.stream, TOTAL, RATE)
        request.addfinalizer(producer.close)
        producer.start()

        unavailable = _logged(worker, "redis_unavailable")
        available = _logged(worker, "redis_available")
        for crash in range(1, CRASHES + 1):
            at = TOTAL * crash // (CRASHES + 1)
            chaos.wait(
                _at_least(lambda: producer.published, at), 60, "published", worker
            )
            server.kill()
            chaos.wait(
                _at_least(unavailable, crash), 30, f"crash {crash} noticed", worker
            )
            server.start()
            chaos.wait(
                _at_least(available, crash), 60, f"resumed after crash {crash}", worker
            )
        producer.join(TOTAL / RATE + 60)

        # Acknowledged by XADD but gone from the restarted Redis: lost by it.
        survived = chaos.stream_ids()
        gone = sorted(n for n, i in producer.acked.items() if i not in survived)
        kept = [n for n, i in producer.acked.items() if i in survived]
        chaos.wait(chaos.recorder.all_handled(kept), 60, "survivors handled", worker)
        chaos.wait(lambda: chaos.pending() == 0, 60, "pending list empty", worker)
        result = outcome(chaos.recorder, range(TOTAL))
        print_report(
            f"redis-crashes[appendfsync={appendfsync}]",
            events=TOTAL,
            crashes=CRASHES,
            xadd_failures_retried=producer.failures,
            acknowledged_then_lost_by_redis=len(gone),
            never_handled=len(result.missing),
            duplicates=result.duplicates,
        )
        # Every event missing from the handlings is one Redis lost.
        assert set(result.missing) <= set(gone), sorted(set(result.missing) - set(gone))
        if appendfsync == "always":
            assert gone == [], f"acknowledged events lost: {gone[:20]}"
        else:
            assert len(gone) <= RATE * 1.0, f"{len(gone)} lost > 1 s of publishing"
        assert chaos.dead_letter_ids() == []
        assert worker.is_running(), worker.tail()
        assert not crashed(worker), worker.tail()
        worker.terminate()
        assert worker.wait(15) == 0, worker.tail()
