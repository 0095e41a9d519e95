"""Failure modes of the dispatch path: crash loops, lost leases, sync timeouts, exits.

Each test is the input of a reported failure, on real worker processes and a real
redis-server; each failed on the consumer that handled one event after another.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog
from dispatch_harness import publish
from test_concurrency import World
from worker_harness import E2E, WorkerProcess, dead_letters, pending_count

from agentstream import App
from agentstream.cli import run_worker
from agentstream.exit_codes import EXIT_CRASH
from agentstream.worker.supervisor import Supervisor

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(name="world")
def _world(tmp_path: Path, redis_url: str, stream_name: str) -> Iterator[World]:
    e2e = E2E(tmp_path / "w", redis_url, stream_name)
    try:
        yield World(e2e)
    finally:
        e2e.close()


def _dlq(world: World) -> dict[str, dict[str, str]]:
    return {d["dlq_id"]: d for d in dead_letters(world.client, world.e2e.dlq)}


_CRASH_CONFIG: dict[str, Any] = {
    "consumers": 1,
    "concurrency": 8,
    "name_lease_s": 1.0,
    "reaper": {"min_idle_ms": 1000, "max_deliveries": 3, "interval_s": 0.2},
}


class TestDeliveryLimitOnEveryPath:
    def _run_until_dead_lettered(
        self, world: World, kill_id: str, config: dict[str, Any], restarts: int
    ) -> list[WorkerProcess]:
        workers: list[WorkerProcess] = []
        for _ in range(restarts):
            worker = world.start(config, f"w{len(workers)}.toml")
            workers.append(worker)

            def settled(worker: WorkerProcess = worker) -> bool:
                return not worker.is_running() or kill_id in _dlq(world)

            world.wait(settled, 60, "a death or the dead letter", *workers)
            if kill_id in _dlq(world):
                return workers
        raise AssertionError(f"not dead-lettered after {restarts} restarts")

    def test_crash_loop_across_restarts_ends_in_the_dead_letter_stream(
        self, world: World
    ) -> None:
        """A handler that kills its process, restarted each time: 3 calls, then a max_deliveries dead letter saying the process died; the events behind it are handled."""
        [kill_id] = publish(world.client, world.stream, [("kill", {"n": "kill"})])
        publish(world.client, world.stream, [("io", {"n": n}) for n in range(5)])
        workers = self._run_until_dead_lettered(world, kill_id, _CRASH_CONFIG, 8)
        dead = _dlq(world)[kill_id]
        assert dead["dlq_reason"] == "max_deliveries"
        assert "died" in dead["dlq_error"]
        assert world.rec.calls()["kill"] == 3
        world.wait(world.all_done(5), 30, "the events behind it", *workers)
        assert set(_dlq(world)) == {kill_id}

    def test_crash_loop_in_a_child_restarted_by_its_parent(self, world: World) -> None:
        """processes = 2: the parent restarts the killed child; the crash loop still ends in the dead-letter stream after 3 calls."""
        [kill_id] = publish(world.client, world.stream, [("kill", {"n": "kill"})])
        publish(world.client, world.stream, [("io", {"n": n}) for n in range(5)])
        worker = world.start({**_CRASH_CONFIG, "processes": 2})
        world.wait(lambda: kill_id in _dlq(world), 90, "dead-lettered", worker)
        assert _dlq(world)[kill_id]["dlq_reason"] == "max_deliveries"
        assert world.rec.calls()["kill"] == 3
        world.wait(world.all_done(5), 30, "the events behind it", worker)


class TestLostLease:
    """A stalled consumer loses its entries to another worker's reaper."""

    _CONFIG: ClassVar[dict[str, Any]] = {
        "consumers": 1,
        "concurrency": 10,
        "subscriptions": [],  # filled per test: order_key keeps 9 entries waiting
        "reaper": {"min_idle_ms": 1000, "interval_s": 0.2},
    }

    def _config(self, world: World) -> dict[str, Any]:
        sub = {"stream": world.stream, "group": "agents", "order_key": "data.run_id"}
        return {**self._CONFIG, "subscriptions": [sub]}

    def _events(
        self, first: str, **first_data: Any
    ) -> list[tuple[str, dict[str, Any]]]:
        events = [(first, {"n": 0, "run_id": "r", "seq": 0, **first_data})]
        events += [
            ("io", {"n": n, "run_id": "r", "seq": n, "s": 0.5}) for n in range(1, 10)
        ]
        return events

    def _preload(self, world: World, events: list[tuple[str, dict[str, Any]]]) -> None:
        # In the stream before the worker starts: its first read takes all ten.
        world.client.xgroup_create(world.stream, "agents", id="0", mkstream=True)
        publish(world.client, world.stream, events)

    def _check(self, world: World, stalled: WorkerProcess) -> None:
        # The stalled worker's own call of entry 0 returned (after the other
        # worker's), and its next renewal told it what it lost: by then it has
        # started whatever it was going to start next.
        world.wait(
            lambda: world.rec.done().get("0") == 2, 30, "the stalled call", stalled
        )
        stalled.wait_for_log("lease_lost", timeout=10)
        calls = world.rec.calls()
        assert sorted(calls, key=int) == [str(n) for n in range(10)]
        twice = [n for n, c in calls.items() if c > 1]
        # Only the call that was running during the stall may run twice.
        assert twice in ([], ["0"]), calls
        started_by_stalled = [
            n for n in range(1, 10) if stalled.pid in world.rec.callers(n)
        ]
        assert started_by_stalled == [], calls

    def test_frozen_process_does_not_handle_what_it_lost(self, world: World) -> None:
        """SIGSTOP for longer than min_idle_ms while another worker runs, then SIGCONT: the 9 waiting entries are not started again by the frozen one."""
        config = self._config(world)
        self._preload(world, self._events("io", s=0.5))
        frozen = world.start(config, "a.toml")
        world.wait(lambda: world.rec.calls().get("0") == 1, 20, "first started", frozen)
        frozen.send_signal(signal.SIGSTOP)
        try:
            other = world.start(config, "b.toml")
            world.wait(
                lambda: world.rec.callers(1)[:1] == [other.pid],
                30,
                "the other worker took the entries",
                other,
            )
        finally:
            frozen.send_signal(signal.SIGCONT)
        world.wait(world.all_done(10), 60, "all handled", frozen, other)
        world.wait(world.drained, 10, "group drained", frozen, other)
        self._check(world, frozen)

    def test_blocked_event_loop_does_not_handle_what_it_lost(
        self, world: World
    ) -> None:
        """An async handler blocks the loop for 3 s while another worker runs: the entries queued behind it are not started after it returns."""
        config = self._config(world)
        self._preload(world, self._events("block", s=8))
        blocked = world.start(config, "a.toml")
        world.wait(lambda: world.rec.calls().get("0") == 1, 20, "blocking", blocked)
        other = world.start(config, "b.toml")
        world.wait(world.all_done(10), 60, "all handled", blocked, other)
        world.wait(world.drained, 10, "group drained", blocked, other)
        self._check(world, blocked)


class TestSyncTimeout:
    def test_timeout_is_a_report_the_thread_cap_holds_the_outcome_decides(
        self, world: World
    ) -> None:
        """sync handlers of 4 s, handler_timeout_s = 1, sync_threads = 2, 4 consumers: never more than 2 threads, each event handled once and acked, wait for a thread exported apart from handler time."""
        worker = world.start(
            {
                "consumers": 4,
                "sync_threads": 2,
                "handler_timeout_s": 1.0,
                "reaper": {"min_idle_ms": 1000},
                "metrics": {"enabled": True, "port": 0},
            }
        )
        port = worker.wait_for_log("metrics_serving", timeout=10)["port"]
        publish(
            world.client,
            world.stream,
            [("sync_sleep", {"n": n, "s": 4}) for n in range(4)],
        )
        world.wait(world.all_done(4), 40, "all handled", worker)
        world.wait(world.drained, 10, "group drained", worker)
        assert world.rec.max_threads() <= 2
        assert world.rec.calls() == {str(n): 1 for n in range(4)}
        assert _dlq(world) == {}
        timeouts = [r for r in worker.logs() if r.get("event") == "handler_timeout"]
        assert timeouts and all(r["cancelled"] is False for r in timeouts)

        def thread_waits() -> float:
            waits = _samples(
                _metrics(port), "agentstream_slot_wait_seconds_count", "slot"
            )
            return waits.get("thread", 0.0)

        world.wait(lambda: thread_waits() == 4, 15, "waits exported", worker)
        text = _metrics(port)
        # Handler time excludes the wait for a thread: 4 calls of 4 s make
        # 16 s; counting the two 4 s waits as well would make 24 s.
        duration = _samples(text, "agentstream_handler_duration_seconds_sum", "type")
        assert duration["sync_sleep"] < 20
        waits = _samples(text, "agentstream_slot_wait_seconds_sum", "slot")
        assert waits["thread"] > 6
        waits = _samples(text, "agentstream_slot_wait_seconds_count", "slot")
        assert waits["thread"] == 4

    def test_shutdown_keeps_its_deadline_with_a_stuck_sync_handler(
        self, world: World
    ) -> None:
        """A 25 s sync handler and shutdown_timeout_s = 3: exit 0 on time, what finished acked, the stuck event left pending."""
        worker = world.start({"shutdown_timeout_s": 3.0, "block_ms": 200})
        publish(world.client, world.stream, [("sync_sleep", {"n": "stuck", "s": 25})])
        publish(
            world.client, world.stream, [("io", {"n": n, "s": 0.5}) for n in range(5)]
        )
        world.wait(lambda: world.rec.live() == 6, 20, "all started", worker)
        worker.terminate()
        assert worker.wait(12) == 0, worker.tail()
        assert len(world.rec.done()) == 5
        assert pending_count(world.client, world.stream) == 1
        assert any(r.get("event") == "sync_handlers_abandoned" for r in worker.logs())


class TestHandlerCannotEndTheWorker:
    @pytest.mark.parametrize("handler", ["fail", "sync_fail"])
    def test_base_exceptions_from_a_handler_fail_only_its_event(
        self, world: World, handler: str
    ) -> None:
        """SystemExit, an argparse error, KeyboardInterrupt, GeneratorExit and a stray CancelledError fail their event (retried, then handled); the worker keeps running."""
        worker = world.start(
            {"reaper": {"min_idle_ms": 300, "interval_s": 0.1}, "concurrency": 16}
        )
        kinds = ["exit", "argparse", "interrupt", "generator", "cancelled"]
        publish(
            world.client,
            world.stream,
            [(handler, {"n": kind, "exc": kind}) for kind in kinds]
            + [("io", {"n": n}) for n in range(20)],
        )
        world.wait(world.all_done(25), 40, "all handled after a retry", worker)
        assert worker.is_running(), worker.tail()
        assert {k: world.rec.calls()[k] for k in kinds} == dict.fromkeys(kinds, 2)
        failed = [r for r in worker.logs() if r.get("event") == "handler_failed"]
        assert len(failed) == len(kinds)
        assert not [r for r in worker.logs() if r.get("event") == "worker_crashed"]
        worker.terminate()
        assert worker.wait(15) == 0, worker.tail()


def test_whatever_ends_the_process_logs_worker_crashed(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BaseException out of the supervisor ends the worker with status 1 and one structured worker_crashed line."""

    async def crash(self: Supervisor) -> int:
        raise SystemExit(0)

    monkeypatch.setattr(Supervisor, "run", crash)
    config = tmp_path / "w.toml"
    config.write_text(f'app = "agentstream:App"\n[redis]\nurl = "{redis_url}"\n')
    monkeypatch.setattr("agentstream.cli.import_app", lambda spec: App())
    monkeypatch.setattr("agentstream.cli.configure_logging", lambda conf: None)
    with structlog.testing.capture_logs() as logs:
        status = run_worker(["--config", str(config)])
    assert status == EXIT_CRASH
    assert [r["event"] for r in logs if r["event"] == "worker_crashed"] == [
        "worker_crashed"
    ]


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def _samples(text: str, name: str, label: str) -> dict[str, float]:
    """Values of the samples of ``name``, summed by the value of ``label``."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            key = dict(re.findall(r'(\w+)="([^"]*)"', labels))[label]
            found[key] = found.get(key, 0.0) + float(value)
    return found
