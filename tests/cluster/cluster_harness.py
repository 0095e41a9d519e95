"""Worker processes, their test app and a producer for the Cluster and Sentinel tests.

The app records every handled event in a separate, plain Redis (the session's
``redis_server``), so that what the cluster loses in a failover cannot also
erase the evidence.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from agentstream.errors import TransportError
from agentstream.transport.partitioned import PartitionedStream

__all__ = ["Producer", "Recorder", "Worker", "write_app", "write_config"]

APP_MODULE = "cluster_app"

APP_SOURCE = '''\
"""Records each handled event under TEST_KEY_PREFIX in TEST_REDIS_URL."""

from __future__ import annotations

import os

import redis.asyncio

from agentstream import App, DeadLetter, Event, Retry

app = App()
_client = redis.asyncio.Redis.from_url(os.environ["TEST_REDIS_URL"])
_prefix = os.environ["TEST_KEY_PREFIX"]


async def _record(event: Event) -> None:
    data = event.data
    pipe = _client.pipeline(transaction=False)
    pipe.hincrby(f"{_prefix}handled", str(data["n"]), 1)
    if "k" in data:
        pipe.rpush(f"{_prefix}seq:{data['k']}", data["i"])
    await pipe.execute()


@app.handler("ev")
async def on_ev(event: Event) -> None:
    await _record(event)


@app.handler("retry")
async def on_retry(event: Event) -> None:
    if event.delivery_count == 1:
        raise Retry()
    await _record(event)


@app.handler("dead")
async def on_dead(event: Event) -> None:
    raise DeadLetter("unwanted")
'''


def write_app(directory: Path) -> None:
    (directory / f"{APP_MODULE}.py").write_text(APP_SOURCE, encoding="utf-8")


def _toml(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans: JSON is valid TOML here


def write_config(
    directory: Path,
    name: str,
    redis_url: str,
    subscription: Mapping[str, Any],
    *,
    consumers: int = 4,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """A worker config named ``name`` (its consumer-name prefix too)."""
    top = {
        "app": f"{APP_MODULE}:app",
        "consumers": consumers,
        "block_ms": 200,
        "ack_interval_ms": 20,
        "shutdown_timeout_s": 5.0,
        "name_prefix": name,
        "partition_lease_s": 2.0,
        **(extra or {}),
    }
    lines = [f"{k} = {_toml(v)}" for k, v in top.items()]
    lines += ["[redis]", f"url = {_toml(redis_url)}", "wait_timeout_ms = 5000"]
    lines += ["[reaper]", "interval_s = 0.3", "min_idle_ms = 1000"]
    lines += ["max_backoff_ms = 2000", "[metrics]", "enabled = false"]
    lines += ["[log]", 'format = "json"', "[[subscriptions]]"]
    lines += [f"{k} = {_toml(v)}" for k, v in subscription.items()]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Worker:
    """One ``agentstream-worker`` process in its own session, stopped by pid."""

    def __init__(self, directory: Path, config: Path, env: Mapping[str, str]) -> None:
        exe = Path(sys.executable).parent / "agentstream-worker"
        self.log = directory / f"{config.stem}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(exe), "--config", str(config)],
                cwd=directory,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait for the graceful exit; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def worker_env(record_url: str, prefix: str, directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(
        TEST_REDIS_URL=record_url,
        TEST_KEY_PREFIX=prefix,
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(directory),
    )
    return env


class Recorder:
    """What the app recorded."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.prefix = prefix

    def handled(self) -> dict[str, int]:
        raw: dict[str, str] = self.client.hgetall(f"{self.prefix}handled")  # type: ignore[assignment]
        return {k: int(v) for k, v in raw.items()}

    def handled_count(self) -> int:
        return int(self.client.hlen(f"{self.prefix}handled"))

    def sequence(self, key: str) -> list[int]:
        return [int(i) for i in self.client.lrange(f"{self.prefix}seq:{key}", 0, -1)]


def first_seen(sequence: Sequence[int]) -> list[int]:
    """The sequence without repeats (a redelivery), keeping first occurrences."""
    seen: set[int] = set()
    out = []
    for i in sequence:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


class Producer(threading.Thread):
    """Publishes events ``n`` = 0..count-1 in a thread, retrying each until acked.

    ``acked`` holds every ``n`` whose publish returned: what the producer was
    told is stored (with ``wait_replicas``: on that many replicas too).
    """

    def __init__(self, stream: PartitionedStream, count: int, keys: int = 50) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.count = count
        self.keys = keys
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        per_key: dict[str, int] = {}
        for n in range(self.count):
            key = f"key{n % self.keys}"
            i = per_key.get(key, 0)
            while not self.stopped.is_set():
                try:
                    self.stream.publish("ev", {"n": n, "k": key, "i": i}, key=key)
                except TransportError as exc:
                    self.errors.append(type(exc).__name__)
                    self.stopped.wait(0.05)
                    continue
                self.acked.append(n)
                per_key[key] = i + 1
                break
