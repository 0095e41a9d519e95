"""Run the real ``agentstream-worker`` in a subprocess and look at what it did.

Kept out of a ``conftest.py`` on purpose: ``tests/`` has no ``__init__.py``, so a
second ``conftest`` module would clash with ``tests/conftest.py`` under mypy.
pytest puts this directory on ``sys.path`` for ``test_worker.py`` (the default
``prepend`` import mode), hence ``from worker_harness import ...``.

What lives here:

- :func:`to_toml`, :func:`base_config`, :func:`write_config`: a config file.
- :data:`APP_SOURCE`, :func:`write_app`: the test app, whose handlers record
  every call in Redis, with behaviours chosen by the event type.
- :class:`WorkerProcess`: one worker process group, its exit code and logs.
- :class:`Recorder`: reads what the test app recorded.
- Publishing and inspection helpers over redis-py.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "APP_ATTR",
    "APP_HANDLERS",
    "APP_MODULE",
    "APP_SOURCE",
    "CONSUMER_RE",
    "E2E",
    "GROUP",
    "NAME_PREFIX",
    "REAPER_RE",
    "Recorder",
    "WorkerProcess",
    "base_config",
    "consumers",
    "dead_letters",
    "dead_letters_raw",
    "deep_merge",
    "drained",
    "http_get",
    "is_gone",
    "pending_count",
    "publish_raw",
    "to_toml",
    "worker_env",
    "worker_executable",
    "write_app",
    "write_config",
    "xadd_events",
]

#: The module the test app is written to, in the worker's working directory.
APP_MODULE = "e2e_app"
APP_ATTR = f"{APP_MODULE}:app"
GROUP = "agents"
NAME_PREFIX = "e2e"

#: A consumer name the worker gives its reading consumers.
CONSUMER_RE = re.compile(rf"^{NAME_PREFIX}-(\d+)-(\d+)$")
#: The consumer name the reaper of a process dispatches claimed entries as.
REAPER_RE = re.compile(rf"^{NAME_PREFIX}-(\d+)-reaper$")


# -- configuration -------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    # bool before int: bool is an int subclass
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a valid TOML basic string (same escapes, \uXXXX).
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()
        )
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def _emit(lines: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    # Plain keys first: after a [header] every key belongs to that table.
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        sub = [*path, _toml_key(key)]
        if isinstance(value, Mapping):
            lines += ["", f"[{'.'.join(sub)}]"]
            _emit(lines, sub, value)
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{'.'.join(sub)}]]"]
                _emit(lines, sub, item)


def to_toml(data: Mapping[str, Any]) -> str:
    """Render nested dicts as TOML: dicts become tables, lists of dicts arrays."""
    lines: list[str] = []
    _emit(lines, [], data)
    return "\n".join(lines).lstrip("\n") + "\n"


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``overrides``, merging nested dicts key by key."""
    out = dict(base)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = deep_merge(current, value)
        else:
            out[key] = value
    return out


def base_config(
    redis_url: str, stream: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A fast-moving worker config on ``stream``, with ``overrides`` merged in."""
    config: dict[str, Any] = {
        "app": APP_ATTR,
        "processes": 1,
        "consumers": 4,
        "batch_size": 100,
        "block_ms": 200,
        "ack_interval_ms": 20,
        "handler_timeout_s": 30.0,
        "shutdown_timeout_s": 5.0,
        "unhandled": "ack",
        "name_prefix": NAME_PREFIX,
        "subscriptions": [{"stream": stream, "group": GROUP}],
        "redis": {"url": redis_url},
        "reaper": {
            "interval_s": 0.2,
            "min_idle_ms": 1000,
            "max_deliveries": 5,
            "max_backoff_ms": 60_000,
        },
        "metrics": {"enabled": False},
        "log": {"level": "info", "format": "json"},
    }
    return deep_merge(config, overrides or {})


def write_config(
    directory: Path, config: Mapping[str, Any], name: str = "worker.toml"
) -> Path:
    """Write ``config`` as TOML into ``directory``; return the file's path."""
    path = directory / name
    path.write_text(to_toml(config), encoding="utf-8")
    return path


# -- the test app ----------------------------------------------------------------

APP_SOURCE = '''\
"""The e2e test app: every handler call is recorded in Redis.

Environment: TEST_REDIS_URL (where to record), TEST_KEY_PREFIX (key namespace),
TEST_APP_FALLBACK=1 (also register a "*" handler).

Records, under the prefix, keyed by data["n"] (the entry id when absent):
- deliveries:<n>  RPUSH of one JSON object per call, at the call's start: the
  event's fields, "t" (time.time()), "on_loop" (whether an event loop runs in
  the calling thread) and "pid";
- handled         HINCRBY <n> 1 when the handler completed without raising;
- cancelled:<n>   RPUSH <delivery_count> when a hanging handler was cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import anyio
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from agentstream import App, DeadLetter, Event, Retry

app = App()
other_app = App()

# No client-side retries: a handler blocked on a dead Redis would stall the loop.
_client = redis.Redis.from_url(
    os.environ["TEST_REDIS_URL"],
    socket_timeout=5,
    socket_connect_timeout=2,
    retry=RedisRetry(NoBackoff(), 0),
)
_prefix = os.environ["TEST_KEY_PREFIX"]


def _key(event: Event) -> str:
    return str(event.data.get("n", event.id))


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _record(event: Event, *, done: bool = False) -> None:
    key = _key(event)
    record = {
        "id": event.id,
        "stream": event.stream,
        "type": event.type,
        "timestamp": event.timestamp,
        "data": event.data,
        "metadata": event.metadata,
        "delivery_count": event.delivery_count,
        "consumer": event.consumer,
        "group": event.group,
        "t": time.time(),
        "on_loop": _on_loop(),
        "pid": os.getpid(),
    }
    pipe = _client.pipeline(transaction=False)
    pipe.rpush(f"{_prefix}deliveries:{key}", json.dumps(record))
    if done:
        pipe.hincrby(f"{_prefix}handled", key, 1)
    pipe.execute()


def _done(event: Event) -> None:
    _client.hincrby(f"{_prefix}handled", _key(event), 1)


@app.handler("ok")
async def on_ok(event: Event) -> None:
    _record(event, done=True)


@app.handler("slow")
async def on_slow(event: Event) -> None:
    """Sleep data["s"] s; on later deliveries data["s_after"] when given."""
    _record(event)
    seconds = event.data["s"]
    if event.delivery_count > 1:
        seconds = event.data.get("s_after", seconds)
    await anyio.sleep(seconds)
    _done(event)


@app.handler("fail")
async def on_fail(event: Event) -> None:
    _record(event)
    raise RuntimeError("boom")


@app.handler("hang")
async def on_hang(event: Event) -> None:
    """Hang on the first data.get("hangs", 1) deliveries, succeed afterwards."""
    _record(event)
    if event.delivery_count <= event.data.get("hangs", 1):
        try:
            await anyio.sleep_forever()
        finally:
            _client.rpush(f"{_prefix}cancelled:{_key(event)}", event.delivery_count)
    _done(event)


@app.handler("retry")
async def on_retry(event: Event) -> None:
    """Raise Retry on the first data.get("retries", 1) deliveries."""
    _record(event)
    if event.delivery_count <= event.data.get("retries", 1):
        raise Retry()
    _done(event)


@app.handler("dead")
async def on_dead(event: Event) -> None:
    _record(event)
    raise DeadLetter("nope")


@app.handler("sync")
def on_sync(event: Event) -> None:
    _record(event)
    time.sleep(event.data.get("s", 0))
    _done(event)


if os.environ.get("TEST_APP_FALLBACK") == "1":

    @app.handler("*")
    async def on_anything(event: Event) -> None:
        _record(event, done=True)


@other_app.handler("other")
async def on_other(event: Event) -> None:
    _record(event, done=True)
'''

#: The handler functions of ``app`` in APP_SOURCE (without the "*" fallback).
APP_HANDLERS = (
    "on_ok",
    "on_slow",
    "on_fail",
    "on_hang",
    "on_retry",
    "on_dead",
    "on_sync",
)


def write_app(directory: Path) -> Path:
    """Write the test app module into ``directory``; return its path."""
    path = directory / f"{APP_MODULE}.py"
    path.write_text(APP_SOURCE, encoding="utf-8")
    return path


# -- the worker process ------------------------------------------------------------


def worker_executable() -> Path:
    """The ``agentstream-worker`` console script next to this interpreter."""
    return Path(sys.executable).parent / "agentstream-worker"


def worker_env(
    redis_url: str, key_prefix: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a worker: ours minus AGENTSTREAM_* and PYTHONPATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTSTREAM_") and k != "PYTHONPATH"
    }
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "TEST_REDIS_URL": redis_url,
            "TEST_KEY_PREFIX": key_prefix,
        }
    )
    env.update(extra or {})
    return env


class WorkerProcess:
    """One ``agentstream-worker`` run, in a process group of its own.

    Output goes to files in ``directory`` so that no pipe can fill and stall
    the worker. Signals go to the worker's pid; :meth:`kill` and
    :meth:`close` SIGKILL the whole group and every descendant (worker
    processes may run in sessions of their own), all spawned by the worker.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        name: str = "worker",
    ) -> None:
        self.argv = [str(worker_executable()), *args]
        self.cwd = cwd
        self.stdout_path = cwd / f"{name}.stdout"
        self.stderr_path = cwd / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(
                self.argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while the worker runs."""
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def descendants(self) -> list[int]:
        """The pids of the processes the worker spawned that are still alive."""
        return [pid for pid, _ in _descendants(self._proc.pid)]

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's own pid (not its children)."""
        if self._proc.poll() is None:  # never signal a reaped pid
            self._proc.send_signal(signum)

    def send_signal_to_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the worker's group, like Ctrl-C."""
        try:
            os.killpg(self._proc.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """SIGTERM the worker: the graceful shutdown."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the worker and everything it spawned, as a crash or OOM would."""
        self._kill_everything()
        self._proc.wait()

    def wait(self, timeout: float) -> int:
        """Wait for the exit status; AssertionError after ``timeout`` seconds."""
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout}s\n{self.tail()}"
            ) from None

    def close(self) -> None:
        """Kill whatever the worker left running; for fixture teardown."""
        self._kill_everything()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _kill_everything(self) -> None:
        # Worker processes may run in sessions of their own (out of reach of
        # killpg) and outlive their parent. Freeze the group so that nothing
        # new is spawned, note every descendant while the parent links still
        # exist, then SIGKILL the group and each descendant by pid.
        self.send_signal_to_group(signal.SIGSTOP)
        descendants = _descendants(self._proc.pid) if self.is_running() else []
        self.send_signal_to_group(signal.SIGKILL)
        for pid, start in descendants:
            if _start_time(pid) == start:  # still the same process
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for pid, start in descendants:
            while _start_time(pid) == start and not _is_zombie(pid):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)

    # -- output ----------------------------------------------------------------

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (from stdout and stderr)."""
        records = []
        for text in (self.stdout(), self.stderr()):
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records

    def wait_for_log(
        self,
        event: str | Callable[[dict[str, Any]], bool],
        timeout: float,
    ) -> dict[str, Any]:
        """Return the first record whose ``event`` is ``event`` (or matches it)."""
        match = event if callable(event) else lambda r: r.get("event") == event
        deadline = time.monotonic() + timeout
        while True:
            for record in self.logs():
                if match(record):
                    return record
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no log record {event!r} within {timeout}s\n{self.tail()}"
                )
            time.sleep(0.02)

    def tail(self, lines: int = 30) -> str:
        """The last lines of both outputs and the exit status, for messages."""
        out = "\n".join(self.stdout().splitlines()[-lines:])
        err = "\n".join(self.stderr().splitlines()[-lines:])
        return (
            f"--- worker {self.pid} returncode={self.returncode} ---\n"
            f"--- stdout ---\n{out}\n--- stderr ---\n{err}"
        )


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid ..."; comm may hold spaces and parentheses
    return data.rsplit(")", 1)[-1].split()


def _start_time(pid: int) -> int | None:
    """The start time of ``pid`` (field 22 of its stat), to detect pid reuse."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (or is a zombie waiting to be reaped)."""
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    fields = _stat(pid)
    return fields is None or fields[0] == "Z"


def _descendants(root: int) -> list[tuple[int, int]]:
    """``(pid, start time)`` of every live descendant of ``root`` (Linux only)."""
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), int(fields[19])))
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


# -- what the app recorded -----------------------------------------------------------


class Recorder:
    """Reads the records the test app wrote under ``prefix``."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self.prefix = prefix

    def handled(self) -> dict[str, int]:
        """How many times each key was handled to completion."""
        raw: dict[Any, Any] = self._client.hgetall(f"{self.prefix}handled")
        return {_text(k): int(v) for k, v in raw.items()}

    def handled_count(self) -> int:
        """How many distinct keys were handled to completion."""
        return int(self._client.hlen(f"{self.prefix}handled"))

    def deliveries(self, key: object) -> list[dict[str, Any]]:
        """Every recorded call for ``key``, oldest first."""
        rows: list[Any] = self._client.lrange(f"{self.prefix}deliveries:{key}", 0, -1)
        return [json.loads(r) for r in rows]

    def delivery_counts(self, keys: Iterable[object]) -> dict[str, list[int]]:
        """The delivery counts recorded per key, in one round trip."""
        names = [str(k) for k in keys]
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.lrange(f"{self.prefix}deliveries:{name}", 0, -1)
        rows = pipe.execute()
        return {
            name: [json.loads(r)["delivery_count"] for r in row]
            for name, row in zip(names, rows, strict=True)
        }

    def cancelled(self, key: object) -> list[int]:
        rows: list[Any] = self._client.lrange(f"{self.prefix}cancelled:{key}", 0, -1)
        return [int(r) for r in rows]


# -- probing the metrics port ---------------------------------------------------------


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int | None, str]:
    """Status and body of GET ``path`` on 127.0.0.1; None when nothing answers."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}{path}", timeout=timeout
        ) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


# -- publishing and inspecting -------------------------------------------------------


def xadd_events(
    client: redis.Redis,
    stream: str,
    event_type: str,
    datas: Iterable[Mapping[str, Any]],
) -> list[str]:
    """XADD events in the upstream wire format in one pipeline; return the ids."""
    pipe = client.pipeline(transaction=False)
    for data in datas:
        pipe.xadd(
            stream,
            {
                "type": event_type,
                "timestamp": str(time.time()),
                "data": json.dumps(data),
            },
        )
    return [_text(i) for i in pipe.execute()]


def publish_raw(client: redis.Redis, stream: str, fields: Mapping[Any, Any]) -> str:
    """XADD ``fields`` exactly as given (to build malformed entries)."""
    return _text(client.xadd(stream, dict(fields)))


def pending_count(client: redis.Redis, stream: str, group: str = GROUP) -> int:
    """How many entries of the group are delivered but not acknowledged."""
    summary: Any = client.xpending(stream, group)
    return int(summary["pending"])


def drained(client: redis.Redis, stream: str, group: str = GROUP) -> bool:
    """Whether the group read every entry of ``stream`` and none is pending."""
    info: Any = client.xinfo_stream(stream)
    groups: Any = client.xinfo_groups(stream)
    for row in groups:
        if _text(row["name"]) == group:
            return bool(
                _text(row["last-delivered-id"]) == _text(info["last-generated-id"])
                and int(row["pending"]) == 0
            )
    return False


def consumers(
    client: redis.Redis, stream: str, group: str = GROUP
) -> list[dict[str, Any]]:
    """The group's consumers: ``name``, ``pending``, ``idle`` (ms)."""
    rows: Any = client.xinfo_consumers(stream, group)
    return [
        {"name": _text(r["name"]), "pending": int(r["pending"]), "idle": int(r["idle"])}
        for r in rows
    ]


def dead_letters_raw(
    client: redis.Redis, dlq_stream: str
) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of a dead-letter stream as ``(id, raw fields)``.

    ``client`` must not decode responses (fields may hold any bytes).
    """
    rows: Any = client.xrange(dlq_stream)
    return [(_text(entry_id), dict(fields)) for entry_id, fields in rows]


def dead_letters(client: redis.Redis, dlq_stream: str) -> list[dict[str, str]]:
    """The entries of a dead-letter stream, fields decoded (bad UTF-8 replaced)."""
    return [
        {_text(k): _text(v) for k, v in fields.items()}
        for _, fields in dead_letters_raw(client, dlq_stream)
    ]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# -- one test's world --------------------------------------------------------------


class E2E:
    """One test's directory, Redis, stream and workers; :meth:`close` kills them.

    The app module is written into ``directory``, which is every worker's
    working directory; records go to ``redis_url`` under ``"{stream}:rec:"``.
    ``client`` does not decode responses.
    """

    def __init__(self, directory: Path, redis_url: str, stream: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.stream = stream
        self.dlq = f"{stream}:dlq"
        self.key_prefix = f"{stream}:rec:"
        self.client = redis.Redis.from_url(redis_url)
        self.recorder = Recorder(self.client, self.key_prefix)
        self.workers: list[WorkerProcess] = []
        write_app(self.dir)

    def config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The base config for this test's Redis and stream, with ``overrides``."""
        return base_config(self.redis_url, self.stream, overrides)

    def write_config(
        self, overrides: Mapping[str, Any] | None = None, name: str = "worker.toml"
    ) -> Path:
        """Write :meth:`config` with ``overrides`` to ``name``; return the path."""
        return write_config(self.dir, self.config(overrides), name)

    def start(
        self,
        config: Path | None = None,
        *,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """Start a worker on ``config`` (the base config when None).

        ``args`` replaces the whole command line when given.
        """
        if args is None:
            args = ["--config", str(config or self.write_config())]
        worker = WorkerProcess(
            args,
            cwd=self.dir,
            env=worker_env(self.redis_url, self.key_prefix, env),
            name=f"worker-{len(self.workers)}",
        )
        self.workers.append(worker)
        return worker

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, WorkerProcess]:
        """Run the worker with ``args`` to its end; return its status and it."""
        worker = self.start(args=args, env=env)
        return worker.wait(timeout), worker

    def close(self) -> None:
        """Kill every worker still running, then close the client."""
        for worker in self.workers:
            worker.close()
        self.client.close()
