"""What the worker writes to Redis beside the stream: bounded by what is in
flight, and never acknowledged away before what replaces it is written."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis
from structlog.testing import capture_logs
from test_supervisor import make_settings, running

from agentstream import App, DeadLetter, Event, RedisStreamTransport
from agentstream.transport.core import to_text
from agentstream.transport.worker_ops import WorkerOps
from agentstream.worker.consumer import Consumer
from agentstream.worker.dispatcher import Dispatcher
from agentstream.worker.supervisor import Supervisor
from redis_server import RedisServer, await_for

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(name="client")
def _client(fresh_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fresh_redis.url)
    yield client
    client.close()


def dataset_bytes(client: redis.Redis) -> int:
    """What every key takes (MEMORY USAGE, all samples), connections left out."""
    return sum(
        int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter()
    )


def pending(client: redis.Redis, stream: str) -> int:
    summary: Any = client.xpending(stream, "agents")
    return int(summary["pending"])


async def test_failures_leave_nothing_behind(
    fresh_redis: RedisServer, client: redis.Redis
) -> None:
    """Events that fail once, then succeed: keys and memory back to the baseline.

    Measured: error records (one hash per stream and group), consumer-name
    leases (a key per process while it runs), entry leases (pending-list idle
    times, no key) and the group's consumers (removed on a clean stop).
    """
    stream = "bookkeeping"
    app = App()
    attempts: Counter[int] = Counter()

    @app.handler("t")
    async def fail_once(event: Event) -> None:
        attempts[event.data["n"]] += 1
        if event.delivery_count == 1:
            raise RuntimeError("downstream unavailable: " + "x" * 500)

    producer = RedisStreamTransport(stream, redis_url=fresh_redis.url)
    for n in range(300):
        producer.publish("t", {"n": n})
    baseline_keys = set(client.keys())
    baseline_bytes = dataset_bytes(client)
    settings = make_settings(fresh_redis.url, stream)
    supervisor = Supervisor(settings, app, handle_signals=False)
    seen_keys: set[Any] = set()

    async def keys_while_running() -> bool:
        seen_keys.update(client.keys())
        return len(attempts) == 300 and min(attempts.values()) == 2

    async with running(supervisor, 60):
        await await_for(keys_while_running, timeout=45)
        await await_for(lambda: pending(client, stream) == 0, timeout=10)
    # The bookkeeping did exist while the worker ran...
    assert b"bookkeeping:owner:agents:t-0" in seen_keys
    assert [k for k in seen_keys if b"error" in k], "no error record seen"
    # ...and went with what it stood for.
    assert set(client.keys()) == baseline_keys
    grown = dataset_bytes(client) - baseline_bytes
    # 300 error records of ~600 bytes left behind would be ~200 KB.
    assert grown < 8 * 1024, f"{grown} bytes more than before the run"
    producer.close()


async def test_first_deliveries_send_no_error_record_deletes(
    fresh_redis: RedisServer, client: redis.Redis
) -> None:
    """Acks of events handled on their first delivery carry no HDEL: no error
    record can exist for them (a failure parks the entry, and its redelivery
    counts); events delivered again do drop theirs (the test above)."""
    stream = "first-try"
    app = App()
    handled: set[str] = set()

    @app.handler("t")
    async def ok(event: Event) -> None:
        handled.add(event.id)

    producer = RedisStreamTransport(stream, redis_url=fresh_redis.url)
    for n in range(300):
        producer.publish("t", {"n": n})
    client.config_resetstat()
    supervisor = Supervisor(
        make_settings(fresh_redis.url, stream), app, handle_signals=False
    )
    async with running(supervisor, 60):
        await await_for(lambda: len(handled) == 300, timeout=45)
        await await_for(lambda: pending(client, stream) == 0, timeout=10)
    stats: Any = client.info("commandstats")
    assert stats["cmdstat_xack"]["calls"] >= 1
    # (The start-up permission probe shows as a rejected call, not a call.)
    assert stats.get("cmdstat_hdel", {}).get("calls", 0) == 0, stats["cmdstat_hdel"]
    producer.close()


@pytest.fixture(name="broken_dlq")
def _broken_dlq(client: redis.Redis) -> str:
    """A dead-letter key an old deployment left holding a list."""
    stream = "moves"
    client.rpush(f"{stream}:dlq", "left by an old deployment")
    return stream


async def test_a_refused_dead_letter_leaves_the_event_pending(
    fresh_redis: RedisServer, client: redis.Redis, broken_dlq: str
) -> None:
    """Malformed, DeadLetter and max_deliveries: pending, counted, logged with
    Redis's own error; dead-lettered once the key is fixed; good events flow."""
    stream = broken_dlq
    app = App()
    handled: list[str] = []

    @app.handler("dead")
    async def dead(event: Event) -> None:
        raise DeadLetter("nope")

    @app.handler("fail")
    async def fail(event: Event) -> None:
        raise RuntimeError("always fails")

    @app.handler("ok")
    async def ok(event: Event) -> None:
        handled.append(event.id)

    producer = RedisStreamTransport(stream, redis_url=fresh_redis.url)
    malformed = to_text(client.xadd(stream, {"data": "{}"}))  # no type
    dead_id = producer.publish("dead", {})
    fail_id = producer.publish("fail", {})
    ok_id = producer.publish("ok", {})
    settings = make_settings(
        fresh_redis.url, stream, reaper={"max_deliveries": 2, "max_backoff_ms": 600}
    )
    supervisor = Supervisor(settings, app, handle_signals=False)

    def refused() -> Counter[str]:
        total: Counter[str] = Counter()
        for c in supervisor.consumers:
            total.update(c.tally.dead_letter_failures)
        return total

    with capture_logs() as logs, anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            await await_for(
                lambda: {"malformed", "nope", "max_deliveries"} <= set(refused()),
                timeout=20,
            )
            assert handled == [ok_id]
            held = {e.id for e in producer.pending_range(10)}
            assert held == {malformed, dead_id, fail_id}
            assert client.type(f"{stream}:dlq") == b"list"
            # The fix: the old key goes; the reaper's next tries succeed.
            client.delete(f"{stream}:dlq")
            await await_for(lambda: pending(client, stream) == 0, timeout=20)
            supervisor.stop()
    failures = [e for e in logs if e["event"] == "dead_letter_failed"]
    assert failures
    assert all("WRONGTYPE" in e["error"] for e in failures)
    assert not [e for e in logs if "redis_unavailable" in str(e.get("event"))]
    dead_letters: Any = client.xrange(f"{stream}:dlq")
    by_id = {f[b"dlq_id"].decode(): f for _, f in dead_letters}
    assert set(by_id) == {malformed, dead_id, fail_id}
    assert by_id[fail_id][b"dlq_reason"] == b"max_deliveries"
    assert by_id[fail_id][b"dlq_error"].startswith(b"RuntimeError: always fails")
    # Handled again once parked: "nope" again, or max_deliveries if it got there
    # before the fix, the refused dead letter then its recorded error.
    reason, error = by_id[dead_id][b"dlq_reason"], by_id[dead_id][b"dlq_error"]
    assert reason == b"nope" or (reason == b"max_deliveries" and b"nope" in error)
    assert client.exists(f"{stream}:errors:agents") == 0
    producer.close()


async def test_reaper_claims_from_a_consumer_named_in_other_bytes(
    fresh_redis: RedisServer, client: redis.Redis
) -> None:
    """Another tool's consumer, its name not UTF-8, died holding an entry: the
    reaper lists it, claims the entry by that very name, handles it, and later
    removes the idle consumer."""
    stream = "foreign"
    app = App()
    handled: list[str] = []

    @app.handler("t")
    async def handle(event: Event) -> None:
        handled.append(event.id)

    producer = RedisStreamTransport(stream, redis_url=fresh_redis.url)
    entry_id = producer.publish("t", {})
    client.xreadgroup("agents", b"tool-\xfe", {stream: ">"})  # type: ignore[arg-type]
    settings = make_settings(fresh_redis.url, stream, reaper={"consumer_ttl_s": 0.5})
    supervisor = Supervisor(settings, app, handle_signals=False)

    def foreign_gone() -> bool:
        names = [c["name"] for c in client.xinfo_consumers(stream, "agents")]
        return b"tool-\xfe" not in names

    with capture_logs() as logs, anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            await await_for(lambda: handled == [entry_id], timeout=15)
            await await_for(lambda: pending(client, stream) == 0, timeout=10)
            await await_for(foreign_gone, timeout=10)
            supervisor.stop()
    assert [e for e in logs if e["event"] == "consumers_removed"]
    assert not [e for e in logs if e["event"] == "consumer_crashed"]
    producer.close()


async def test_an_ack_sent_with_a_read_during_a_renewal_is_no_lost_lease(
    fresh_redis: RedisServer, client: redis.Redis
) -> None:
    """A lease renewal covers the finished events whose acks are not sent yet.
    If the reader sends them (with its next read) while the renewal is on its
    way, they are no longer pending: that is no lost lease. One still held
    here that another consumer took is."""
    stream = "leases"
    client.xgroup_create(stream, "agents", "0", mkstream=True)
    ids = [to_text(client.xadd(stream, {"type": "t", "data": "{}"})) for _ in range(3)]
    client.xreadgroup("agents", "c", {stream: ">"})
    settings = make_settings(fresh_redis.url, stream)
    transport = WorkerOps(stream, redis_url=fresh_redis.url, consumer_group="agents")
    consumer = Consumer(
        "c", transport, App(), settings.subscriptions[0], settings, Dispatcher(10, 1)
    )
    consumer._acks = [ids[0].encode(), ids[1].encode(), ids[2]]
    renew = transport.arenew

    async def renew_while_the_reader_acks(name: str, held: Any) -> Any:
        # What the reader does between the renewal's snapshot and its command.
        client.xack(stream, "agents", ids[0])
        consumer._acks.remove(ids[0].encode())
        client.xclaim(stream, "agents", "other", 0, [ids[2]])  # really taken
        return await renew(name, held)

    transport.arenew = renew_while_the_reader_acks  # type: ignore[method-assign,assignment]
    try:
        with capture_logs() as logs:
            await consumer._renew()
    finally:
        await transport.aclose()
    lost = [r for r in logs if r["event"] == "lease_lost"]
    assert [(r["event_ids"], r["count"]) for r in lost] == [([ids[2]], 1)]
    assert (
        client.xpending_range(stream, "agents", ids[1], ids[1], 1)[0]["consumer"]
        == b"c"
    )
