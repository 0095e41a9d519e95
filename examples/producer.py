"""A demo producer: publishes agent runs for ``examples.agent_app`` to handle.

Each run is a few ``token`` events, a ``tool_call``, its ``tool_result``, more
tokens, and ``complete``, all with the same ``data["run_id"]``. The second run's
tool call has an argument the tool does not take, which the worker sends to the
dead-letter stream::

    python -m examples.producer                  # 1 run to redis://localhost:6379/0
    python -m examples.producer --runs 0         # runs until Ctrl-C
    python -m examples.producer --redis-url redis://127.0.0.1:6380/0 --runs 5

The Redis URL defaults to ``$AGENTSTREAM_REDIS__URL``, the variable the worker
reads too. Exit status: 0 when done or interrupted, 1 when Redis fails, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any

from agentstream import RedisStreamTransport
from agentstream.errors import TransportError

__all__ = ["main", "run_events"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"

#: Per run: the answer before the tool, the tool, its arguments and result, and
#: the answer after it. Runs cycle through these.
_SCRIPTS: tuple[tuple[str, str, dict[str, Any], dict[str, Any], str], ...] = (
    (
        "Let me check the weather.",
        "get_weather",
        {"city": "Paris"},
        {"temperature_c": 18, "sky": "sunny"},
        " It is 18°C and sunny in Paris.",
    ),
    (
        "Looking that up.",
        "search_docs",
        # the model got the argument's name wrong: the worker dead-letters
        # this tool call (examples/agent_app.py), as the example shows
        {"q": "consumer groups"},
        {"hits": 3, "top": "XREADGROUP reads through a consumer group"},
        " XREADGROUP reads a stream through a consumer group.",
    ),
    (
        "One moment, computing.",
        "calculator",
        {"expression": "6 * 7"},
        {"value": 42},
        " The answer is 42.",
    ),
)


def _tokens(text: str) -> list[str]:
    """Split text into word-sized tokens (with their leading space)."""
    return re.findall(r"\s*\S+", text)


def run_events(run_id: str, index: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """The ``(event_type, data)`` pairs of one run, in publishing order."""
    before, tool, args, result, after = _SCRIPTS[index % len(_SCRIPTS)]
    call_id = f"call-{run_id}"
    events: list[tuple[str, dict[str, Any]]] = []
    events += [("token", {"run_id": run_id, "token": t}) for t in _tokens(before)]
    events.append(
        (
            "tool_call",
            {"run_id": run_id, "call_id": call_id, "name": tool, "args": args},
        )
    )
    events.append(
        (
            "tool_result",
            {"run_id": run_id, "call_id": call_id, "name": tool, "result": result},
        )
    )
    events += [("token", {"run_id": run_id, "token": t}) for t in _tokens(after)]
    events.append(("complete", {"run_id": run_id, "finish_reason": "stop"}))
    return events


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.producer",
        description="Publish demo agent runs to a Redis Stream.",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("AGENTSTREAM_REDIS__URL", DEFAULT_REDIS_URL),
        help="the Redis to publish to (default: $AGENTSTREAM_REDIS__URL or %(default)s)",
    )
    parser.add_argument(
        "--stream", default="agent_output", help="the stream (default: %(default)s)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="how many runs to publish; 0 publishes until Ctrl-C (default: 1)",
    )
    parser.add_argument(
        "--interval-s",
        type=float,
        default=0.2,
        help="pause between two events, in seconds (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.runs < 0:
        parser.error("--runs must be 0 or more")
    if args.interval_s < 0:
        parser.error("--interval-s must be 0 or more")
    return args


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Publish the runs; return the exit status."""
    args = _parse_args(argv)
    # SIGTERM (as scripts/run-example sends) stops as quietly as Ctrl-C.
    signal.signal(signal.SIGTERM, _stop)
    transport: RedisStreamTransport | None = None
    try:
        transport = RedisStreamTransport(args.stream, redis_url=args.redis_url)
        runs = itertools.count() if args.runs == 0 else range(args.runs)
        for index in runs:
            run_id = f"run-{uuid.uuid4().hex[:8]}"
            events = run_events(run_id, index)
            for event_type, data in events:
                transport.publish(event_type, data)
                time.sleep(args.interval_s)
            print(
                f"{run_id}: published {len(events)} events to {args.stream}",
                flush=True,
            )
    except KeyboardInterrupt:
        return 0
    except TransportError as exc:
        print(f"producer: {exc}", file=sys.stderr)
        return 1
    finally:
        if transport is not None:
            transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
