"""The app the benchmark's ``agentstream-worker`` runs.

Copied next to the worker's config as ``bench_worker_app.py``; it imports only
agentstream. ``BENCH_HANDLER`` picks the ``token`` handler:

- ``noop``: an async handler that does nothing;
- ``sync``: a sync handler that does nothing (runs in a worker thread);
- ``sleep``: an async handler that awaits ``anyio.sleep(0.001)``;
- ``io20``: an async handler that awaits ``anyio.sleep(0.02)``, as an I/O-bound
  handler waiting 20 ms on a model or a tool would;
- ``delay``: records ``time.time() - event.timestamp`` when the handler starts,
  and writes the delays (seconds, one a line) to ``BENCH_DELAY_FILE`` at exit.
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

import anyio

from agentstream import App, Event

app = App()
delays: list[float] = []
_MODE = os.environ.get("BENCH_HANDLER", "noop")
_now = time.time


def _write_delays() -> None:
    out = Path(os.environ["BENCH_DELAY_FILE"])
    out.write_text("".join(f"{d!r}\n" for d in delays))


if _MODE == "noop":

    @app.handler("token")
    async def noop(event: Event) -> None:
        return None

elif _MODE == "sync":

    @app.handler("token")
    def sync_noop(event: Event) -> None:
        return None

elif _MODE == "sleep":

    @app.handler("token")
    async def sleep_1ms(event: Event) -> None:
        await anyio.sleep(0.001)

elif _MODE == "io20":

    @app.handler("token")
    async def io_20ms(event: Event) -> None:
        await anyio.sleep(0.02)

elif _MODE == "delay":
    atexit.register(_write_delays)

    @app.handler("token")
    async def record_delay(event: Event) -> None:
        delays.append(_now() - event.timestamp)

else:
    raise ValueError(f"BENCH_HANDLER={_MODE!r}: not noop, sync, sleep, io20 or delay")
