"""The console's pages stay fast with 1,000,000 entries and 100,000 dead letters.

Redis is filled by Lua scripts (in chunks), then every page is timed on the
server side through the ASGI app. The bound is generous (a loaded 2-core
machine); what it catches is a page that reads a whole stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient
from web_harness import client_for, settings_for

from redis_server import RedisServer

pytestmark = pytest.mark.redis

STREAM = "big"
ENTRIES = 1_000_000
PENDING = 200_000
DEAD = 100_000
#: Seconds one page may take (each measured alone); typical is well under 0.5 s.
BOUND_S = 3.0

_FILL = """
local n, payload = tonumber(ARGV[1]), ARGV[2]
for i = 1, n do
  redis.call('XADD', KEYS[1], '*', 'type', 'token', 'timestamp', '1700000000.0',
             'data', payload)
end
return n
"""
_READ = """
local n = 0
for i = 1, tonumber(ARGV[3]) do
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2] .. (i % 4),
                         'COUNT', 10000, 'STREAMS', KEYS[1], '>')
  n = n + #got[1][2]
end
return n
"""
_DEAD = """
local n = tonumber(ARGV[1])
local types = {'token', 'tool_call', 'tool_result', 'complete'}
local reasons = {'max_deliveries', 'malformed', 'tool_call without name'}
for i = 1, n do
  local error = 'KeyError: ' .. (i % 7) .. '\\nTraceback (most recent call last):\\n'
    .. '  File "app.py", line ' .. (i % 100) .. ', in on_tool\\n'
    .. '    city = event.data["arguments"]["city"]\\nKeyError: city'
  if i == 4242 then error = 'RareError: only once' end
  redis.call('XADD', KEYS[1], '*', 'type', types[i % 4 + 1],
             'timestamp', '1700000000.0', 'data', '{"run_id": "r"}',
             'dlq_stream', ARGV[2], 'dlq_id', '1-' .. i, 'dlq_group', 'agents',
             'dlq_at', '1700000001.0', 'dlq_reason', reasons[i % 3 + 1],
             'dlq_error', error, 'dlq_delivery_count', '5')
end
return n
"""


@pytest.fixture(name="big", scope="module")
def _big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of its own holding the big stream, its pending list and DLQ."""
    server = RedisServer(tmp_path_factory.mktemp("big-redis"))
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        payload = '{"run_id": "run-1bebfd55", "token": "Hello, world"}'
        fill = client.register_script(_FILL)
        for _ in range(ENTRIES // 100_000):
            fill(keys=[STREAM], args=[100_000, payload])
        client.xgroup_create(STREAM, "agents", "0")
        client.register_script(_READ)(
            keys=[STREAM], args=["agents", "host-0-", PENDING // 10_000]
        )
        dead = client.register_script(_DEAD)
        for _ in range(DEAD // 20_000):
            dead(keys=[f"{STREAM}:dlq"], args=[20_000, STREAM])
        assert client.xlen(STREAM) == ENTRIES
        assert client.xlen(f"{STREAM}:dlq") == DEAD
        client.close()
        yield server
    finally:
        server.stop()


@pytest.fixture(name="client")
def _client(tmp_path: Path, big: RedisServer) -> Iterator[TestClient]:
    with client_for(settings_for(tmp_path, big.url, [STREAM])) as client:
        yield client


def _timed(client: TestClient, path: str) -> tuple[float, Any]:
    started = time.perf_counter()
    page = client.get(path)
    return time.perf_counter() - started, page


def test_pages_stay_fast(client: TestClient, big: RedisServer) -> None:
    """Every page answers within the bound on 1M entries and 100k dead letters."""
    raw = redis.Redis.from_url(big.url, decode_responses=True)
    pending: Any = raw.xpending_range(STREAM, "agents", "-", "+", 1)
    first_pending = pending[0]["message_id"]
    dead: Any = raw.xrange(f"{STREAM}:dlq", count=1)
    first_dead = dead[0][0]
    raw.close()
    paths = [
        "/",
        "/partials/overview",
        "/s/0/consumers",
        "/s/0/pending",
        "/s/0/pending?consumer=host-0-1&min_idle_ms=0",
        "/s/0/pending?min_deliveries=2",  # matches nothing: a bounded scan
        f"/s/0/pending/{first_pending}",
        "/s/0/dead-letters",
        "/s/0/dead-letters?type=tool_*&reason=max*",
        "/s/0/dead-letters?q=RareError",
        f"/s/0/dead-letters/{first_dead}",
        "/s/0/tail",
        "/s/0/tail/rows?after=0-0",
    ]
    client.get("/")  # warm up: connections, templates
    timings = {}
    for path in paths:
        took, page = _timed(client, path)
        assert page.status_code == 200, (path, page.text[-500:])
        timings[path] = took
    slow = {p: round(t, 3) for p, t in timings.items() if t > BOUND_S}
    assert not slow, timings
    overview = client.get("/partials/overview").text
    assert f"{ENTRIES}" in overview and f"{DEAD}" in overview
    html = client.get("/s/0/dead-letters?q=RareError").text
    # A filtered page searches 10,000 entries at most and says where to go on.
    assert "next page" in html
    print({p: round(t, 3) for p, t in timings.items()})  # noqa: T201 - for the log
