"""Profile the ``worker p=1 c=1`` no-op case with py-spy; print the top frames.

``python -m bench.profile [--events N] [--out /tmp/profile.txt]`` drains a
preloaded stream once with ``agentstream-worker`` running under
``py-spy record --format raw`` (``pip install -e '.[bench]'``), then sums the
samples by function: own time (the frame on top of the stack) and total time
(the frame anywhere in the stack). Idle time (waiting for Redis) is not sampled.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.observe import time_drain
from bench.procs import WorkerSpec, worker
from bench.redis_server import BenchRedis
from bench.throughput import STREAM
from bench.workload import Snapshot

_LINE = re.compile(r":\d+\)$")


def _child_pid(pid: int, timeout: float = 10) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise RuntimeError("py-spy started no worker")


def summarize(path: Path, top: int = 20) -> str:
    """Own and total samples per function, from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    out = [f"{samples} samples (CPU only)", "", "own %  function"]
    out += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(top)]
    out += ["", "total %  function"]
    out += [f"{100 * n / samples:7.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(out)


def profile(events: int, out: Path, rate: int) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    wrap = [py_spy, "record", "--format", "raw", "--rate", str(rate), "-o", str(out)]
    with (
        tempfile.TemporaryDirectory(prefix="agentstream-profile-") as tmp,
        BenchRedis(Path(tmp)) as server,
    ):
        client = server.client()
        Snapshot(client, STREAM, events).restore(client)
        spec = WorkerSpec(1, 1)
        with worker(spec, server.url, STREAM, Path(tmp), wrap=[*wrap, "--"]) as spy:
            worker_pid = _child_pid(spy.pid)
            seconds = time_drain(client, STREAM, events, spy.alive).seconds
            print(f"{events / seconds:,.0f} events/s under py-spy", file=sys.stderr)
            os.kill(worker_pid, signal.SIGTERM)  # the worker py-spy started for us
            status = spy.wait(timeout=60)
        if status != 0:
            raise RuntimeError(f"py-spy exited with {status}:\n{spy.tail()}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/profile.txt"))
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    profile(args.events, args.out, args.rate)
    print(summarize(args.out, args.top))


if __name__ == "__main__":
    main()
