"""Redis comes back: every consumer reads again at once, and the log says so once.

One shared view of the connection per process: the first call that sees Redis
answer (a probe while it is down) wakes every loop that waits for it, instead of
each sleeping out its own backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from chaos_harness import (
    Chaos,
    crashed,
    make_chaos_fixture,  # noqa: F401 - the make_chaos fixture
    publish,
)

from redis_server import RedisServerFactory

pytestmark = [pytest.mark.chaos, pytest.mark.e2e, pytest.mark.redis]

CONSUMERS = 4
#: How soon after Redis answers again every consumer must have read.
RESUME_S = 2.0
OUTAGE = timedelta(seconds=8)


@pytest.mark.timeout(120)
def test_after_a_redis_restart_every_consumer_reads_again_within_two_seconds(
    make_chaos: Callable[[str], Chaos], redis_factory: RedisServerFactory
) -> None:
    """A Redis down for several backoff doublings: once it answers, all consumers
    read within 2 s; the log has one line per change of state and no
    consumer_restarting line."""
    server = redis_factory()
    chaos = make_chaos(server.url)
    config = chaos.write_config({"consumers": CONSUMERS, "log": {"level": "debug"}})
    worker = chaos.start(config)
    worker.wait_for_log("worker_started", 30)
    publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in range(10)))
    chaos.wait(chaos.recorder.all_handled(range(10)), 30, "handled before", worker)

    server.stop()  # no persistence: the group and its consumers are gone
    down = worker.wait_for_log("redis_unavailable", 20)
    # An outage long enough for a per-loop backoff to grow past several
    # seconds: until the worker logs something OUTAGE_S after the outage began.
    down_at = datetime.fromisoformat(down["timestamp"])

    def outage_lasted() -> bool:
        return any(
            datetime.fromisoformat(r["timestamp"]) - down_at >= OUTAGE
            for r in worker.logs()[-5:]
        )

    chaos.wait(outage_lasted, 30, "the outage going on", worker)
    server.start()

    def all_reading() -> bool:
        # A consumer waiting in XREADGROUP BLOCK shows as a blocked client
        # (XINFO CONSUMERS lists a consumer only once a read returned entries).
        clients = chaos.client.client_list()
        blocked = [c for c in clients if c["cmd"] == "xreadgroup" and "b" in c["flags"]]
        return len(blocked) >= CONSUMERS

    chaos.wait(all_reading, RESUME_S + 1.0, "every consumer reading", worker)
    publish(chaos.client, chaos.stream, "ok", ({"n": n} for n in range(10, 20)))
    chaos.wait(chaos.recorder.all_handled(range(10, 20)), 30, "handled after", worker)

    events = [r.get("event") for r in worker.logs()]
    assert events.count("redis_unavailable") == 1, events
    assert events.count("redis_available") == 1, events
    assert "consumer_restarting" not in events
    assert not crashed(worker)
    worker.terminate()
    assert worker.wait(15) == 0, worker.tail()
