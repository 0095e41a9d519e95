"""Chaos 1: worker processes killed with SIGKILL at random while they work.

Four ``agentstream-worker`` processes share one consumer group; on a fixed
schedule one of them, chosen at random, is killed with SIGKILL and started
again, while a producer publishes at a steady rate, until every event was
handled. CI: 10,000 events (1,000/s), a kill every second; ``CHAOS_SCALE=full``:
100,000 events (1,000/s), a kill every 2 s. ``CHAOS_SEED=N`` replays
a schedule. Run the full size with::

    CHAOS_SCALE=full .venv/bin/pytest tests/chaos/test_chaos_worker_crashes.py -s
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_harness import (
    RETRY_CONSUMER,
    Chaos,
    Producer,
    crashed,
    live_consumer_names,
    outcome,
    print_report,
    sized,
)

from agentstream.testing import RedisServer

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]

TOTAL = sized(10_000, 100_000)
#: Events published per second, so that kills hit a steady flow, not a backlog.
RATE = 1000.0
KILL_EVERY_S = sized(1.0, 2.0)
PROCESSES = 4
CONSUMERS = 4
BATCH = 20
#: Time allowed to handle everything despite the kills.
RUN_BUDGET_S = sized(90.0, 900.0)


@pytest.fixture(name="chaos")
def _chaos(
    tmp_path: Path, fresh_redis: RedisServer, redis_url: str, stream_name: str
) -> Iterator[Chaos]:
    world = Chaos(tmp_path / "chaos", fresh_redis.url, redis_url, stream_name)
    try:
        yield world
    finally:
        world.close()


class TestWorkerCrashes:
    @pytest.mark.timeout(sized(150, 1200))
    @pytest.mark.parametrize("naming", ["name-leases", "name-prefixes"])
    def test_random_sigkills_lose_nothing_and_the_group_shrinks_back(
        self, chaos: Chaos, naming: str, request: pytest.FixtureRequest
    ) -> None:
        """Four workers SIGKILLed at random and restarted lose no event, duplicate at most what the dead held, and leave only live consumers in the group."""
        seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
        rng = random.Random(seed)
        ttl_s = 3.0
        overrides = {
            "consumers": CONSUMERS,
            "batch_size": BATCH,
            # short leases: a restarted worker sometimes takes a dead one's
            # name (and re-reads its pending list), sometimes the next free one
            "name_lease_s": 3.0,
            "reaper": {"batch": BATCH, "min_idle_ms": 1000, "consumer_ttl_s": ttl_s},
        }
        if naming == "name-leases":
            # identical configurations: the name leases keep the names apart
            configs = [chaos.write_config(overrides)] * PROCESSES
        else:
            configs = [
                chaos.write_config(
                    overrides | {"name_prefix": f"chaos-w{i}"}, name=f"w{i}.toml"
                )
                for i in range(PROCESSES)
            ]
        slots = [chaos.start(configs[i], name=f"w{i}-0") for i in range(PROCESSES)]
        producer = Producer(chaos.worker_url, chaos.stream, TOTAL, RATE)
        request.addfinalizer(producer.close)
        producer.start()

        started = time.monotonic()
        kills = 0
        peak_consumers = 0
        next_kill = started + KILL_EVERY_S
        while chaos.recorder.handled_count() < TOTAL:
            now = time.monotonic()
            if now - started > RUN_BUDGET_S:
                raise AssertionError(
                    f"only {chaos.recorder.handled_count()} of {TOTAL} handled "
                    f"after {RUN_BUDGET_S}s and {kills} kills (seed {seed})"
                    + "".join(f"\n{w.tail()}" for w in slots)
                )
            if now >= next_kill:
                index = rng.randrange(PROCESSES)
                slots[index].kill()
                assert slots[index].returncode == -signal.SIGKILL
                kills += 1
                slots[index] = chaos.start(configs[index], name=f"w{index}-{kills}")
                peak_consumers = max(peak_consumers, len(chaos.consumer_names()))
                next_kill += KILL_EVERY_S
            time.sleep(0.05)  # pacing of the kill schedule
        handled_s = time.monotonic() - started
        producer.join(10)
        assert producer.failures == 0

        chaos.wait(lambda: chaos.pending() == 0, 60, "pending list empty", *slots)
        result = outcome(chaos.recorder, range(TOTAL))
        assert not result.missing, f"never handled: {result.missing[:20]}"
        assert chaos.dead_letter_ids() == []
        # Each kill can cost a second handling of what the dead process held:
        # per consumer the batch in hand and the one read ahead, plus one
        # claimed batch of its reaper.
        bound = kills * (2 * CONSUMERS + 1) * BATCH
        reclaimed = sum(
            r.get("count", 0)
            for w in chaos.workers
            for r in w.logs()
            if r.get("event") == "events_claimed"
        )
        print_report(
            f"worker-crashes[{naming}]",
            events=TOTAL,
            kills=kills,
            reclaimed_from_the_dead=reclaimed,
            lost=len(result.missing),
            duplicates=result.duplicates,
            duplicate_bound=bound,
            peak_consumers=peak_consumers,
            handled_in_s=round(handled_s, 1),
            seed=seed,
        )
        assert result.duplicates <= bound, (
            f"{result.duplicates} duplicates > {kills} kills x "
            f"(2 x {CONSUMERS} + 1) x {BATCH} (seed {seed})"
        )
        for worker in slots:
            assert worker.is_running(), worker.tail()
            assert not crashed(worker), worker.tail()

        # The dead processes' consumers own nothing now: the reapers remove
        # them once idle for consumer_ttl_s, leaving only live ones.
        for worker in slots:
            worker.wait_for_log("worker_started", timeout=30)
        live = {name for w in slots for name in live_consumer_names(w)}
        assert len(live) == PROCESSES * (CONSUMERS + 1), live

        def only_live_consumers() -> bool:
            return set(chaos.consumer_names()) <= live

        chaos.wait(only_live_consumers, ttl_s + 30, "dead consumers removed", *slots)
        names = chaos.consumer_names()
        assert RETRY_CONSUMER not in names
        assert len(names) <= len(live)

        for worker in slots:
            worker.terminate()
        for worker in slots:
            assert worker.wait(15) == 0, worker.tail()
        assert chaos.pending() == 0
