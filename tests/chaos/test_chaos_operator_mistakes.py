"""Chaos 5: producers and operators break the stream under a running worker.

While handlers are stuck on events in flight, someone deletes the stream (DEL),
destroys the consumer group, flushes the whole Redis, or trims the stream below
the pending entries (XTRIM MAXLEN 0). The worker must keep its pid, log no
crash, keep handling events published afterwards, count what it could not
handle as ``lost``, and not spin (CPU time over an idle window). Full size::

    CHAOS_SCALE=full .venv/bin/pytest tests/chaos/test_chaos_operator_mistakes.py -s
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from chaos_harness import (
    GROUP,
    Chaos,
    WorkerProcess,
    cpu_seconds,
    crashed,
    events_total,
    outcome,
    print_report,
    publish,
    sized,
)

from agentstream.testing import RedisServer, free_port

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]

BEFORE = range(sized(100, 2000))
AFTER = range(5000, 5000 + sized(100, 2000))
#: Events stuck in their handlers (one per consumer) when the mistake happens.
STUCK = range(9000, 9002)
IDLE_WINDOW_S = 3.0
MAX_IDLE_CPU_S = 1.0

MISTAKES: dict[str, Callable[[redis.Redis, str], object]] = {
    "del-stream": lambda client, stream: client.delete(stream),
    "group-destroy": lambda client, stream: client.xgroup_destroy(stream, GROUP),
    "flushall": lambda client, stream: client.flushall(),
    "xtrim-maxlen-0": lambda client, stream: client.xtrim(stream, maxlen=0),
}


@pytest.fixture(name="chaos")
def _chaos(
    tmp_path: Path, fresh_redis: RedisServer, redis_url: str, stream_name: str
) -> Iterator[Chaos]:
    world = Chaos(tmp_path / "chaos", fresh_redis.url, redis_url, stream_name)
    try:
        yield world
    finally:
        world.close()


def _start(chaos: Chaos) -> tuple[WorkerProcess, int]:
    """A worker with metrics and a short handler timeout; returns it and its port."""
    port = free_port()
    config = chaos.write_config(
        {
            "consumers": len(STUCK),
            "handler_timeout_s": 1.5,
            "reaper": {"min_idle_ms": 500},
            "metrics": {"enabled": True, "port": port},
        }
    )
    worker = chaos.start(config)
    worker.wait_for_log("worker_started", timeout=30)
    return worker, port


def _stick(chaos: Chaos, worker: WorkerProcess) -> None:
    """Handle BEFORE, then leave STUCK pending in hanging handlers."""
    publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in BEFORE))
    chaos.wait(chaos.recorder.all_handled(BEFORE), 60, "handled before", worker)
    # hangs on its first delivery (until handler_timeout_s), succeeds after
    publish(chaos.client, chaos.stream, "hang", ({"n": n, "hangs": 1} for n in STUCK))
    chaos.wait(
        lambda: chaos.pending() == len(STUCK) and bool(chaos.recorder.started()),
        30,
        "handlers stuck on pending entries",
        worker,
    )


class TestOperatorMistakes:
    @pytest.mark.timeout(sized(90, 180))
    @pytest.mark.parametrize("mistake", sorted(MISTAKES))
    def test_worker_survives_and_keeps_handling(
        self, chaos: Chaos, mistake: str
    ) -> None:
        """After the mistake the same worker process handles new events, crashes nowhere, does not spin, and counts trimmed pending entries as lost."""
        worker, port = _start(chaos)
        _stick(chaos, worker)

        MISTAKES[mistake](chaos.client, chaos.stream)
        publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in AFTER))
        chaos.wait(chaos.recorder.all_handled(AFTER), 60, "handled after", worker)
        chaos.wait(lambda: chaos.pending() == 0, 60, "pending list empty", worker)
        if mistake == "xtrim-maxlen-0":
            # The hanging handlers time out; their retries find the data gone.
            chaos.wait(
                lambda: events_total(port, "lost") >= len(STUCK),
                15,
                f'events_total{{outcome="lost"}} reaching {len(STUCK)}',
                worker,
            )

        before_cpu = cpu_seconds(worker.pid)
        time.sleep(IDLE_WINDOW_S)  # the measurement window itself
        idle_cpu = cpu_seconds(worker.pid) - before_cpu

        result = outcome(chaos.recorder, [*BEFORE, *AFTER])
        stuck = outcome(chaos.recorder, STUCK)
        print_report(
            f"operator-mistake[{mistake}]",
            events=len(BEFORE) + len(STUCK) + len(AFTER),
            stuck_events_handled=len(STUCK) - len(stuck.missing),
            lost_metric=events_total(port, "lost"),
            lost=len(result.missing),
            duplicates=result.duplicates,
            idle_cpu_s=round(idle_cpu, 2),
        )
        assert not result.missing
        if mistake == "xtrim-maxlen-0":
            assert events_total(port, "lost") == len(STUCK)
            lost_logs = [r for r in worker.logs() if r.get("event") == "event_lost"]
            assert len(lost_logs) == len(STUCK), lost_logs
        assert worker.is_running(), worker.tail()
        assert not crashed(worker), worker.tail()
        assert idle_cpu < MAX_IDLE_CPU_S, (
            f"{idle_cpu:.2f}s of CPU in {IDLE_WINDOW_S}s idle: spinning"
        )
        worker.terminate()
        assert worker.wait(15) == 0, worker.tail()

    @pytest.mark.timeout(60)
    def test_stream_deleted_under_stuck_handlers_counts_them_as_lost(
        self, chaos: Chaos
    ) -> None:
        """Events whose handlers hang while their stream is deleted cannot be retried: each is counted in events_total{outcome="lost"}."""
        worker, port = _start(chaos)
        _stick(chaos, worker)
        chaos.client.delete(chaos.stream)
        # handler_timeout_s, then the park, then a metrics report
        chaos.wait(
            lambda: events_total(port, "lost") >= len(STUCK),
            10,
            f'events_total{{outcome="lost"}} reaching {len(STUCK)}',
            worker,
        )
        lost_logs = [r for r in worker.logs() if r.get("event") == "event_lost"]
        assert len(lost_logs) == len(STUCK), lost_logs

    @pytest.mark.timeout(60)
    def test_trim_below_a_dead_consumer_counts_what_it_took_as_lost(
        self, chaos: Chaos
    ) -> None:
        """Entries trimmed away while their consumer is dead are counted as lost by the next worker's reaper, which then handles new events."""
        first, _ = _start(chaos)
        _stick(chaos, first)
        first.kill()
        chaos.client.xtrim(chaos.stream, maxlen=0)

        worker, port = _start(chaos)
        chaos.wait(lambda: chaos.pending() == 0, 30, "pending list empty", worker)
        chaos.wait(
            lambda: events_total(port, "lost") >= len(STUCK),
            15,
            f'events_total{{outcome="lost"}} reaching {len(STUCK)}',
            worker,
        )
        assert events_total(port, "lost") == len(STUCK)
        publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in AFTER))
        chaos.wait(chaos.recorder.all_handled(AFTER), 60, "handled after", worker)
        assert worker.is_running() and not crashed(worker), worker.tail()
