"""Shared code of the chaos suite: sizes, the chaos app, a blackhole proxy, probes.

Kept out of a ``conftest.py`` on purpose (mypy would see a second ``conftest``
module); pytest puts ``tests/chaos`` on ``sys.path`` for the test modules here
(the default ``prepend`` import mode), hence ``from chaos_harness import ...``.

Every chaos test runs real ``agentstream-worker`` processes against a Redis of
its own (the one that is killed, cut off, flushed...), while the chaos app
records each handling in *another* Redis, the session's, which no fault
touches: what the handlers did survives whatever happens to the worker's Redis.

Sizes: CI runs small counts; ``CHAOS_SCALE=full`` runs the sizes of the issue
"Prove it resilient" (100,000 events for the worker crashes, ...)::

    CHAOS_SCALE=full .venv/bin/pytest tests/chaos -m chaos -s

(``-s`` shows the printed loss and duplicate counts.)
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from redis_server import HOST, wait_for

# tests/e2e is on sys.path only when pytest collected a test there: running
# tests/chaos alone needs it too, for worker_harness.
_E2E_DIR = str(Path(__file__).resolve().parent.parent / "e2e")
if _E2E_DIR not in sys.path:
    sys.path.append(_E2E_DIR)

from worker_harness import (
    GROUP,
    WorkerProcess,
    base_config,
    deep_merge,
    worker_env,
    write_config,
)

__all__ = [
    "APP_MODULE",
    "CHAOS_APP_SOURCE",
    "CHAOS_DEFAULTS",
    "FULL",
    "GROUP",
    "RETRY_CONSUMER",
    "BlackholeProxy",
    "Chaos",
    "ChaosRecorder",
    "Outcome",
    "Producer",
    "WorkerProcess",
    "chaos_worlds",
    "cpu_seconds",
    "crashed",
    "events_total",
    "http_status",
    "live_consumer_names",
    "make_chaos_fixture",
    "metric_samples",
    "outcome",
    "print_report",
    "publish",
    "sized",
    "wait",
    "write_chaos_app",
]

T = TypeVar("T")

#: ``CHAOS_SCALE=full`` switches every scenario to its full size.
FULL = os.environ.get("CHAOS_SCALE", "").strip().lower() == "full"

#: Where the worker parks failed entries until the reaper retries them.
RETRY_CONSUMER = "agentstream-retry"

APP_MODULE = "chaos_app"
NAME_PREFIX = "chaos"


def sized(ci: T, full: T) -> T:
    """``full`` under ``CHAOS_SCALE=full``, else ``ci``."""
    return full if FULL else ci


# -- the chaos app -----------------------------------------------------------------

CHAOS_APP_SOURCE = '''\
"""The chaos test app: async handlers that record every handling in Redis.

Environment: TEST_REDIS_URL (where to record: not the worker's Redis, which the
tests kill, cut off and flush) and TEST_KEY_PREFIX (key namespace).

Records, under the prefix, keyed by data["n"]:
- handled      HINCRBY <n> 1 once a handler completed (duplicates show as > 1);
- pid:<pid>    INCR per completed handling in that worker process;
- started      HINCRBY <n> 1 when a "slow", "hang" or "fail" handler starts;
- deliveries:<n>  RPUSH {delivery_count, consumer, pid, t} at those starts;
- cancelled:<n>   RPUSH <delivery_count> when a hanging handler was cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.asyncio.retry import Retry as RedisRetry

from agentstream import App, Event

app = App()

_client = aioredis.Redis.from_url(
    os.environ["TEST_REDIS_URL"],
    socket_timeout=5,
    socket_connect_timeout=2,
    retry=RedisRetry(NoBackoff(), 2),
)
_prefix = os.environ["TEST_KEY_PREFIX"]
_pid = os.getpid()


async def _done(event: Event) -> None:
    pipe = _client.pipeline(transaction=False)
    pipe.hincrby(f"{_prefix}handled", str(event.data["n"]), 1)
    pipe.incr(f"{_prefix}pid:{_pid}")
    await pipe.execute()


async def _started(event: Event) -> None:
    key = str(event.data["n"])
    record = {
        "delivery_count": event.delivery_count,
        "consumer": event.consumer,
        "pid": _pid,
        "t": time.time(),
    }
    pipe = _client.pipeline(transaction=False)
    pipe.hincrby(f"{_prefix}started", key, 1)
    pipe.rpush(f"{_prefix}deliveries:{key}", json.dumps(record))
    await pipe.execute()


@app.handler("ok")
async def on_ok(event: Event) -> None:
    """Sleep data.get("s", 0.001) s (about 1 ms), then record the handling."""
    await asyncio.sleep(event.data.get("s", 0.001))
    await _done(event)


@app.handler("slow")
async def on_slow(event: Event) -> None:
    """Sleep data["s"] s; on later deliveries data["s_after"] when given."""
    await _started(event)
    seconds = event.data["s"]
    if event.delivery_count > 1:
        seconds = event.data.get("s_after", seconds)
    await asyncio.sleep(seconds)
    await _done(event)


@app.handler("hang")
async def on_hang(event: Event) -> None:
    """Hang on the first data.get("hangs", 1) deliveries, succeed afterwards."""
    await _started(event)
    if event.delivery_count <= event.data.get("hangs", 1):
        try:
            await asyncio.Event().wait()
        finally:
            key = f"{_prefix}cancelled:{event.data['n']}"
            await asyncio.shield(_client.rpush(key, event.delivery_count))
    await _done(event)


@app.handler("fail")
async def on_fail(event: Event) -> None:
    await _started(event)
    raise RuntimeError("boom")
'''


def write_chaos_app(directory: Path) -> Path:
    """Write the chaos app module into ``directory``; return its path."""
    path = directory / f"{APP_MODULE}.py"
    path.write_text(CHAOS_APP_SOURCE, encoding="utf-8")
    return path


# -- what the app recorded ----------------------------------------------------------


class ChaosRecorder:
    """Reads what the chaos app recorded under ``prefix`` (in the record Redis)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self.prefix = prefix

    def handled(self) -> dict[int, int]:
        """How many times each event (its ``n``) was handled to completion."""
        raw: dict[Any, Any] = self._client.hgetall(f"{self.prefix}handled")
        return {int(k): int(v) for k, v in raw.items()}

    def handled_count(self) -> int:
        """How many distinct events were handled to completion."""
        return int(self._client.hlen(f"{self.prefix}handled"))

    def started(self) -> dict[int, int]:
        """How many times each slow/hang/fail event's handler started."""
        raw: dict[Any, Any] = self._client.hgetall(f"{self.prefix}started")
        return {int(k): int(v) for k, v in raw.items()}

    def deliveries(self, n: int) -> list[dict[str, Any]]:
        """The recorded starts of event ``n``, oldest first."""
        rows: list[Any] = self._client.lrange(f"{self.prefix}deliveries:{n}", 0, -1)
        return [json.loads(r) for r in rows]

    def cancelled(self, n: int) -> list[int]:
        """The delivery counts at which event ``n``'s hanging handler was cancelled."""
        rows: list[Any] = self._client.lrange(f"{self.prefix}cancelled:{n}", 0, -1)
        return [int(r) for r in rows]

    def by_pid(self, pid: int) -> int:
        """How many handlings worker process ``pid`` completed."""
        value: Any = self._client.get(f"{self.prefix}pid:{pid}")
        return int(value or 0)

    def all_handled(self, keys: Iterable[int]) -> Callable[[], bool]:
        """A predicate: every key in ``keys`` was handled at least once."""
        wanted = set(keys)

        def check() -> bool:
            if self.handled_count() < len(wanted):
                return False
            return wanted <= self.handled().keys()

        return check

    def clear(self) -> None:
        """Delete every record under the prefix."""
        keys = list(self._client.scan_iter(match=f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            self._client.delete(*keys[i : i + 500])


@dataclass
class Outcome:
    """What a run did to its events: lost, handled more than once."""

    expected: int
    missing: list[int] = field(default_factory=list)
    duplicates: int = 0
    twice: dict[int, int] = field(default_factory=dict)


def outcome(recorder: ChaosRecorder, keys: Iterable[int]) -> Outcome:
    """Compare the handlings recorded with the events published (``keys``)."""
    wanted = list(keys)
    handled = recorder.handled()
    result = Outcome(expected=len(wanted))
    result.missing = sorted(set(wanted) - handled.keys())
    result.twice = {k: v for k, v in handled.items() if v > 1}
    result.duplicates = sum(v - 1 for v in result.twice.values())
    return result


def print_report(scenario: str, **numbers: object) -> None:
    """Print one line of a scenario's numbers (shown with ``pytest -s``)."""
    text = " ".join(f"{k}={v}" for k, v in numbers.items())
    print(f"\nCHAOS {scenario}: {text}")  # noqa: T201 - the report is the point


# -- publishing --------------------------------------------------------------------


def _fields(event_type: str, data: Mapping[str, Any]) -> dict[Any, Any]:
    return {"type": event_type, "timestamp": str(time.time()), "data": json.dumps(data)}


def publish(
    client: redis.Redis,
    stream: str,
    event_type: str,
    datas: Iterable[Mapping[str, Any]],
    chunk: int = 2000,
) -> list[str]:
    """XADD events in the upstream wire format, pipelined by ``chunk``; the ids."""
    ids: list[str] = []
    batch: list[Mapping[str, Any]] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for data in batch:
            pipe.xadd(stream, _fields(event_type, data))
        ids.extend(_text(i) for i in pipe.execute())
        batch.clear()

    for data in datas:
        batch.append(data)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return ids


class Producer:
    """Publishes ``total`` ``ok`` events from ``n = first`` on, ``rate`` a second.

    An XADD that fails (Redis down, loading) is retried with the same ``n``
    until Redis answers; ``acked`` maps each ``n`` to the id of the XADD that
    Redis acknowledged. A retried XADD whose first attempt was applied without
    its reply arriving leaves two entries for one ``n`` (a duplicate, never a
    loss).
    """

    def __init__(
        self, url: str, stream: str, total: int, rate: float, first: int = 0
    ) -> None:
        # No client retries: each failed XADD is seen (and retried) here.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=2,
            socket_connect_timeout=1,
            retry=RedisRetry(NoBackoff(), 0),
        )
        self.stream = stream
        self.total = total
        self.rate = rate
        self.first = first
        self.acked: dict[int, str] = {}
        self.acked_at: dict[int, float] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        try:
            for i in range(self.total):
                n = self.first + i
                # pacing: the i-th event goes out at started + i / rate
                delay = started + i / self.rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                while not self._stop.is_set():
                    try:
                        entry_id = self._client.xadd(
                            self.stream, _fields("ok", {"n": n})
                        )
                    except (
                        redis.ConnectionError,
                        redis.TimeoutError,
                        redis.BusyLoadingError,
                    ):
                        self.failures += 1
                        self._stop.wait(0.05)
                        continue
                    self.acked[n] = _text(entry_id)
                    self.acked_at[n] = time.monotonic()
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    @property
    def published(self) -> int:
        """How many events Redis acknowledged so far."""
        return len(self.acked)

    def join(self, timeout: float) -> None:
        """Wait for the producer to publish everything; re-raise its error."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(
                f"producer still publishing after {timeout}s ({self.published} done)"
            )
        if self.error is not None:
            raise AssertionError(f"producer failed: {self.error!r}")

    def stop(self) -> None:
        """Stop publishing now; ``acked`` holds what was published."""
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise AssertionError(f"producer failed: {self.error!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()


# -- one test's world --------------------------------------------------------------


#: Defaults of every chaos worker, over worker_harness.base_config.
CHAOS_DEFAULTS: dict[str, Any] = {
    "app": f"{APP_MODULE}:app",
    "consumers": 4,
    "batch_size": 20,
    "block_ms": 200,
    "ack_interval_ms": 20,
    "handler_timeout_s": 30.0,
    "shutdown_timeout_s": 5.0,
    "name_prefix": NAME_PREFIX,
    "reaper": {
        "interval_s": 0.2,
        "min_idle_ms": 1000,
        "batch": 20,
        "max_deliveries": 5,
        "max_backoff_ms": 60_000,
    },
    "metrics": {"enabled": False},
    "log": {"level": "info", "format": "json"},
}


class Chaos:
    """One test's directory, worker Redis, record Redis, stream and workers.

    ``client`` talks to the worker's Redis (bytes, no decoding); ``records``
    to the record Redis. :meth:`close` kills every worker still running.
    """

    def __init__(
        self, directory: Path, worker_url: str, record_url: str, stream: str
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.worker_url = worker_url
        self.record_url = record_url
        self.stream = stream
        self.dlq = f"{stream}:dlq"
        self.key_prefix = f"{stream}:rec:"
        self.client = redis.Redis.from_url(worker_url)
        self._record_client = redis.Redis.from_url(record_url)
        self.recorder = ChaosRecorder(self._record_client, self.key_prefix)
        self.workers: list[WorkerProcess] = []
        write_chaos_app(self.dir)

    def config(
        self, overrides: Mapping[str, Any] | None = None, *, url: str | None = None
    ) -> dict[str, Any]:
        """The chaos config on ``url`` (the worker Redis by default)."""
        merged = deep_merge(CHAOS_DEFAULTS, overrides or {})
        return base_config(url or self.worker_url, self.stream, merged)

    def write_config(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        name: str = "worker.toml",
        url: str | None = None,
    ) -> Path:
        """Write :meth:`config` to ``name`` in the directory; return its path."""
        return write_config(self.dir, self.config(overrides, url=url), name)

    def start(self, config: Path, *, name: str | None = None) -> WorkerProcess:
        """Start ``agentstream-worker --config config``."""
        worker = WorkerProcess(
            ["--config", str(config)],
            cwd=self.dir,
            env=worker_env(self.record_url, self.key_prefix),
            name=name or f"worker-{len(self.workers)}",
        )
        self.workers.append(worker)
        return worker

    def pending(self) -> int:
        """How many entries of the group are pending (0 without the group)."""
        try:
            summary: Any = self.client.xpending(self.stream, GROUP)
        except redis.ResponseError:
            return 0
        return int(summary["pending"])

    def consumer_names(self) -> list[str]:
        """The names in XINFO CONSUMERS of the group (none without the group)."""
        try:
            rows: Any = self.client.xinfo_consumers(self.stream, GROUP)
        except redis.ResponseError:
            return []
        return [_text(r["name"]) for r in rows]

    def dead_letter_ids(self) -> list[str]:
        """The original ids (``dlq_id``) of the dead letters, oldest first."""
        rows: Any = self.client.xrange(self.dlq)
        return [_text(fields[b"dlq_id"]) for _, fields in rows]

    def dead_letters(self) -> list[dict[str, str]]:
        """The dead letters, fields decoded."""
        rows: Any = self.client.xrange(self.dlq)
        return [{_text(k): _text(v) for k, v in f.items()} for _, f in rows]

    def stream_ids(self) -> set[str]:
        """Every id left in the stream."""
        found: set[str] = set()
        start = "-"
        while True:
            rows: Any = self.client.xrange(self.stream, start, "+", count=10_000)
            found.update(_text(i) for i, _ in rows)
            if len(rows) < 10_000:
                return found
            start = "(" + _text(rows[-1][0])

    def state(self) -> str:
        """The group's pending summary and consumers, for failure messages."""
        try:
            summary: Any = self.client.xpending(self.stream, GROUP)
            rows: Any = self.client.xinfo_consumers(self.stream, GROUP)
            length = self.client.xlen(self.stream)
        except redis.RedisError as exc:
            return f"(group state unavailable: {exc!r})"
        consumers = [
            (_text(r["name"]), int(r["pending"]), int(r["idle"])) for r in rows
        ]
        return (
            f"stream length {length}, pending {summary['pending']}, "
            f"consumers (name, pending, idle_ms) {consumers}, "
            f"handled {self.recorder.handled_count()}"
        )

    def wait(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        what: str,
        *workers: WorkerProcess,
    ) -> None:
        """:func:`wait` whose failure message also shows the group's state."""
        try:
            wait(predicate, timeout, what, *workers)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- group ---\n{self.state()}") from None

    def close(self) -> None:
        """Kill every worker still running; drop the records; close the clients."""
        for worker in self.workers:
            worker.close()
        try:
            self.recorder.clear()
        finally:
            self.client.close()
            self._record_client.close()


@contextmanager
def chaos_worlds(
    directory: Path, record_url: str, stream: str
) -> Iterator[Callable[[str], Chaos]]:
    """Build :class:`Chaos` worlds on given worker Redis URLs; close them all."""
    made: list[Chaos] = []

    def make(worker_url: str) -> Chaos:
        world = Chaos(directory / f"chaos-{len(made)}", worker_url, record_url, stream)
        made.append(world)
        return world

    try:
        yield make
    finally:
        for world in made:
            world.close()


@pytest.fixture(name="make_chaos")
def make_chaos_fixture(
    tmp_path: Path, redis_url: str, stream_name: str
) -> Iterator[Callable[[str], Chaos]]:
    """The ``make_chaos`` fixture: import it into a test module to use it."""
    with chaos_worlds(tmp_path, redis_url, stream_name) as make:
        yield make


def live_consumer_names(worker: WorkerProcess) -> list[str]:
    """The consumer names a running worker logged in ``worker_started``."""
    for record in worker.logs():
        if record.get("event") == "worker_started":
            return list(record["consumers"])
    return []


def crashed(worker: WorkerProcess) -> list[dict[str, Any]]:
    """Log records that say the worker or one of its loops crashed."""
    return [
        r
        for r in worker.logs()
        if r.get("event") in ("worker_crashed", "consumer_crashed")
    ]


# -- waiting -------------------------------------------------------------------------


def wait(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *workers: WorkerProcess,
) -> None:
    """wait_for() whose failure message shows the workers' output tails."""
    try:
        wait_for(predicate, timeout=timeout, interval=0.05)
    except AssertionError:
        tails = "".join(f"\n{w.tail()}" for w in workers)
        raise AssertionError(f"{what}: not reached within {timeout}s{tails}") from None


# -- probes: CPU time, HTTP ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (/proc/<pid>/stat), in seconds."""
    data = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    fields = data.rsplit(")", 1)[-1].split()
    # after "pid (comm)": state is fields[0], so utime (14) and stime (15) are 11, 12
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET ``path`` on the worker's metrics port, or None."""
    url = f"http://{HOST}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def metric_samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` on /metrics: ``(labels, value)``."""
    url = f"http://{HOST}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        labels = {}
        for part in rest.rstrip("}").split('",'):
            key, sep, val = part.partition('="')
            if sep:
                labels[key] = val.rstrip('"')
        samples.append((labels, float(value)))
    return samples


def events_total(port: int, outcome: str) -> float:
    """The sum of ``agentstream_events_total{outcome=...}`` over types."""
    return sum(
        value
        for labels, value in metric_samples(port, "agentstream_events_total")
        if labels.get("outcome") == outcome
    )


# -- a TCP proxy that can blackhole ----------------------------------------------------


class BlackholeProxy:
    """A TCP proxy to ``upstream_port`` on 127.0.0.1 that can cut the network.

    :meth:`cut` stops forwarding in both directions without closing anything:
    connections stay open, bytes wait in the kernel's buffers, and a new
    connection is accepted but not connected onward, as when packets are
    dropped by a partition. :meth:`heal` resumes forwarding; bytes sent during
    the cut then arrive late, as TCP's retransmissions would deliver them.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = (HOST, upstream_port)
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="proxy-accept", daemon=True
        )
        self._accept_thread.start()

    @property
    def url(self) -> str:
        """A redis:// URL through the proxy."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def is_cut(self) -> bool:
        return not self._forwarding.is_set()

    def cut(self) -> None:
        """Stop forwarding; keep every connection open."""
        self._forwarding.clear()

    def heal(self) -> None:
        """Forward again, bytes held during the cut first."""
        self._forwarding.set()

    def close(self) -> None:
        """Close the listener and every connection; join the threads."""
        self._closed.set()
        self._forwarding.set()
        self._accept_thread.join(5)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(
                target=self._serve, args=(client,), name="proxy-conn", daemon=True
            )
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            # A partitioned network does not reach the server: connect on heal.
            while not self._forwarding.wait(0.1):
                if self._closed.is_set():
                    return
            if self._closed.is_set():
                return
            upstream = socket.create_connection(self._upstream, timeout=5)
            upstream.settimeout(None)
            client.settimeout(None)
            self._relay(client, upstream)
        except OSError:
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        socks = [client, upstream]
        while not self._closed.is_set():
            if not self._forwarding.is_set():
                self._forwarding.wait(0.1)
                continue
            readable, _, _ = select.select(socks, [], [], 0.1)
            for sock in readable:
                if not self._forwarding.is_set():
                    break  # cut meanwhile: leave the bytes where they are
                data = sock.recv(65536)
                if not data:
                    return
                peer[sock].sendall(data)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
