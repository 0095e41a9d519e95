"""Two worker instances with the same configuration never share consumer names."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from worker_harness import (
    GROUP,
    WorkerProcess,
    base_config,
    worker_env,
    write_app,
    write_config,
)

from agentstream.testing import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(name="client")
def _client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def names(client: redis.Redis, stream: str) -> set[str]:
    rows: list[dict[str, str]] = client.xinfo_consumers(stream, GROUP)
    return {row["name"] for row in rows}


def test_second_instance_takes_the_next_name_and_a_dead_ones_is_reused(
    tmp_path: Path, redis_url: str, stream_name: str, client: redis.Redis
) -> None:
    """A live owner keeps its names; a dead owner's are free after its lease."""
    write_app(tmp_path)
    overrides = {"consumers": 1, "name_lease_s": 1.0}
    config = write_config(tmp_path, base_config(redis_url, stream_name, overrides))
    env = worker_env(redis_url, stream_name)
    args = ["--config", str(config)]
    first = WorkerProcess(args, cwd=tmp_path, env=env, name="first")
    second = third = None
    try:
        first.wait_for_log("worker_started", timeout=15)
        second = WorkerProcess(args, cwd=tmp_path, env=env, name="second")
        second.wait_for_log("worker_started", timeout=15)
        started = next(e for e in second.logs() if e["event"] == "worker_started")
        assert started["consumers"] == ["e2e-0.1-0", "e2e-0.1-reaper"]
        taken = [e for e in second.logs() if e["event"] == "consumer_name_taken"]
        assert taken and taken[0]["wanted"] == "e2e-0"
        wait_for(
            lambda: {"e2e-0-0", "e2e-0.1-0"} <= names(client, stream_name),
            timeout=10,
            message="both instances should read under their own names",
        )
        first.kill()
        third = WorkerProcess(args, cwd=tmp_path, env=env, name="third")
        third.wait_for_log("worker_started", timeout=15)
        started = next(e for e in third.logs() if e["event"] == "worker_started")
        # The dead owner's lease runs out within name_lease_s; until then the
        # third takes .2 (the second still holds .1). Either way no name is shared.
        assert started["consumers"][0] in ("e2e-0-0", "e2e-0.2-0")
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=15) == 0
        wait_for(
            lambda: not client.exists(f"{stream_name}:owner:{GROUP}:e2e-0"),
            timeout=10,
            message="the killed worker's name lease never expired",
        )
        fourth = WorkerProcess(args, cwd=tmp_path, env=env, name="fourth")
        try:
            fourth.wait_for_log("worker_started", timeout=15)
            started = next(e for e in fourth.logs() if e["event"] == "worker_started")
            assert started["consumers"][0] == "e2e-0-0"
        finally:
            fourth.close()
    finally:
        for worker in (first, second, third):
            if worker is not None:
                worker.close()
