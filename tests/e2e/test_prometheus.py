"""A real Prometheus server scrapes a running worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(name="prometheus_bin")
def _prometheus_bin() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is required in CI (Debian package prometheus)")
        pytest.skip("prometheus not found")
    return exe


def start_prometheus(exe: str, directory: Path, target_port: int) -> tuple[Any, int]:
    port = free_port()
    config = directory / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: agentstream\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    with (directory / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, port


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
        {"query": promql}
    )
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = json.load(response)
    except OSError:
        return []
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.fixture(name="redis_client")
def _redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_prometheus_scrapes_lag_and_events(
    tmp_path: Path,
    redis_url: str,
    stream_name: str,
    prometheus_bin: str,
    redis_client: redis.Redis,
) -> None:
    """Prometheus's query API returns the worker's lag and event counts."""
    metrics_port = free_port()
    write_app(tmp_path)
    overrides = {"metrics": {"enabled": True, "port": metrics_port}}
    config = write_config(tmp_path, base_config(redis_url, stream_name, overrides))
    worker = WorkerProcess(
        ["--config", str(config)], cwd=tmp_path, env=worker_env(redis_url, stream_name)
    )
    prometheus, prom_port = start_prometheus(prometheus_bin, tmp_path, metrics_port)
    try:
        recorder = Recorder(redis_client, stream_name)
        xadd_events(redis_client, stream_name, "ok", [{"n": i} for i in range(50)])
        wait_for(lambda: recorder.handled_count() == 50, 20, message=worker.tail())
        labels = f'stream="{stream_name}",group="agents"'
        wait_for(
            lambda: (
                _value(query(prom_port, f"agentstream_group_lag{{{labels}}}")) == 0.0
            ),
            30,
            message="lag never scraped",
        )
        wait_for(
            lambda: (
                _value(
                    query(
                        prom_port,
                        f'agentstream_events_total{{{labels},type="ok",outcome="ok"}}',
                    )
                )
                == 50.0
            ),
            30,
            message="events_total never reached 50",
        )
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
        worker.close()


def _value(result: list[dict[str, Any]]) -> float | None:
    if len(result) != 1:
        return None
    return float(result[0]["value"][1])
