"""Eviction is data loss: the worker, --check and stats say which policy Redis runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import structlog

from agentstream import App, Settings
from agentstream.admin import run_admin
from agentstream.cli import check
from agentstream.worker.supervisor import Supervisor
from redis_server import RedisServer, RedisServerFactory, await_for

pytestmark = pytest.mark.redis


@pytest.fixture(name="lru")
def _lru(redis_factory: RedisServerFactory) -> RedisServer:
    return redis_factory(extra_args=["--maxmemory-policy", "allkeys-lru"])


def settings_for(server: RedisServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis": {"url": server.url},
        "subscriptions": [{"stream": "evict-test"}],
        "block_ms": 100,
        "shutdown_timeout_s": 5.0,
        "name_prefix": "t",
        **overrides,
    }
    return Settings(**values)


def stats(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path, *args: str
) -> str:
    """``agentstream stats ARGS`` against ``url``; its output."""
    config = tmp_path / "worker.toml"
    config.write_text(f'[redis]\nurl = "{url}"\n')
    assert run_admin(["stats", *args, "--config", str(config)]) == 0
    return capsys.readouterr().out


def test_stats_warns_about_an_evicting_policy(
    lru: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = stats(capsys, lru.url, tmp_path)
    assert "warning: redis maxmemory-policy is allkeys-lru" in out
    out = stats(capsys, lru.url, tmp_path, "--json")
    assert json.loads(out)["maxmemory_policy"] == "allkeys-lru"


def test_stats_on_noeviction(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = stats(capsys, redis_url, tmp_path)
    assert "redis maxmemory-policy: noeviction" in out


def test_check_shows_the_policy(
    lru: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(settings_for(lru), App()) == 0
    assert "warning: redis maxmemory-policy is allkeys-lru" in capsys.readouterr().out


@pytest.mark.anyio
async def test_worker_warns_at_start_and_exports_the_policy(lru: RedisServer) -> None:
    """A warning at start, the metric, and both follow a change of policy."""
    settings = settings_for(lru, metrics={"enabled": True, "port": 0})
    supervisor = Supervisor(settings, App(), handle_signals=False)
    registry = supervisor.registry

    def policy(name: str) -> float | None:
        return registry.get_sample_value(
            "agentstream_redis_maxmemory_policy", {"policy": name}
        )

    with structlog.testing.capture_logs() as logs, anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            await supervisor.started.wait()
            assert policy("allkeys-lru") == 1
            client = redis.Redis.from_url(lru.url)
            client.config_set("maxmemory-policy", "volatile-ttl")
            await await_for(lambda: policy("volatile-ttl") == 1, timeout=20)
            assert policy("allkeys-lru") is None  # only the current policy
            client.config_set("maxmemory-policy", "noeviction")
            await await_for(lambda: policy("noeviction") == 1, timeout=20)
            client.close()
            supervisor.stop()
    warned = [e for e in logs if e["event"] == "redis_eviction_possible"]
    assert [e["maxmemory_policy"] for e in warned] == ["allkeys-lru", "volatile-ttl"]
    assert all(e["log_level"] == "warning" for e in warned)
