"""The real ``agentstream-worker`` process against a real redis-server.

Each test runs the console script in a subprocess with a config written into
its tmp dir, where the test app (``worker_harness.APP_SOURCE``) records every
handler call in Redis. Tests wait on what Redis shows (records, XPENDING, the
dead-letter stream), never on fixed sleeps.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from worker_harness import (
    APP_HANDLERS,
    APP_MODULE,
    CONSUMER_RE,
    E2E,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_START,
    EXIT_USAGE,
    GROUP,
    NAME_PREFIX,
    REAPER_RE,
    WorkerProcess,
    consumers,
    dead_letters,
    dead_letters_raw,
    drained,
    is_gone,
    pending_count,
    publish_raw,
    to_toml,
    write_app,
    xadd_events,
)

from agentstream import RedisStreamTransport
from agentstream.config import load_settings
from agentstream.testing import free_port, wait_for
from agentstream.testing.pytest_plugin import RedisServerFactory

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SECRET = "e2e-S3cret-pa55-7f3a9"


@pytest.fixture(name="e2e_factory")
def _e2e_factory(tmp_path: Path, stream_name: str) -> Iterator[Callable[[str], E2E]]:
    """Build an :class:`E2E` on a given Redis; its workers are killed at teardown."""
    made: list[E2E] = []

    def factory(redis_url: str) -> E2E:
        e2e = E2E(tmp_path / f"e2e-{len(made)}", redis_url, stream_name)
        made.append(e2e)
        return e2e

    try:
        yield factory
    finally:
        for e2e in made:
            e2e.close()


@pytest.fixture(name="e2e")
def _e2e(e2e_factory: Callable[[str], E2E], redis_url: str) -> E2E:
    """An :class:`E2E` on the session's redis-server."""
    return e2e_factory(redis_url)


# -- helpers -------------------------------------------------------------------


def _wait(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *workers: WorkerProcess,
) -> None:
    """wait_for() whose failure message shows the workers' output tails."""
    try:
        wait_for(predicate, timeout=timeout, interval=0.02)
    except AssertionError:
        tails = "".join(f"\n{w.tail()}" for w in workers)
        raise AssertionError(f"{what}: not reached within {timeout}s{tails}") from None


def _all_handled(e2e: E2E, keys: Collection[object]) -> Callable[[], bool]:
    wanted = {str(k) for k in keys}

    def check() -> bool:
        return wanted <= e2e.recorder.handled().keys()

    return check


def _drained(e2e: E2E) -> Callable[[], bool]:
    return lambda: drained(e2e.client, e2e.stream)


def _started(e2e: E2E, keys: Collection[object], times: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        return all(len(e2e.recorder.deliveries(k)) >= times for k in keys)

    return check


def _summary(bad: Mapping[str, Any], limit: int = 10) -> str:
    items = sorted(bad.items())[:limit]
    return f"{len(bad)} keys, e.g. {items}"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _own_consumers(e2e: E2E) -> list[dict[str, Any]]:
    return [
        c
        for c in consumers(e2e.client, e2e.stream)
        if c["name"].startswith(NAME_PREFIX)
    ]


def _dlq_by_id(e2e: E2E) -> dict[str, dict[str, str]]:
    return {d["dlq_id"]: d for d in dead_letters(e2e.client, e2e.dlq)}


# -- the harness itself (no worker needed) ----------------------------------------


class TestHarness:
    def test_config_writer_output_is_a_valid_worker_config(self, e2e: E2E) -> None:
        """The TOML writer round-trips the base config and the real loader accepts it."""
        config = e2e.config(
            {"reaper": {"min_idle_ms": 500}, "unhandled": "dead_letter"}
        )
        text = to_toml(config)
        assert tomllib.loads(text) == config
        settings = load_settings(
            e2e.write_config({"reaper": {"min_idle_ms": 500}}), env={}
        )
        assert settings.subscriptions[0].stream == e2e.stream
        assert settings.reaper.min_idle_ms == 500
        assert settings.reaper.max_deliveries == 5
        assert settings.metrics.enabled is False
        assert settings.name_prefix == NAME_PREFIX

    def test_config_writer_escapes_strings_and_nests_tables(self) -> None:
        """Quotes, backslashes, unicode and arrays of tables survive the TOML writer."""
        data: dict[str, Any] = {
            "s": 'a "quoted" \\ back\\slash\n\tü',
            "b": True,
            "f": 0.25,
            "i": -3,
            "xs": [1, 2],
            "weird key": 1,
            "t": {"u": {"v": "w"}},
            "arr": [{"x": 1}, {"x": 2, "sub": {"y": "z"}}],
        }
        assert tomllib.loads(to_toml(data)) == data

    def test_app_module_registers_the_handlers(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
    ) -> None:
        """The test app imports and registers one handler per behaviour (and "*" on demand)."""
        write_app(tmp_path)
        monkeypatch.setenv("TEST_REDIS_URL", redis_url)
        monkeypatch.setenv("TEST_KEY_PREFIX", "harness:")
        for fallback, extra in (("0", set()), ("1", {"*"})):
            monkeypatch.setenv("TEST_APP_FALLBACK", fallback)
            spec = importlib.util.spec_from_file_location(
                f"{APP_MODULE}_{fallback}", tmp_path / f"{APP_MODULE}.py"
            )
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            types = {h.event_type for h in module.app.handlers}
            assert (
                types == {"ok", "slow", "fail", "hang", "retry", "dead", "sync"} | extra
            )
            names = {h.name.rsplit(".", 1)[-1] for h in module.app.handlers}
            assert set(APP_HANDLERS) <= names
            assert [
                h.is_async for h in module.app.handlers if h.event_type == "sync"
            ] == [False]

    def test_teardown_kills_every_worker_process(self, e2e: E2E) -> None:
        """WorkerProcess.close() leaves no process of a processes=2 worker alive."""
        worker = e2e.start(e2e.write_config({"processes": 2}))
        _wait(lambda: len(worker.descendants()) >= 2, 20, "2 worker processes", worker)
        pids = worker.descendants()
        worker.close()
        assert not worker.is_running()
        assert all(is_gone(pid) for pid in pids), pids


# -- throughput and delivery ----------------------------------------------------------


class TestDelivery:
    def test_each_of_10000_events_is_handled_exactly_once(self, e2e: E2E) -> None:
        """Four consumers handle 10,000 transport-published events exactly once, then exit 0 on SIGTERM with nothing pending."""
        total = 10_000
        transport = RedisStreamTransport(
            e2e.stream, redis_url=e2e.redis_url, max_len=100_000
        )
        try:
            for n in range(total // 2):
                transport.publish("ok", {"n": n})
            worker = e2e.start()
            for n in range(total // 2, total):
                transport.publish("ok", {"n": n})
        finally:
            transport.close()

        _wait(lambda: e2e.recorder.handled_count() >= total, 60, "all handled", worker)
        _wait(_drained(e2e), 10, "group drained", worker)

        handled = e2e.recorder.handled()
        missing = {str(n) for n in range(total)} - handled.keys()
        assert not missing, f"never handled: {sorted(missing)[:10]}"
        twice = {k: v for k, v in handled.items() if v != 1}
        assert not twice, f"handled more than once: {_summary(twice)}"
        counts = e2e.recorder.delivery_counts(range(total))
        redelivered = {k: v for k, v in counts.items() if v != [1]}
        assert not redelivered, f"delivered more than once: {_summary(redelivered)}"

        records = [e2e.recorder.deliveries(n)[0] for n in range(0, total, 97)]
        names = {r["consumer"] for r in records}
        assert all(CONSUMER_RE.match(name) for name in names), names
        assert len(names) >= 2, f"one consumer did all the work: {names}"

        worker.terminate()
        assert worker.wait(15) == EXIT_OK, worker.tail()
        assert pending_count(e2e.client, e2e.stream) == 0

    def test_sigkill_mid_run_loses_nothing(self, e2e: E2E) -> None:
        """After SIGKILL mid-run a new worker on the same config handles every event at least once and drains the pending list."""
        total = 3000
        config = e2e.write_config({"reaper": {"min_idle_ms": 1000}})
        xadd_events(
            e2e.client, e2e.stream, "slow", ({"n": n, "s": 0.002} for n in range(total))
        )

        first = e2e.start(config)
        _wait(lambda: e2e.recorder.handled_count() >= 200, 30, "first handlings", first)
        first.kill()
        assert first.returncode == -signal.SIGKILL
        # precondition: the kill caught entries delivered but not acknowledged
        assert pending_count(e2e.client, e2e.stream) > 0

        second = e2e.start(config)
        _wait(
            _all_handled(e2e, range(total)), 60, "all handled after the restart", second
        )
        _wait(_drained(e2e), 30, "pending list empty", second)

        handled = e2e.recorder.handled()
        assert all(handled[str(n)] >= 1 for n in range(total))
        counts = e2e.recorder.delivery_counts(range(total))
        assert all(counts[str(n)] for n in range(total))
        redelivered = [k for k, v in counts.items() if max(v) > 1]
        assert redelivered, "no entry pending at the kill shows delivery_count > 1"
        second.terminate()
        assert second.wait(15) == EXIT_OK, second.tail()

    def test_handlers_see_every_event_field(self, e2e: E2E) -> None:
        """Handlers get id, stream, type, timestamp, data, metadata, delivery_count, consumer and group; sync ones run off the event loop."""
        transport = RedisStreamTransport(e2e.stream, redis_url=e2e.redis_url)
        try:
            before = time.time()
            ok_id = transport.publish("ok", {"n": "a", "x": [1, 2]}, {"trace": "t-1"})
            sync_id = transport.publish("sync", {"n": "b"})
        finally:
            transport.close()
        worker = e2e.start()
        _wait(_all_handled(e2e, ["a", "b"]), 20, "both handled", worker)

        (ok,) = e2e.recorder.deliveries("a")
        assert ok["id"] == ok_id
        assert ok["stream"] == e2e.stream
        assert ok["type"] == "ok"
        assert before - 1 <= ok["timestamp"] <= time.time()
        assert ok["data"] == {"n": "a", "x": [1, 2]}
        assert ok["metadata"] == {"trace": "t-1"}
        assert ok["delivery_count"] == 1
        assert CONSUMER_RE.match(ok["consumer"]), ok["consumer"]
        assert ok["group"] == GROUP
        assert ok["on_loop"] is True

        (sync,) = e2e.recorder.deliveries("b")
        assert sync["id"] == sync_id
        assert sync["metadata"] == {}
        assert sync["on_loop"] is False, "a sync handler ran on the event loop"

    def test_processes_share_the_work(self, e2e: E2E) -> None:
        """With processes=2 and consumers=2 the processes use distinct consumer names, share 2,000 events once each, and a SIGTERM ends both."""
        worker = e2e.start(e2e.write_config({"processes": 2, "consumers": 2}))

        def four_consumers() -> bool:
            try:
                names = [c["name"] for c in _own_consumers(e2e)]
            except redis.ResponseError:  # the stream or group does not exist yet
                return False
            return len([n for n in names if CONSUMER_RE.match(n)]) >= 4

        _wait(four_consumers, 30, "4 consumers reading", worker)
        names = [c["name"] for c in _own_consumers(e2e) if CONSUMER_RE.match(c["name"])]
        assert len(names) == len(set(names)) == 4, names
        matches = [CONSUMER_RE.match(n) for n in names]
        processes = {m.group(1) for m in matches if m}
        assert len(processes) == 2, names

        total = 2000
        xadd_events(e2e.client, e2e.stream, "ok", ({"n": n} for n in range(total)))
        _wait(_all_handled(e2e, range(total)), 60, "all handled", worker)
        _wait(_drained(e2e), 10, "group drained", worker)
        handled = e2e.recorder.handled()
        assert all(handled[str(n)] == 1 for n in range(total))
        pids = {e2e.recorder.deliveries(n)[0]["pid"] for n in range(0, total, 7)}
        assert len(pids) == 2, f"events handled by pids {pids}"

        worker.terminate()
        assert worker.wait(15) == EXIT_OK, worker.tail()
        assert _own_consumers(e2e) == []


# -- failures, retries and dead letters --------------------------------------------------


class TestRedelivery:
    def test_failing_handler_backs_off_then_is_dead_lettered(self, e2e: E2E) -> None:
        """A handler that raises is redelivered by the reaper with growing backoff and dead-lettered after max_deliveries=3 with its error."""
        min_idle_s = 0.5
        config = e2e.write_config(
            {
                "reaper": {
                    "min_idle_ms": 500,
                    "max_deliveries": 3,
                    "max_backoff_ms": 60_000,
                }
            }
        )
        before = time.time()
        (entry_id,) = xadd_events(e2e.client, e2e.stream, "fail", [{"n": "f"}])
        worker = e2e.start(config)
        _wait(lambda: e2e.client.xlen(e2e.dlq) >= 1, 30, "a dead letter", worker)
        _wait(_drained(e2e), 10, "group drained", worker)

        records = e2e.recorder.deliveries("f")
        assert [r["delivery_count"] for r in records] == [1, 2, 3]
        assert CONSUMER_RE.match(records[0]["consumer"]), records[0]["consumer"]
        for record in records[1:]:
            assert REAPER_RE.match(record["consumer"]), record["consumer"]
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(records)]
        # backoff: min_idle * 2**(delivery_count - 1), i.e. 0.5 s then 1 s
        assert gaps[0] >= min_idle_s * 0.9, gaps
        assert gaps[1] >= 2 * min_idle_s * 0.9, gaps
        assert gaps[1] > gaps[0], gaps
        assert e2e.recorder.handled() == {}

        (dead,) = dead_letters(e2e.client, e2e.dlq)
        assert dead["type"] == "fail"
        assert json.loads(dead["data"]) == {"n": "f"}
        assert before <= float(dead["timestamp"]) <= time.time()
        assert dead["dlq_stream"] == e2e.stream
        assert dead["dlq_id"] == entry_id
        assert dead["dlq_group"] == GROUP
        assert dead["dlq_reason"] == "max_deliveries"
        assert "boom" in dead["dlq_error"]
        assert dead["dlq_delivery_count"] == "3"
        assert records[-1]["t"] - 1 <= float(dead["dlq_at"]) <= time.time()

    def test_backoff_is_capped_by_max_backoff_ms(self, e2e: E2E) -> None:
        """With max_backoff_ms == min_idle_ms the redelivery gaps stay flat instead of doubling."""
        config = e2e.write_config(
            {"reaper": {"min_idle_ms": 400, "max_deliveries": 4, "max_backoff_ms": 400}}
        )
        xadd_events(e2e.client, e2e.stream, "fail", [{"n": "f"}])
        worker = e2e.start(config)
        _wait(lambda: e2e.client.xlen(e2e.dlq) >= 1, 30, "a dead letter", worker)

        records = e2e.recorder.deliveries("f")
        assert [r["delivery_count"] for r in records] == [1, 2, 3, 4]
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(records)]
        assert min(gaps) >= 0.4 * 0.9, gaps
        # uncapped, the last gap would be 0.4 * 2**2 = 1.6 s
        assert max(gaps) < 1.2, gaps
        (dead,) = dead_letters(e2e.client, e2e.dlq)
        assert dead["dlq_reason"] == "max_deliveries"
        assert dead["dlq_delivery_count"] == "4"

    def test_retry_leaves_the_event_for_redelivery(self, e2e: E2E) -> None:
        """A handler raising Retry gets the event again (delivery_count 2) and nothing is dead-lettered."""
        config = e2e.write_config({"reaper": {"min_idle_ms": 300}})
        xadd_events(e2e.client, e2e.stream, "retry", [{"n": "r"}])
        worker = e2e.start(config)
        _wait(_all_handled(e2e, ["r"]), 20, "handled on redelivery", worker)
        _wait(_drained(e2e), 10, "group drained", worker)
        assert [r["delivery_count"] for r in e2e.recorder.deliveries("r")] == [1, 2]
        assert e2e.client.xlen(e2e.dlq) == 0

    def test_hanging_handler_times_out_without_blocking_others(self, e2e: E2E) -> None:
        """A handler hanging past handler_timeout_s is cancelled and redelivered, while the other consumers keep handling events."""
        timeout_s = 2.0
        config = e2e.write_config(
            {
                "consumers": 2,
                "handler_timeout_s": timeout_s,
                "reaper": {"min_idle_ms": 500},
            }
        )
        xadd_events(e2e.client, e2e.stream, "hang", [{"n": "h"}])
        worker = e2e.start(config)
        _wait(_started(e2e, ["h"]), 20, "the hang started", worker)

        hung_consumer = e2e.recorder.deliveries("h")[0]["consumer"]
        others = range(100)
        xadd_events(e2e.client, e2e.stream, "ok", ({"n": n} for n in others))

        def most_others_handled() -> bool:
            handled = e2e.recorder.handled()
            return sum(str(n) in handled for n in others) >= len(others) // 2

        # Entries the hung consumer already fetched may wait for it: ask for
        # half of them, handled by the other consumer while the hang lasts.
        _wait(most_others_handled, timeout_s * 0.9, "others handled meanwhile", worker)
        assert len(e2e.recorder.deliveries("h")) == 1, (
            "the hang was redelivered too early"
        )
        consumers_meanwhile = {
            e2e.recorder.deliveries(n)[0]["consumer"]
            for n in others
            if e2e.recorder.deliveries(n)
        }
        assert consumers_meanwhile - {hung_consumer}, consumers_meanwhile

        _wait(_all_handled(e2e, others), 20, "all others handled", worker)
        _wait(_all_handled(e2e, ["h"]), 20, "the hang handled on redelivery", worker)
        _wait(_drained(e2e), 10, "group drained", worker)
        records = e2e.recorder.deliveries("h")
        assert [r["delivery_count"] for r in records] == [1, 2]
        # not redelivered while the first call was still running
        assert records[1]["t"] - records[0]["t"] >= timeout_s * 0.95
        assert e2e.recorder.cancelled("h") == [1], (
            "the timed-out handler was not cancelled"
        )


class TestDeadLetters:
    def test_malformed_entries_are_dead_lettered_at_once(self, e2e: E2E) -> None:
        """Entries without a type, with data that is not a JSON object, or with non-UTF-8 bytes go to the DLQ at once with a reason."""
        config = e2e.write_config({"reaper": {"min_idle_ms": 60_000}})
        cases: dict[str, tuple[dict[Any, Any], str]] = {
            "no type": ({"data": "{}"}, "type"),
            "data is a list": ({"type": "ok", "data": "[1,2]"}, "not a JSON object"),
            "data is a string": ({"type": "ok", "data": '"x"'}, "not a JSON object"),
            "data not JSON": ({"type": "ok", "data": "{nope"}, "not valid JSON"),
            "no data": ({"type": "ok", "timestamp": "1.0"}, "data"),
            "data not UTF-8": ({"type": "ok", "data": b'{"n": "\xff"}'}, "UTF-8"),
            "type not UTF-8": ({"type": b"\xfe\xff", "data": "{}"}, "UTF-8"),
        }
        ids = {
            name: publish_raw(e2e.client, e2e.stream, f)
            for name, (f, _) in cases.items()
        }
        worker = e2e.start(config)
        _wait(
            lambda: e2e.client.xlen(e2e.dlq) >= len(cases),
            15,
            "all dead-lettered",
            worker,
        )
        _wait(_drained(e2e), 10, "group drained", worker)

        raw = dict(dead_letters_raw(e2e.client, e2e.dlq))
        by_id = _dlq_by_id(e2e)
        assert set(by_id) == set(ids.values())
        for name, (fields, expected) in cases.items():
            dead = by_id[ids[name]]
            assert dead["dlq_reason"], f"{name}: empty dlq_reason"
            explained = f"{dead['dlq_reason']} {dead.get('dlq_error', '')}"
            assert expected in explained, f"{name}: {explained!r}"
            assert dead["dlq_delivery_count"] == "1", name
            assert dead["dlq_stream"] == e2e.stream
            # the original fields, byte for byte
            (dlq_entry_id,) = [
                i for i, f in raw.items() if f[b"dlq_id"] == ids[name].encode()
            ]
            original = {
                (k if isinstance(k, bytes) else k.encode()): (
                    v if isinstance(v, bytes) else v.encode()
                )
                for k, v in fields.items()
            }
            kept = {
                k: v for k, v in raw[dlq_entry_id].items() if not k.startswith(b"dlq_")
            }
            assert kept == original, name
        assert e2e.recorder.handled() == {}

    def test_dead_letter_exception_moves_the_event_at_once(self, e2e: E2E) -> None:
        """A handler raising DeadLetter("nope") sends the event to the DLQ on its first delivery with reason "nope"."""
        config = e2e.write_config({"reaper": {"min_idle_ms": 60_000}})
        (entry_id,) = xadd_events(e2e.client, e2e.stream, "dead", [{"n": "d"}])
        worker = e2e.start(config)
        _wait(lambda: e2e.client.xlen(e2e.dlq) >= 1, 15, "a dead letter", worker)
        _wait(_drained(e2e), 10, "group drained", worker)

        assert [r["delivery_count"] for r in e2e.recorder.deliveries("d")] == [1]
        (dead,) = dead_letters(e2e.client, e2e.dlq)
        assert dead["dlq_id"] == entry_id
        assert dead["dlq_reason"] == "nope"
        assert dead["dlq_delivery_count"] == "1"
        assert dead["type"] == "dead"
        assert json.loads(dead["data"]) == {"n": "d"}

    @pytest.mark.parametrize(
        ("unhandled", "via_env"),
        [("ack", False), ("dead_letter", False), ("dead_letter", True)],
        ids=["ack", "dead_letter", "dead_letter-from-env"],
    )
    def test_unknown_type_follows_the_unhandled_setting(
        self, e2e: E2E, unhandled: str, via_env: bool
    ) -> None:
        """An event type with no handler and no "*" fallback is acked or dead-lettered (reason "unhandled") as `unhandled` says."""
        base = {"reaper": {"min_idle_ms": 60_000}}
        env = {}
        if via_env:
            config = e2e.write_config(base | {"unhandled": "ack"})
            env = {"AGENTSTREAM_UNHANDLED": unhandled}
        else:
            config = e2e.write_config(base | {"unhandled": unhandled})
        (mystery_id,) = xadd_events(e2e.client, e2e.stream, "mystery", [{"n": "m"}])
        xadd_events(e2e.client, e2e.stream, "ok", [{"n": "o"}])
        worker = e2e.start(config, env=env)
        _wait(_all_handled(e2e, ["o"]), 15, "the known event handled", worker)
        _wait(_drained(e2e), 10, "group drained (the unknown one acked)", worker)

        assert e2e.recorder.deliveries("m") == []
        if unhandled == "ack":
            assert e2e.client.xlen(e2e.dlq) == 0
        else:
            _wait(lambda: e2e.client.xlen(e2e.dlq) >= 1, 5, "a dead letter", worker)
            (dead,) = dead_letters(e2e.client, e2e.dlq)
            assert dead["dlq_id"] == mystery_id
            assert dead["dlq_reason"] == "unhandled"
            assert dead["type"] == "mystery"

    def test_fallback_handler_takes_unknown_types(self, e2e: E2E) -> None:
        """A "*" handler receives types with no handler of their own, even with unhandled="dead_letter"."""
        config = e2e.write_config({"unhandled": "dead_letter"})
        xadd_events(e2e.client, e2e.stream, "mystery", [{"n": "m"}])
        worker = e2e.start(config, env={"TEST_APP_FALLBACK": "1"})
        _wait(_all_handled(e2e, ["m"]), 15, "handled by the fallback", worker)
        _wait(_drained(e2e), 10, "group drained", worker)
        assert e2e.recorder.deliveries("m")[0]["type"] == "mystery"
        assert e2e.client.xlen(e2e.dlq) == 0


# -- signals ----------------------------------------------------------------------------


def _shutdown_began(
    e2e: E2E, worker: WorkerProcess, logs_before: int
) -> Callable[[], bool]:
    """Evidence the first signal was taken: a shutdown log line, or reading stopped."""
    words = ("shutdown", "shutting", "signal", "stopping", "draining", "drain")

    def check() -> bool:
        for record in worker.logs()[logs_before:]:
            if any(w in json.dumps(record).lower() for w in words):
                return True
        # Idle consumers (no pending) that still read show an idle time under
        # block_ms; once reading stopped it only grows (or they are removed).
        idle = [c for c in _own_consumers(e2e) if c["pending"] == 0]
        return all(c["idle"] > 1000 for c in idle)

    return check


class TestEventLoop:
    @pytest.mark.parametrize(
        ("choice", "broken", "expected"),
        [
            ("auto", False, "uvloop"),
            ("asyncio", False, "asyncio"),
            ("auto", True, "asyncio"),
        ],
    )
    def test_the_setting_picks_the_loop_the_worker_runs_on(
        self, e2e: E2E, choice: str, broken: bool, expected: str
    ) -> None:
        """auto runs on uvloop (installed with agentstream on Linux), or on the stdlib's loop when uvloop does not import (a broken install); asyncio on the stdlib's loop; on each, events are handled once and a SIGTERM drains."""
        env = {}
        if broken:
            fake = e2e.dir / "broken" / "uvloop"
            fake.mkdir(parents=True)
            (fake / "__init__.py").write_text('raise ImportError("libuv.so.1")\n')
            env["PYTHONPATH"] = str(fake.parent)
        config = e2e.write_config({"event_loop": choice, "consumers": 2})
        keys = range(300)
        xadd_events(e2e.client, e2e.stream, "ok", ({"n": n} for n in keys))
        worker = e2e.start(config, env=env)
        _wait(_all_handled(e2e, keys), 30, "all handled", worker)
        _wait(_drained(e2e), 10, "group drained", worker)
        assert worker.wait_for_log("worker_started", 10)["event_loop"] == expected
        assert set(e2e.recorder.handled().values()) == {1}

        worker.terminate()
        assert worker.wait(15) == EXIT_OK, worker.tail()
        assert pending_count(e2e.client, e2e.stream) == 0


class TestSignals:
    def test_sigterm_lets_in_flight_handlers_finish(self, e2e: E2E) -> None:
        """On SIGTERM the in-flight 2 s handlers finish and are acked, consumers are removed, and the worker exits 0 within shutdown_timeout_s."""
        shutdown_s = 5.0
        config = e2e.write_config(
            {"consumers": 4, "batch_size": 1, "shutdown_timeout_s": shutdown_s}
        )
        keys = range(4)
        xadd_events(e2e.client, e2e.stream, "slow", ({"n": n, "s": 2.0} for n in keys))
        worker = e2e.start(config)
        _wait(_started(e2e, keys), 20, "4 slow handlers running", worker)
        assert e2e.recorder.handled() == {}

        signalled = time.monotonic()
        worker.terminate()
        status = worker.wait(shutdown_s + 5)
        elapsed = time.monotonic() - signalled
        assert status == EXIT_OK, worker.tail()
        assert elapsed < shutdown_s, f"exit took {elapsed:.2f}s"
        assert e2e.recorder.handled() == {str(n): 1 for n in keys}
        assert pending_count(e2e.client, e2e.stream) == 0
        assert _own_consumers(e2e) == []
        assert "Traceback" not in worker.stdout() + worker.stderr()

    def test_sigterm_does_not_wait_past_shutdown_timeout(self, e2e: E2E) -> None:
        """A handler outlasting shutdown_timeout_s does not hold the exit; its event stays pending and a later worker handles it."""
        shutdown_s = 2.0
        config = e2e.write_config(
            {"shutdown_timeout_s": shutdown_s, "reaper": {"min_idle_ms": 500}}
        )
        xadd_events(e2e.client, e2e.stream, "slow", [{"n": "s", "s": 60, "s_after": 0}])
        worker = e2e.start(config)
        _wait(_started(e2e, ["s"]), 20, "the slow handler running", worker)

        signalled = time.monotonic()
        worker.terminate()
        worker.wait(shutdown_s + 5)
        elapsed = time.monotonic() - signalled
        assert elapsed < shutdown_s + 1.5, f"exit took {elapsed:.2f}s"
        assert "Traceback" not in worker.stdout() + worker.stderr()
        assert pending_count(e2e.client, e2e.stream) == 1, "the cut-off event was lost"
        assert e2e.recorder.handled() == {}

        again = e2e.start(config)
        _wait(_all_handled(e2e, ["s"]), 20, "handled by the next worker", again)
        _wait(_drained(e2e), 10, "group drained", again)
        assert [r["delivery_count"] for r in e2e.recorder.deliveries("s")] == [1, 2]

    def test_second_signal_exits_at_once_and_loses_nothing(self, e2e: E2E) -> None:
        """A second SIGTERM during the graceful shutdown exits at once; the in-flight events stay pending and a new worker handles them."""
        config = e2e.write_config(
            {
                "consumers": 3,
                "batch_size": 1,
                "shutdown_timeout_s": 20.0,
                "reaper": {"min_idle_ms": 500},
            }
        )
        keys = ["a", "b"]
        xadd_events(
            e2e.client,
            e2e.stream,
            "slow",
            ({"n": k, "s": 60, "s_after": 0} for k in keys),
        )
        worker = e2e.start(config)
        _wait(_started(e2e, keys), 20, "2 slow handlers running", worker)

        logs_before = len(worker.logs())
        worker.terminate()
        _wait(
            _shutdown_began(e2e, worker, logs_before),
            10,
            "the first SIGTERM taken",
            worker,
        )
        assert worker.is_running(), (
            "exited on the first SIGTERM with handlers in flight"
        )
        signalled = time.monotonic()
        worker.terminate()
        status = worker.wait(10)
        elapsed = time.monotonic() - signalled
        assert elapsed < 2.0, f"second SIGTERM: exit took {elapsed:.2f}s"
        assert status == 128 + signal.SIGTERM, worker.tail()  # forced: non-zero
        assert pending_count(e2e.client, e2e.stream) == 2
        assert e2e.recorder.handled() == {}

        # The forced worker released its names: a restart takes them back at
        # once and finishes its own pending entries.
        again = e2e.start(config)
        _wait(_all_handled(e2e, keys), 20, "handled by the next worker", again)
        _wait(_drained(e2e), 10, "group drained", again)
        events = [r.get("event") for r in again.logs()]
        assert "consumer_name_taken" not in events, again.tail()

    def test_sighup_is_a_graceful_stop(self, e2e: E2E) -> None:
        """SIGHUP is logged and drains like SIGTERM: in-flight handlers finish, exit 0."""
        config = e2e.write_config({"consumers": 1, "batch_size": 1})
        xadd_events(e2e.client, e2e.stream, "slow", [{"n": "a", "s": 1.0}])
        worker = e2e.start(config)
        _wait(_started(e2e, ["a"]), 20, "the slow handler running", worker)

        worker.send_signal(signal.SIGHUP)
        assert worker.wait(15) == EXIT_OK, worker.tail()
        assert e2e.recorder.handled() == {"a": 1}
        assert pending_count(e2e.client, e2e.stream) == 0
        received = [r for r in worker.logs() if r.get("event") == "signal_received"]
        assert [r["signal"] for r in received] == ["SIGHUP"], worker.tail()

    def test_ctrl_c_on_the_process_group_is_one_graceful_shutdown(
        self, e2e: E2E
    ) -> None:
        """SIGINT to the whole process group (Ctrl-C in a terminal) with processes=2 is a graceful shutdown, not a second signal: exit 0, in-flight events acked."""
        shutdown_s = 5.0
        config = e2e.write_config(
            {
                "processes": 2,
                "consumers": 1,
                "batch_size": 1,
                "shutdown_timeout_s": shutdown_s,
            }
        )
        keys = ["a", "b"]
        xadd_events(e2e.client, e2e.stream, "slow", ({"n": k, "s": 1.5} for k in keys))
        worker = e2e.start(config)
        _wait(_started(e2e, keys), 30, "2 slow handlers running", worker)

        worker.send_signal_to_group(signal.SIGINT)
        assert worker.wait(shutdown_s + 5) == EXIT_OK, worker.tail()
        assert e2e.recorder.handled() == {"a": 1, "b": 1}, worker.tail()
        assert pending_count(e2e.client, e2e.stream) == 0


# -- Redis outages ----------------------------------------------------------------------


class TestRedisOutage:
    def test_worker_resumes_after_redis_is_killed_and_restarted(
        self, e2e_factory: Callable[[str], E2E], redis_factory: RedisServerFactory
    ) -> None:
        """The same worker process survives a SIGKILL and restart of an AOF Redis and handles every event published before and after."""
        server = redis_factory(appendonly=True, appendfsync="always")
        e2e = e2e_factory(server.url)
        worker = e2e.start()

        before = range(100)
        xadd_events(e2e.client, e2e.stream, "ok", ({"n": n} for n in before))
        _wait(_all_handled(e2e, before), 30, "handled before the outage", worker)
        in_flight = range(100, 108)
        slow_ids = xadd_events(
            e2e.client, e2e.stream, "slow", ({"n": n, "s": 0.3} for n in in_flight)
        )
        _wait(_started(e2e, [100]), 10, "slow handlers running", worker)

        logs_before = len(worker.logs())
        server.kill()

        # Keep Redis down until the worker itself reports it (not merely the
        # slow handlers failing to record): a blip shorter than the client's
        # own reconnect attempts would test nothing.
        def outage_noticed() -> bool:
            for record in worker.logs()[logs_before:]:
                text = json.dumps(record)
                if record.get("level") in ("warning", "error") and not any(
                    i in text for i in slow_ids
                ):
                    return True
            return False

        _wait(outage_noticed, 20, "the worker reporting Redis down", worker)
        assert worker.is_running(), worker.tail()
        server.start()

        after = range(200, 300)
        xadd_events(e2e.client, e2e.stream, "ok", ({"n": n} for n in after))
        everything = [*before, *in_flight, *after]
        _wait(_all_handled(e2e, everything), 60, "all handled after the outage", worker)
        _wait(_drained(e2e), 30, "pending list empty", worker)
        assert worker.is_running(), worker.tail()

        worker.terminate()
        assert worker.wait(15) == EXIT_OK, worker.tail()


# -- the command line --------------------------------------------------------------------


class TestConfigErrors:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"bogus_key": 1}, "bogus_key"),
            ({"reaper": {"bogus": 1}}, "reaper.bogus"),
            ({"consumers": "many"}, "consumers"),
            ({"reaper": {"min_idle_ms": -1}}, "reaper.min_idle_ms"),
            ({"unhandled": "drop"}, "unhandled"),
            ({"redis": {"url": "http://localhost"}}, "redis.url"),
        ],
        ids=[
            "unknown-key",
            "unknown-nested-key",
            "wrong-type",
            "bad-value",
            "bad-choice",
            "bad-url",
        ],
    )
    def test_bad_config_exits_78_naming_the_field(
        self, e2e: E2E, overrides: dict[str, Any], field: str
    ) -> None:
        """An invalid config exits 78 with one stderr line naming the field and no traceback."""
        status, worker = e2e.run(["--config", str(e2e.write_config(overrides))])
        _assert_config_error(status, worker, field)

    def test_bad_environment_value_exits_78_naming_the_field(self, e2e: E2E) -> None:
        """An invalid AGENTSTREAM_REAPER__MIN_IDLE_MS exits 78 naming reaper.min_idle_ms."""
        status, worker = e2e.run(
            ["--config", str(e2e.write_config())],
            env={"AGENTSTREAM_REAPER__MIN_IDLE_MS": "-5"},
        )
        _assert_config_error(status, worker, "reaper.min_idle_ms")

    def test_missing_config_file_exits_78(self, e2e: E2E) -> None:
        """A config path that does not exist exits 78 naming the path."""
        missing = e2e.dir / "no-such-config.toml"
        status, worker = e2e.run(["--config", str(missing)])
        _assert_config_error(status, worker, "no-such-config.toml")

    def test_invalid_toml_exits_78(self, e2e: E2E) -> None:
        """A config file that is not TOML exits 78 naming the file."""
        path = e2e.dir / "broken.toml"
        path.write_text("consumers = = 4\n", encoding="utf-8")
        status, worker = e2e.run(["--config", str(path)])
        _assert_config_error(status, worker, "broken.toml")

    @pytest.mark.parametrize(
        "args",
        [["--bogus-flag"], ["--config"], ["--config", "a.toml", "stray-argument"]],
        ids=["unknown-flag", "missing-value", "stray-argument"],
    )
    def test_bad_usage_exits_2(self, e2e: E2E, args: list[str]) -> None:
        """Command-line misuse exits 2 without a traceback."""
        status, worker = e2e.run(args)
        assert status == EXIT_USAGE, worker.tail()
        assert "Traceback" not in worker.stdout() + worker.stderr()
        assert worker.stderr().strip(), (
            "usage errors should explain themselves on stderr"
        )


def _assert_config_error(status: int, worker: WorkerProcess, field: str) -> None:
    stderr = worker.stderr()
    assert status == EXIT_CONFIG, worker.tail()
    assert "Traceback" not in stderr + worker.stdout(), worker.tail()
    lines = _lines(stderr)
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert field in lines[0], f"{field!r} not named in {lines[0]!r}"


class TestStartup:
    def test_refused_credentials_exit_3(
        self, e2e: E2E, redis_factory: RedisServerFactory
    ) -> None:
        """A worker whose Redis password is refused cannot start: exit 3, password not printed."""
        server = redis_factory(password=SECRET)
        wrong = "e2e-Wr0ng-pa55-1c2d"
        url = f"redis://:{wrong}@127.0.0.1:{server.port}/0"
        config = e2e.write_config({"redis": {"url": url}})
        status, worker = e2e.run(["--config", str(config)], timeout=60)
        output = worker.stdout() + worker.stderr()
        assert status == EXIT_START, worker.tail()
        assert wrong not in output, "the password was printed"


class TestCheck:
    def test_check_lists_handlers_and_exits_0(self, e2e: E2E) -> None:
        """--check on a good config pings Redis, lists the app's handlers, prints the config and exits 0."""
        status, worker = e2e.run(["--config", str(e2e.write_config()), "--check"])
        output = worker.stdout() + worker.stderr()
        assert status == EXIT_OK, worker.tail()
        for name in APP_HANDLERS:
            assert name in output, f"handler {name} not listed"
        assert e2e.stream in output, "the resolved config is not printed"
        assert "event loop: uvloop" in output  # event_loop = "auto", uvloop installed
        assert "Traceback" not in output

    def test_check_is_read_only_and_lists_unhandled_types(self, e2e: E2E) -> None:
        """--check creates no stream or group, and names recent types no handler takes."""
        config = e2e.write_config({"app": f"{APP_MODULE}:other_app"})
        status, worker = e2e.run(["--config", str(config), "--check"])
        assert status == EXIT_OK, worker.tail()
        assert not e2e.client.exists(e2e.stream), "--check created the stream"
        assert "no group yet (created at start)" in worker.stdout()

        e2e.client.xadd(e2e.stream, {"type": "tool-call", "data": "{}"})
        e2e.client.xadd(e2e.stream, {"type": "tool-call", "data": "{}"})
        status, worker = e2e.run(["--config", str(config), "--check"])
        assert status == EXIT_OK, worker.tail()
        assert "that no handler takes: 'tool-call' (2)" in worker.stdout()
        assert not e2e.client.xinfo_groups(e2e.stream), "--check created the group"

    def test_check_with_app_option_uses_that_app(self, e2e: E2E) -> None:
        """--app overrides the config's app: --check lists that app's handlers only."""
        args = ["--config", str(e2e.write_config()), "--app", f"{APP_MODULE}:other_app"]
        status, worker = e2e.run([*args, "--check"])
        output = worker.stdout() + worker.stderr()
        assert status == EXIT_OK, worker.tail()
        assert "on_other" in output
        assert "on_fail" not in output
        assert f"{APP_MODULE}:other_app" in worker.stdout(), (
            "the printed (resolved) configuration does not show the --app override"
        )

    def test_check_fails_when_the_app_does_not_import(self, e2e: E2E) -> None:
        """--check exits non-zero naming the module when the app cannot be imported."""
        args = ["--config", str(e2e.write_config()), "--app", "no_such_module_e2e:app"]
        status, worker = e2e.run([*args, "--check"])
        assert status != EXIT_OK, worker.tail()
        assert "no_such_module_e2e" in worker.stderr(), worker.tail()

    @pytest.mark.parametrize("where", ["url", "password", "password_file"])
    def test_check_never_prints_the_password(
        self, e2e: E2E, redis_factory: RedisServerFactory, where: str
    ) -> None:
        """--check against a password-protected Redis succeeds without printing the password."""
        server = redis_factory(password=SECRET)
        plain_url = f"redis://127.0.0.1:{server.port}/0"
        redis_conf: dict[str, Any]
        if where == "url":
            redis_conf = {"url": server.url}
            assert SECRET in server.url
        elif where == "password":
            redis_conf = {"url": plain_url, "password": SECRET}
        else:
            secret_file = e2e.dir / "redis-password"
            secret_file.write_text(SECRET + "\n", encoding="utf-8")
            redis_conf = {"url": plain_url, "password_file": str(secret_file)}
        config = e2e.write_config({"redis": redis_conf})
        status, worker = e2e.run(["--config", str(config), "--check"])
        output = worker.stdout() + worker.stderr()
        assert SECRET not in output, "the password was printed"
        assert status == EXIT_OK, output

    def test_check_against_unreachable_redis_fails_with_one_line(
        self, e2e: E2E
    ) -> None:
        """--check exits non-zero with one clear stderr line (no traceback, no password) when Redis does not answer."""
        port = free_port()
        config = e2e.write_config(
            {"redis": {"url": f"redis://:{SECRET}@127.0.0.1:{port}/0"}}
        )
        status, worker = e2e.run(["--config", str(config), "--check"], timeout=60)
        output = worker.stdout() + worker.stderr()
        assert status != EXIT_OK, worker.tail()
        assert "Traceback" not in output
        assert SECRET not in output
        lines = _lines(worker.stderr())
        assert len(lines) == 1, f"expected one stderr line, got {lines}"
        assert str(port) in lines[0], lines[0]


def test_worker_script_is_installed() -> None:
    """The agentstream-worker console script sits next to the test interpreter."""
    assert (Path(sys.executable).parent / "agentstream-worker").exists()
