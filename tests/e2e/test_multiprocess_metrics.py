"""processes > 1: one scrape of the parent's port shows the sum of all children."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from worker_harness import (
    Recorder,
    WorkerProcess,
    base_config,
    worker_env,
    write_app,
    write_config,
    xadd_events,
)

from agentstream.testing import free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture(name="client")
def _client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def ok_events(text: str, stream: str) -> float:
    pattern = re.compile(
        r"^agentstream_events_total\{(?=[^}]*stream=\"" + re.escape(stream) + r"\")"
        r"(?=[^}]*outcome=\"ok\")[^}]*\} (\S+)$",
        re.MULTILINE,
    )
    return sum(float(v) for v in pattern.findall(text))


def test_parent_serves_the_sum_and_survives_a_child_kill(
    tmp_path: Path, redis_url: str, stream_name: str, client: redis.Redis
) -> None:
    """Counts from both children add up, and a killed child's counts remain."""
    port = free_port()
    write_app(tmp_path)
    overrides = {
        "processes": 2,
        "consumers": 1,
        "batch_size": 5,
        "metrics": {"enabled": True, "port": port},
        "reaper": {"interval_s": 0.2},
    }
    config = write_config(tmp_path, base_config(redis_url, stream_name, overrides))
    env = worker_env(redis_url, stream_name, {"TMPDIR": str(tmp_path)})
    worker = WorkerProcess(["--config", str(config)], cwd=tmp_path, env=env)
    recorder = Recorder(client, stream_name)
    try:
        wait_for(lambda: scrape(port, "/readyz")[0] == 200, 20, message=worker.tail())
        xadd_events(
            client, stream_name, "slow", [{"n": i, "s": 0.002} for i in range(2000)]
        )
        wait_for(lambda: recorder.handled_count() == 2000, 20, message=worker.tail())
        wait_for(
            lambda: ok_events(scrape(port)[1], stream_name) == 2000,
            20,
            message="the parent never showed 2000 ok events",
        )
        pids = {int(str(d["pid"])) for d in recorder_deliveries(recorder, 2000)}
        assert len(pids) == 2, "both children should have handled events"
        os.kill(next(iter(pids)), signal.SIGKILL)
        wait_for(lambda: scrape(port, "/readyz")[0] == 200, 20, message=worker.tail())
        xadd_events(client, stream_name, "ok", [{"n": i} for i in range(2000, 2100)])
        wait_for(
            lambda: ok_events(scrape(port)[1], stream_name) >= 2100,
            30,
            message="counts of the killed child were lost or new ones missing",
        )
        multiproc_dirs = list(tmp_path.glob("agentstream-metrics-*"))
        assert len(multiproc_dirs) == 1
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert not multiproc_dirs[0].exists(), "the metrics directory is left behind"
    finally:
        worker.close()


def recorder_deliveries(recorder: Recorder, count: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for n in range(count):
        out.extend(recorder.deliveries(n))
    return out
