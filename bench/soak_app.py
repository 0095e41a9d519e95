"""The app the soak's ``agentstream-worker`` runs (see bench/soak.py).

Copied next to the worker's config as ``bench_worker_app.py``, like
bench/worker_app.py; it imports only agentstream and the standard library. Its
async ``token`` handler keeps only a bounded buffer in memory, so what it
records does not show up as growth of the worker's RSS:

- ``BENCH_SOAK_DELAY_FILE`` (optional): for each event, the handler's start time
  and its delay (start minus ``event.timestamp``), both in seconds, appended as
  two native float64 values every ``_FLUSH_EVENTS`` events or ``_FLUSH_S``;
- ``BENCH_SOAK_TASKS_FILE``: every ``BENCH_SOAK_TASKS_EVERY_S`` (default 1 s)
  while events flow, a JSON line ``{"t", "tasks", "handled"}`` where ``tasks``
  is ``len(asyncio.all_tasks())`` seen from inside the handler (the worker's
  asyncio tasks cannot be counted from outside the process); at exit a last
  line ``{"t", "handled", "exit": true}``.

Both files stay open for the worker's life: two file descriptors, constant.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
from array import array
from typing import BinaryIO

from agentstream import App, Event

app = App()
_now = time.time

_FLUSH_EVENTS = 500
_FLUSH_S = 0.25
_TASKS_EVERY_S = float(os.environ.get("BENCH_SOAK_TASKS_EVERY_S", "1"))


class _Recorder:
    def __init__(self) -> None:
        delay_path = os.environ.get("BENCH_SOAK_DELAY_FILE")
        self.delays: BinaryIO | None = None
        if delay_path is not None:
            # open for the worker's life, closed at exit
            self.delays = open(delay_path, "ab", buffering=0)  # noqa: SIM115
        tasks_path = os.environ["BENCH_SOAK_TASKS_FILE"]
        self.tasks = open(tasks_path, "a", buffering=1)  # noqa: SIM115
        self.buffer = array("d")
        self.handled = 0
        self.flushed_at = 0.0
        self.next_tasks = 0.0

    def flush(self, now: float) -> None:
        if self.delays is not None and self.buffer:
            self.delays.write(self.buffer.tobytes())
            del self.buffer[:]
        self.flushed_at = now

    def record(self, event: Event) -> None:
        now = _now()
        self.handled += 1
        if self.delays is not None:
            self.buffer.append(now)
            self.buffer.append(now - event.timestamp)
            full = len(self.buffer) >= 2 * _FLUSH_EVENTS
            if full or now - self.flushed_at > _FLUSH_S:
                self.flush(now)
        if now >= self.next_tasks:
            self.next_tasks = now + _TASKS_EVERY_S
            tasks = len(asyncio.all_tasks())
            line = {"t": now, "tasks": tasks, "handled": self.handled}
            self.tasks.write(json.dumps(line) + "\n")

    def close(self) -> None:
        now = _now()
        self.flush(now)
        self.tasks.write(
            json.dumps({"t": now, "handled": self.handled, "exit": True}) + "\n"
        )
        self.tasks.close()
        if self.delays is not None:
            self.delays.close()


_recorder = _Recorder()
atexit.register(_recorder.close)


@app.handler("token")
async def record(event: Event) -> None:
    _recorder.record(event)
