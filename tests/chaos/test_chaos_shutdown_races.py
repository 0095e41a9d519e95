"""Chaos 6: SIGTERM at bad moments.

A worker is told to stop while Redis is down (killed, or cut off by a
blackhole), while its reaper handles entries it claimed from a dead consumer,
and twice in a row under load. It must exit in time and lose nothing: what it
could not finish stays pending, and a new worker handles it. Full size::

    CHAOS_SCALE=full .venv/bin/pytest tests/chaos/test_chaos_shutdown_races.py -s
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_harness import (
    BlackholeProxy,
    Chaos,
    Producer,
    WorkerProcess,
    chaos_worlds,
    crashed,
    outcome,
    print_report,
    publish,
    sized,
)

from agentstream.testing.pytest_plugin import RedisServerFactory

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]

SHUTDOWN_S = 3.0
#: Time allowed past shutdown_timeout_s: the last acknowledgements may take 5 s
#: (their own bound), plus the exit itself.
EXIT_MARGIN_S = 6.0


@pytest.fixture(name="make_chaos")
def _make_chaos(
    tmp_path: Path, redis_url: str, stream_name: str
) -> Iterator[Callable[[str], Chaos]]:
    with chaos_worlds(tmp_path, redis_url, stream_name) as make:
        yield make


def _logged(worker: WorkerProcess, event: str) -> Callable[[], bool]:
    return lambda: any(r.get("event") == event for r in worker.logs())


def _stopped_in(worker: WorkerProcess, timeout: float) -> tuple[int, float]:
    """SIGTERM ``worker``; return its exit status and how long it took."""
    signalled = time.monotonic()
    worker.terminate()
    status = worker.wait(timeout)
    return status, time.monotonic() - signalled


class TestShutdownRaces:
    @pytest.mark.timeout(sized(90, 180))
    @pytest.mark.parametrize(
        "outage",
        ["redis-killed", "blackhole"],
    )
    def test_sigterm_during_a_redis_outage_exits_in_time_and_loses_nothing(
        self,
        make_chaos: Callable[[str], Chaos],
        redis_factory: RedisServerFactory,
        outage: str,
    ) -> None:
        """SIGTERM while Redis is unreachable exits 0 within shutdown_timeout_s plus a margin, and a new worker handles everything once Redis is back."""
        server = redis_factory(appendonly=True, appendfsync="always")
        proxy = BlackholeProxy(server.port)
        try:
            chaos = make_chaos(server.url)
            config = chaos.write_config(
                {"shutdown_timeout_s": SHUTDOWN_S},
                url=proxy.url if outage == "blackhole" else None,
            )
            worker = chaos.start(config)
            worker.wait_for_log("worker_started", timeout=30)
            ok = range(sized(500, 5000))
            slow = range(10_000, 10_004)
            publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in ok))
            publish(
                chaos.client, chaos.stream, "slow", ({"n": n, "s": 1.0} for n in slow)
            )
            chaos.wait(
                lambda: bool(chaos.recorder.started()), 30, "slow handlers", worker
            )

            if outage == "blackhole":
                proxy.cut()
            else:
                server.kill()
                chaos.wait(
                    _logged(worker, "redis_unavailable"), 30, "outage noticed", worker
                )
            status, took_s = _stopped_in(worker, SHUTDOWN_S + 60)
            print_report(
                f"sigterm-during-outage[{outage}]",
                exit_status=status,
                exit_s=round(took_s, 1),
                shutdown_timeout_s=SHUTDOWN_S,
            )
            assert status == 0, worker.tail()
            assert not crashed(worker), worker.tail()
        finally:
            proxy.close()

        server.start()
        again = chaos.start(chaos.write_config({"shutdown_timeout_s": SHUTDOWN_S}))
        everything = [*ok, *slow]
        chaos.wait(chaos.recorder.all_handled(everything), 60, "all handled", again)
        chaos.wait(lambda: chaos.pending() == 0, 60, "pending list empty", again)
        result = outcome(chaos.recorder, everything)
        print_report(
            f"sigterm-during-outage[{outage}]",
            events=len(everything),
            lost=len(result.missing),
            duplicates=result.duplicates,
        )
        again.wait_for_log("worker_started", timeout=30)
        status, _ = _stopped_in(again, 15)
        assert status == 0, again.tail()
        # last, so that an overlong stop still shows whether anything was lost
        assert took_s < SHUTDOWN_S + EXIT_MARGIN_S, (
            f"exit took {took_s:.1f}s with shutdown_timeout_s={SHUTDOWN_S}"
        )

    @pytest.mark.timeout(60)
    def test_sigterm_while_the_reaper_handles_claimed_entries(
        self, make_chaos: Callable[[str], Chaos], redis_url: str
    ) -> None:
        """SIGTERM while the reaper runs slow handlers on entries it claimed lets them finish and acknowledges them: each is handled exactly once."""
        chaos = make_chaos(redis_url)
        slow = range(3)
        seconds = 1.0
        publish(
            chaos.client, chaos.stream, "slow", ({"n": n, "s": seconds} for n in slow)
        )
        # A consumer that read them and died: the reaper's to claim.
        chaos.client.xgroup_create(chaos.stream, "agents", "0")
        chaos.client.xreadgroup("agents", "ghost", {chaos.stream: ">"})
        shutdown_s = len(slow) * seconds + 5
        config = chaos.write_config(
            {
                "consumers": 1,
                "shutdown_timeout_s": shutdown_s,
                "reaper": {"min_idle_ms": 500},
            }
        )
        worker = chaos.start(config)

        def reaper_handling() -> bool:
            records = chaos.recorder.deliveries(0)
            return bool(records) and records[0]["consumer"].endswith("-reaper")

        chaos.wait(reaper_handling, 30, "the reaper handling a claimed entry", worker)
        status, took_s = _stopped_in(worker, shutdown_s + 10)
        assert status == 0, worker.tail()
        assert took_s < shutdown_s + EXIT_MARGIN_S
        assert not crashed(worker), worker.tail()

        handled_at_exit = chaos.recorder.handled()
        pending_at_exit = chaos.pending()
        # Whatever the grace period did not cover is left pending, not lost.
        again = chaos.start(chaos.write_config({"reaper": {"min_idle_ms": 500}}))
        chaos.wait(chaos.recorder.all_handled(slow), 30, "all handled", again)
        chaos.wait(lambda: chaos.pending() == 0, 30, "pending list empty", again)
        result = outcome(chaos.recorder, slow)
        print_report(
            "sigterm-during-reaper-sweep",
            events=len(slow),
            handled_before_exit=len(handled_at_exit),
            pending_at_exit=pending_at_exit,
            exit_s=round(took_s, 1),
            lost=len(result.missing),
            duplicates=result.duplicates,
        )
        assert 0 in handled_at_exit, "the claimed entry in flight was not finished"
        assert pending_at_exit == len(slow) - len(handled_at_exit)
        assert result.duplicates == 0, result.twice
        assert [d["delivery_count"] for d in chaos.recorder.deliveries(0)] == [2]
        again.wait_for_log("worker_started", timeout=30)
        status, _ = _stopped_in(again, 15)
        assert status == 0, again.tail()

    @pytest.mark.timeout(sized(90, 180))
    def test_second_sigterm_under_load_exits_at_once_and_loses_nothing(
        self,
        make_chaos: Callable[[str], Chaos],
        redis_url: str,
        request: pytest.FixtureRequest,
    ) -> None:
        """A second SIGTERM during a graceful stop under load exits at once; a new worker handles every event, duplicating at most what was in flight."""
        chaos = make_chaos(redis_url)
        consumers, batch = 4, 20
        overrides = {
            "consumers": consumers,
            "batch_size": batch,
            "shutdown_timeout_s": 30.0,
            "reaper": {"min_idle_ms": 500, "batch": batch},
        }
        worker = chaos.start(chaos.write_config(overrides))
        worker.wait_for_log("worker_started", timeout=30)
        rate = sized(500.0, 1000.0)
        producer = Producer(chaos.worker_url, chaos.stream, 1_000_000, rate)
        request.addfinalizer(producer.close)
        producer.start()
        # slow handlers keep the graceful stop waiting
        slow = range(2_000_000, 2_000_002)
        publish(
            chaos.client,
            chaos.stream,
            "slow",
            ({"n": n, "s": 60, "s_after": 0} for n in slow),
        )
        chaos.wait(
            lambda: len(chaos.recorder.started()) == len(slow), 30, "slow", worker
        )
        chaos.wait(lambda: producer.published >= 2 * rate, 30, "2 s of load", worker)

        worker.terminate()
        chaos.wait(
            _logged(worker, "worker_stopping"), 10, "first SIGTERM taken", worker
        )
        assert worker.is_running(), (
            "exited on the first SIGTERM with handlers in flight"
        )
        status, took_s = _stopped_in(worker, 10)
        producer.stop()
        assert took_s < 2.0, f"second SIGTERM: exit took {took_s:.2f}s"
        assert not crashed(worker), worker.tail()
        pending_at_exit = chaos.pending()

        again = chaos.start(chaos.write_config(overrides))
        everything = [*slow, *producer.acked]
        chaos.wait(chaos.recorder.all_handled(everything), 60, "all handled", again)
        chaos.wait(lambda: chaos.pending() == 0, 60, "pending list empty", again)
        result = outcome(chaos.recorder, everything)
        # what one process holds: per consumer a batch in hand and one read
        # ahead, plus the reaper's claimed batch
        bound = (2 * consumers + 1) * batch
        print_report(
            "second-sigterm",
            events=len(everything),
            exit_status=status,
            exit_s=round(took_s, 2),
            pending_at_exit=pending_at_exit,
            lost=len(result.missing),
            duplicates=result.duplicates,
            duplicate_bound=bound,
        )
        # A forced stop exits 128 + the signal (README: Signals and exit codes).
        assert status == 128 + signal.SIGTERM, worker.tail()
        assert result.duplicates <= bound
        assert chaos.dead_letter_ids() == []
        assert not crashed(again), again.tail()
        again.wait_for_log("worker_started", timeout=30)
        status, _ = _stopped_in(again, 15)
        assert status == 0, again.tail()
