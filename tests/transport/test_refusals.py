"""A Redis that answers but refuses: errors say so, name the code, and carry no
event data (redis-py copies a pipeline's command arguments into its errors)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import pytest
import redis

from agentstream import RedisConnectionPool, errors
from agentstream.transport.core import (
    pipeline_reply,
    refusal_code,
    scrub_command_args,
)
from agentstream.transport.worker_ops import WorkerOps
from redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SECRET = "customer-card-4111111111111111"


@pytest.fixture(name="ops")
async def _ops(fresh_redis: RedisServer, stream_name: str) -> AsyncIterator[WorkerOps]:
    pool = RedisConnectionPool(fresh_redis.url)
    ops = await WorkerOps.aopen(stream_name, consumer_group="g", pool=pool)
    yield ops
    await pool.aclose()


@pytest.fixture(name="admin")
def _admin(fresh_redis: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(fresh_redis.url)


async def test_out_of_memory_is_a_refusal_without_the_event_data(
    ops: WorkerOps, admin: redis.Redis
) -> None:
    entry = await ops.apublish("t", {"card": SECRET})
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    fields = {b"type": b"t", b"data": SECRET.encode()}
    with pytest.raises(errors.Refused) as caught:
        await ops.adead_letter(entry, fields, "dlq", {"reason": "x"}, 100)
    assert caught.value.reason == "OOM"
    assert SECRET not in str(caught.value)
    assert "(OOM)" in str(caught.value)
    # bookkeeping degrades: the error record is refused, not raised
    assert await ops.aset_last_error(entry, SECRET, 60) is False
    # start-up on the existing group needs no write
    await WorkerOps.aopen(ops.stream_name, consumer_group="g", pool=ops._pool)


async def test_read_only_replica_is_a_refusal(
    ops: WorkerOps, admin: redis.Redis
) -> None:
    admin.replicaof("127.0.0.1", 1)
    try:
        with pytest.raises(errors.Refused) as caught:
            await ops.apublish("t", {"card": SECRET})
        assert caught.value.reason == "READONLY"
    finally:
        admin.replicaof("NO", "ONE")


async def test_busy_script_is_a_refusal(
    ops: WorkerOps, admin: redis.Redis, fresh_redis: RedisServer
) -> None:
    admin.config_set("busy-reply-threshold", 50)
    blocker = threading.Thread(
        target=_run_forever, args=(fresh_redis.url,), daemon=True
    )
    blocker.start()
    try:
        with pytest.raises(errors.Refused) as caught:
            for _ in range(200):
                await ops.aping()
        assert caught.value.reason == "BUSY"
    finally:
        while True:
            try:
                redis.Redis.from_url(fresh_redis.url).script_kill()
                break
            except redis.ResponseError:
                continue
        blocker.join(5)


def _run_forever(url: str) -> None:
    try:
        redis.Redis.from_url(url).eval("while true do end", 0)
    except redis.RedisError:
        pass


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("MISCONF Redis is configured to save RDB snapshots, but ...", "MISCONF"),
        ("BUSY Redis is busy running a script.", "BUSY"),
        ("NOREPLICAS Not enough good replicas to write.", "NOREPLICAS"),
        (
            "Command # 2 (XADD s * data x) of pipeline caused error: ('MISCONF x',)",
            "MISCONF",
        ),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
        ("ERR BUSYGROUP-like text in data", None),
    ],
)
def test_refusal_codes(text: str, code: str | None) -> None:
    assert refusal_code(text) == code


def test_pipeline_errors_lose_their_arguments() -> None:
    text = f"Command # 1 (XADD dlq * data {SECRET} (nested) x) of pipeline caused error: OOM"
    assert scrub_command_args(text) == "Command # 1 of pipeline caused error: OOM"


_DENIED = "this user has no permissions to run the 'pttl' command"


@pytest.mark.parametrize(
    "text",
    [
        # redis-py's asyncio pipeline (the reply as a tuple), its sync one, none
        f"Command # 1 of pipeline caused error: {(_DENIED,)}",
        f"Command # 2 of pipeline caused error: {_DENIED}",
        _DENIED,
    ],
    ids=["asyncio", "sync", "no-pipeline"],
)
def test_pipeline_errors_give_the_reply(text: str) -> None:
    """An ACL refusal from a pipeline is reported in Redis's words."""
    assert pipeline_reply(text) == _DENIED
