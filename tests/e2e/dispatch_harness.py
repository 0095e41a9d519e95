"""The app and readers of the dispatcher's e2e tests (concurrency, order, failures).

Kept beside ``worker_harness.py`` (same reasons: no second ``conftest``). The app
module is written into a worker's working directory next to the harness app and
named by ``DISPATCH_APP``; its handlers keep their counts in the worker process
(calls in flight, order of each run) and write them to Redis with a sync client
named ``test-app`` (so that ``CLIENT LIST`` can leave it out).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "DISPATCH_APP",
    "DISPATCH_MODULE",
    "DispatchRecorder",
    "publish",
    "write_dispatch_app",
]

DISPATCH_MODULE = "dispatch_app"
DISPATCH_APP = f"{DISPATCH_MODULE}:app"
#: The same handlers with an App-level key function: ``data["run_id"]``.
DISPATCH_ORDERED_APP = f"{DISPATCH_MODULE}:ordered_app"

DISPATCH_APP_SOURCE = '''\
"""Dispatcher e2e handlers; see tests/e2e/dispatch_harness.py."""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time

import anyio
import redis

from agentstream import App, Event

app = App()
ordered_app = App(order_key=lambda event: event.data.get("run_id"))
_r = redis.Redis.from_url(os.environ["TEST_REDIS_URL"], client_name="test-app")
_p = os.environ["TEST_KEY_PREFIX"]
_pid = str(os.getpid())
_lock = threading.Lock()
_live = 0
_max_live = 0
_threads = 0
_max_threads = 0
_runs: dict[str, int] = {}
_max_runs = 0
_last_seq: dict[str, int] = {}


def _enter(event: Event) -> None:
    global _live, _max_live, _max_runs
    n = str(event.data["n"])
    with _lock:
        _live += 1
        pipe = _r.pipeline(transaction=False)
        pipe.hincrby(_p + "calls", n, 1)
        pipe.rpush(_p + "callers:" + n, _pid)
        pipe.hset(_p + "live", _pid, _live)
        if _live > _max_live:
            _max_live = _live
            pipe.hset(_p + "maxlive", _pid, _max_live)
        run = event.data.get("run_id")
        if run is not None:
            seq = event.data["seq"]
            if _runs.get(run):
                pipe.rpush(_p + "violations", f"overlap {run} {seq}")
            if seq != _last_seq.get(run, -1) + 1:
                pipe.rpush(_p + "violations", f"order {run} {seq}")
            _runs[run] = 1
            busy = sum(_runs.values())
            if busy > _max_runs:
                _max_runs = busy
                pipe.hset(_p + "maxruns", _pid, _max_runs)
        pipe.execute()


def _leave(event: Event, done: bool = True) -> None:
    global _live
    n = str(event.data["n"])
    with _lock:
        _live -= 1
        pipe = _r.pipeline(transaction=False)
        if done:
            pipe.hincrby(_p + "done", n, 1)
            pipe.hincrby(_p + "bypid", _pid, 1)
        pipe.hset(_p + "live", _pid, _live)
        run = event.data.get("run_id")
        if run is not None:
            _runs[run] = 0
            _last_seq[run] = event.data["seq"]
        pipe.execute()


def _raise(name: str) -> None:
    if name == "argparse":
        argparse.ArgumentParser(prog="handler").parse_args(["--nope"])
    if name == "exit":
        raise SystemExit(0)
    if name == "interrupt":
        raise KeyboardInterrupt
    if name == "generator":
        raise GeneratorExit
    if name == "cancelled":
        raise asyncio.CancelledError
    raise RuntimeError(name)


async def io(event: Event) -> None:
    """Await data["s"] seconds (data["s_after"] on later deliveries)."""
    _enter(event)
    seconds = event.data.get("s", 0)
    if event.delivery_count > 1:
        seconds = event.data.get("s_after", seconds)
    try:
        await anyio.sleep(seconds)
    except BaseException:
        _leave(event, done=False)
        raise
    _leave(event)


async def block(event: Event) -> None:
    """Block the event loop data["s"] seconds on the first delivery."""
    _enter(event)
    if event.delivery_count == 1:
        time.sleep(event.data["s"])
    _leave(event)


async def kill(event: Event) -> None:
    """Kill the process, as an OOM kill or a segfault would."""
    _enter(event)
    os._exit(137)


async def fail(event: Event) -> None:
    """Raise data["exc"] on the first data["fails"] deliveries."""
    _enter(event)
    if event.delivery_count <= event.data.get("fails", 1):
        _leave(event, done=False)
        _raise(event.data["exc"])
    _leave(event)


def sync_fail(event: Event) -> None:
    """fail(), in a thread."""
    _enter(event)
    if event.delivery_count <= event.data.get("fails", 1):
        _leave(event, done=False)
        _raise(event.data["exc"])
    _leave(event)


def sync_sleep(event: Event) -> None:
    """Sleep data["s"] seconds in a thread, counting the threads in use."""
    global _threads, _max_threads
    _enter(event)
    with _lock:
        _threads += 1
        if _threads > _max_threads:
            _max_threads = _threads
            _r.hset(_p + "maxthreads", _pid, _max_threads)
    time.sleep(event.data["s"])
    with _lock:
        _threads -= 1
    _leave(event)


for _app in (app, ordered_app):
    _app.handler("io")(io)
    _app.handler("block")(block)
    _app.handler("kill")(kill)
    _app.handler("fail")(fail)
    _app.handler("sync_fail")(sync_fail)
    _app.handler("sync_sleep")(sync_sleep)
'''


def write_dispatch_app(directory: Path) -> Path:
    """Write the dispatcher test app into ``directory``; return its path."""
    path = directory / f"{DISPATCH_MODULE}.py"
    path.write_text(DISPATCH_APP_SOURCE, encoding="utf-8")
    return path


def publish(
    client: redis.Redis, stream: str, events: Iterable[tuple[str, Mapping[str, Any]]]
) -> list[str]:
    """XADD ``(type, data)`` events in the wire format, in order; return the ids."""
    pipe = client.pipeline(transaction=False)
    for event_type, data in events:
        pipe.xadd(stream, {"type": event_type, "data": json.dumps(data)})
    return [i.decode() if isinstance(i, bytes) else str(i) for i in pipe.execute()]


class DispatchRecorder:
    """Reads what the dispatcher test app recorded under ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self.prefix = prefix

    def _hash(self, name: str) -> dict[str, int]:
        raw: Any = self._client.hgetall(self.prefix + name)
        return {k.decode(): int(v) for k, v in raw.items()}

    def done(self) -> dict[str, int]:
        """Completed calls per event ``n``."""
        return self._hash("done")

    def calls(self) -> dict[str, int]:
        """Started calls per event ``n``."""
        return self._hash("calls")

    def callers(self, n: object) -> list[int]:
        """The pid of each call of event ``n``, in order."""
        rows: Any = self._client.lrange(f"{self.prefix}callers:{n}", 0, -1)
        return [int(r) for r in rows]

    def live(self) -> int:
        """Calls in flight now, over every process."""
        return sum(self._hash("live").values())

    def max_live(self) -> int:
        """The most calls in flight at once in one process."""
        return max(self._hash("maxlive").values(), default=0)

    def max_runs(self) -> int:
        """The most distinct runs in flight at once in one process."""
        return max(self._hash("maxruns").values(), default=0)

    def max_threads(self) -> int:
        """The most sync handler threads running at once in one process."""
        return max(self._hash("maxthreads").values(), default=0)

    def by_pid(self) -> dict[str, int]:
        """Completed calls per worker process."""
        return self._hash("bypid")

    def violations(self) -> list[str]:
        """Order violations: ``"overlap RUN SEQ"`` or ``"order RUN SEQ"``."""
        rows: Any = self._client.lrange(self.prefix + "violations", 0, -1)
        return [r.decode() for r in rows]
