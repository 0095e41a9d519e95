"""Hostile entries through a real ``agentstream-worker``: handled or dead-lettered.

One worker process runs for the module, with a ``*`` handler that records
every event it is given. Hypothesis XADDs batches of arbitrary entries
(``fuzz_strategies.entries``); each must either reach the handler as the Event
``decode_event`` makes of it, or land in the dead-letter stream with the
decoder's reason. After each batch a sentinel event must be handled by the
same worker process: it never crashes. Multi-megabyte entries check that its
memory stays bounded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from fuzz_strategies import entries
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstream.event import Event, decode_event
from agentstream.testing import RedisServer, wait_for

_E2E_DIR = str(Path(__file__).resolve().parent.parent / "e2e")
if _E2E_DIR not in sys.path:
    sys.path.insert(0, _E2E_DIR)

from worker_harness import (
    WorkerProcess,
    base_config,
    dead_letters_raw,
    pending_count,
    worker_env,
    write_config,
)

pytestmark = [pytest.mark.fuzz, pytest.mark.redis, pytest.mark.e2e]

APP_MODULE = "fuzz_app"
APP_SOURCE = '''\
"""Records a digest of every event it is given, keyed by entry id."""

import hashlib
import json
import os

import redis

from agentstream import App, Event

app = App()
_client = redis.Redis.from_url(os.environ["TEST_REDIS_URL"], socket_timeout=10)
_prefix = os.environ["TEST_KEY_PREFIX"]


def digest(event: Event) -> str:
    body = json.dumps(
        [event.type, event.data, event.metadata, event.timestamp], sort_keys=True
    )
    return hashlib.sha256(body.encode()).hexdigest()


@app.handler("*")
async def record(event: Event) -> None:
    _client.hset(f"{_prefix}events", event.id, digest(event))


@app.handler("vanish")
async def vanish(event: Event) -> None:
    """Its entry is trimmed away while it runs, then it fails."""
    _client.xdel(event.stream, event.id)
    raise RuntimeError("failed after its entry was trimmed")
'''

STREAM = "fuzz:dispatch"
RSS_LIMIT_MB = 300


def _digest(event: Event) -> str:
    body = json.dumps(
        [event.type, event.data, event.metadata, event.timestamp], sort_keys=True
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Rig:
    """The module's worker, its Redis, and what the app recorded."""

    def __init__(self, directory: Path, server: RedisServer) -> None:
        self.dir = directory
        self.client = redis.Redis.from_url(server.url)
        self.prefix = f"{STREAM}:rec:"
        self.dlq = f"{STREAM}:dlq"
        self.sentinels = itertools.count()
        (directory / f"{APP_MODULE}.py").write_text(APP_SOURCE, encoding="utf-8")
        config = base_config(
            server.url,
            STREAM,
            {
                "app": f"{APP_MODULE}:app",
                "consumers": 2,
                "batch_size": 20,
                "block_ms": 100,
                "unhandled": "dead_letter",
                "log": {"level": "info", "format": "json"},
                "reaper": {"min_idle_ms": 60_000, "max_backoff_ms": 60_000},
            },
        )
        path = write_config(directory, config)
        self.worker = WorkerProcess(
            ["--config", str(path)],
            cwd=directory,
            env=worker_env(server.url, self.prefix),
        )
        self.pid = self.worker.pid
        try:
            self.worker.wait_for_log("worker_started", 30)
        except BaseException:
            self.close()
            raise

    def recorded(self) -> dict[str, str]:
        raw: dict[Any, Any] = self.client.hgetall(f"{self.prefix}events")
        return {_text(k): _text(v) for k, v in raw.items()}

    def dead(self) -> dict[str, dict[bytes, bytes]]:
        return {
            _text(f[b"dlq_id"]): f
            for _, f in dead_letters_raw(self.client, self.dlq)
            if b"dlq_id" in f
        }

    def add(self, fields: Mapping[bytes, bytes]) -> str:
        return _text(self.client.xadd(STREAM, dict(fields)))  # type: ignore[arg-type]

    def sentinel(self) -> str:
        n = next(self.sentinels)
        return self.add({b"type": b"sentinel", b"data": json.dumps({"n": n}).encode()})

    def settle(
        self, ids: list[str], timeout: float = 20
    ) -> tuple[dict[str, str], dict[str, dict[bytes, bytes]]]:
        """Wait until every id was recorded or dead-lettered and none is pending."""
        wanted = set(ids)
        state: dict[str, Any] = {}

        def done() -> bool:
            state["recorded"], state["dead"] = self.recorded(), self.dead()
            seen = wanted & (state["recorded"].keys() | state["dead"].keys())
            return seen == wanted and pending_count(self.client, STREAM) == 0

        try:
            wait_for(done, timeout=timeout, interval=0.01)
        except AssertionError:
            raise AssertionError(
                f"not all of {len(ids)} entries settled in {timeout}s\n"
                + self.worker.tail()
            ) from None
        return state["recorded"], state["dead"]

    def assert_alive(self) -> None:
        assert self.worker.is_running(), self.worker.tail()
        assert self.worker.pid == self.pid
        crashes = [
            r
            for r in self.worker.logs()
            if r.get("event") in ("consumer_crashed", "worker_crashed")
        ]
        assert not crashes, crashes[:1]

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        kb = next(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith("VmRSS:")
        )
        return kb / 1024

    def close(self) -> None:
        self.worker.close()
        self.client.close()


@pytest.fixture(name="rig", scope="module")
def _rig(
    tmp_path_factory: pytest.TempPathFactory, redis_server_bin: str
) -> Iterator[Rig]:
    server = RedisServer(tmp_path_factory.mktemp("fuzz-redis"))
    server.start()
    try:
        rig = Rig(tmp_path_factory.mktemp("fuzz-worker"), server)
        try:
            yield rig
        finally:
            rig.close()
    finally:
        server.stop()


def _check_outcome(
    entry_id: str,
    fields: Mapping[bytes, bytes],
    recorded: Mapping[str, str],
    dead: Mapping[str, Mapping[bytes, bytes]],
) -> None:
    """The entry went where decode_event says, with the same content."""
    expected = decode_event(STREAM, entry_id, fields)
    if isinstance(expected, Event):
        assert entry_id not in dead, (fields, dead[entry_id])
        assert recorded[entry_id] == _digest(expected), fields
    else:
        assert entry_id not in recorded, (fields, expected)
        letter = dead[entry_id]
        assert letter[b"dlq_reason"] == b"malformed", letter
        assert letter[b"dlq_error"] == expected.encode(), (letter, expected)
        kept = {k: v for k, v in letter.items() if not k.startswith(b"dlq_")}
        assert kept == {k: v for k, v in fields.items() if not k.startswith(b"dlq_")}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(entries(), min_size=1, max_size=8))
def test_every_entry_is_handled_or_dead_lettered(
    rig: Rig, batch: list[dict[bytes, bytes]]
) -> None:
    """Each arbitrary entry reaches the handler as its decoded Event or is dead-lettered with the decoder's reason; the worker lives on."""
    ids = [rig.add(fields) for fields in batch]
    ids.append(rig.sentinel())
    recorded, dead = rig.settle(ids)
    for entry_id, fields in zip(ids, batch, strict=False):
        _check_outcome(entry_id, fields, recorded, dead)
    rig.assert_alive()


def test_megabyte_entries_keep_memory_bounded(rig: Rig) -> None:
    """Rounds of multi-megabyte entries (valid, not UTF-8, not an object, too deep, 20k fields) settle and the worker's RSS stays under 300 MB."""
    big = 4 << 20
    batch: list[dict[bytes, bytes]] = [
        {b"type": b"big", b"data": json.dumps({"blob": "x" * big}).encode()},
        {b"type": b"big", b"data": b'{"blob": "' + b"\xff" * big + b'"}'},
        {b"type": b"big", b"data": json.dumps(list(range(600_000))).encode()},
        {b"type": b"big", b"data": b"[" * big},
        {b"type": b"big", b"data": b"{}", b"metadata": b'{"m": "' + b"y" * big + b'"}'},
        {
            b"type": b"big",
            b"data": b"{}",
            **{f"f{i}".encode(): b"v" * 64 for i in range(20_000)},
        },
        {b"x" * (1 << 20): b"a field name of 1 MB", b"type": b"big", b"data": b"{}"},
    ]
    for _ in range(3):
        ids = [rig.add(fields) for fields in batch]
        ids.append(rig.sentinel())
        recorded, dead = rig.settle(ids, timeout=60)
        for entry_id, fields in zip(ids, batch, strict=False):
            _check_outcome(entry_id, fields, recorded, dead)
        rig.client.delete(rig.dlq)  # the test's memory, not the worker's
        rig.assert_alive()
    rss = rig.rss_mb()
    assert rss < RSS_LIMIT_MB, f"worker RSS {rss:.0f} MB after megabyte entries"


def test_entry_trimmed_under_a_failing_handler_is_reported_lost(rig: Rig) -> None:
    """An entry deleted while its handler runs and fails is logged as event_lost, as the README promises."""
    entry_id = rig.add({b"type": b"vanish", b"data": b"{}"})
    rig.worker.wait_for_log(
        lambda r: r.get("event") == "handler_failed" and r.get("event_id") == entry_id,
        20,
    )
    wait_for(lambda: pending_count(rig.client, STREAM) == 0, timeout=20)
    # Gone from the pending list: it must have been reported on the way out.
    rig.worker.wait_for_log(
        lambda r: r.get("event") == "event_lost" and r.get("event_id") == entry_id,
        3,
    )


def test_worker_stops_cleanly_after_the_fuzzing(rig: Rig) -> None:
    """After all of it, the same worker process still shuts down gracefully with status 0."""
    rig.assert_alive()
    rig.worker.send_signal(signal.SIGTERM)
    assert rig.worker.wait(20) == 0, rig.worker.tail()
