"""Seed reads never fail on an entry's content: bytes that are not UTF-8 anywhere,
JSON nested past Python's stack, on pools that decode and pools that do not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis

from agentstream import RedisConnectionPool, RedisStreamTransport
from agentstream.transport.core import to_text

pytestmark = pytest.mark.redis

R = "\ufffd"

#: Another producer's entry: not UTF-8 in its type, data, metadata, a field name
#: and an unknown field's value.
BAD: dict[bytes, bytes] = {
    b"type": b"t\xff",
    b"data": b'{"a": "\xfe"}',
    b"metadata": b"\xc3",
    b"\xffname": b"v",
    b"extra": b"\x80",
}
#: Valid UTF-8, but JSON nested deeper than json.loads can recurse.
DEEP: dict[bytes, bytes] = {b"type": b"deep", b"data": b"[" * 100_000}


@pytest.fixture(name="decode", params=[True, False], ids=["str-pool", "bytes-pool"])
def _decode(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(name="ids")
def _ids(redis_url: str, stream_name: str) -> Iterator[list[str]]:
    """Four entries: good, BAD, DEEP, good (the group created first)."""
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(stream_name, "agents", "0", mkstream=True)
    entries: tuple[dict[Any, Any], ...] = (
        {b"type": b"a", b"data": b'{"n": 1}'},
        BAD,
        DEEP,
        {b"type": b"b", b"data": b'{"n": 2}'},
    )
    ids = [to_text(client.xadd(stream_name, fields)) for fields in entries]
    yield ids
    client.delete(stream_name)
    client.close()


def check(events: list[dict[str, Any]], ids: list[str]) -> None:
    """The four entries, in order, the undecodable ones read leniently."""
    assert [e["id"] for e in events] == ids
    good_a, bad, deep, good_b = events
    assert (good_a["type"], good_a["data"]) == ("a", {"n": 1})
    assert (good_b["type"], good_b["data"]) == ("b", {"n": 2})
    assert bad == {
        "id": ids[1],
        "type": f"t{R}",
        "timestamp": 0.0,
        "data": {"a": R},
        "metadata": {},
    }
    assert (deep["type"], deep["data"]) == ("deep", {})


def test_sync_reads(
    redis_url: str, stream_name: str, ids: list[str], decode: bool
) -> None:
    """read_all, read_group (new and own pending), claim and info return them."""
    pool = RedisConnectionPool(redis_url, decode_responses=decode)
    t = RedisStreamTransport(stream_name, pool=pool)
    try:
        check(t.read_all(), ids)
        check(t.read_all(start_id=ids[0]), ids)
        check(t.read_group("c1", count=10), ids)
        check(t.read_group("c1", count=10, start_id="0"), ids)
        check(t.claim("c2", 0, ids), ids)
        info = t.info()
        assert info["length"] == 4
        assert info["first_entry"]["id"] == ids[0]
        assert info["last_entry"]["data"] == {"n": 2}
    finally:
        t.close()
        pool.close()


@pytest.mark.anyio
async def test_async_reads(
    redis_url: str, stream_name: str, ids: list[str], decode: bool
) -> None:
    """The async twins and asubscribe return them too."""
    pool = RedisConnectionPool(redis_url, decode_responses=decode)
    t = await RedisStreamTransport.aopen(stream_name, pool=pool)
    try:
        check(await t.aread_all(), ids)
        check(await t.aread_group("c1", count=10), ids)
        check(await t.aread_group("c1", count=10, start_id="0"), ids)
        check(await t.aclaim("c2", 0, ids), ids)
        assert (await t.ainfo())["first_entry"]["type"] == "a"
        seen: list[dict[str, Any]] = []
        with anyio.fail_after(10):
            events = t.asubscribe(last_id="0")
            async for event in events:
                seen.append(event)
                if len(seen) == 4:
                    break
            await events.aclose()  # type: ignore[attr-defined]
        check(seen, ids)
    finally:
        await pool.aclose()


@pytest.fixture(name="foreign_consumer")
def _foreign_consumer(redis_url: str, stream_name: str) -> Iterator[None]:
    """A pending entry held by a consumer whose name is not UTF-8 (another tool)."""
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(stream_name, "agents", "0", mkstream=True)
    client.xadd(stream_name, {b"type": b"a", b"data": b"{}"})
    client.xreadgroup("agents", b"c\xfe", {stream_name: ">"})  # type: ignore[arg-type]
    yield
    client.delete(stream_name)
    client.close()


def test_foreign_consumer_names_are_read_leniently(
    redis_url: str, stream_name: str, foreign_consumer: None
) -> None:
    """pending() and pending_range() show such a name replaced, not a crash."""
    t = RedisStreamTransport(stream_name, redis_url=redis_url)
    try:
        assert t.pending()["consumers"] == {f"c{R}": 1}
        [entry] = t.pending_range(10)
        assert entry.consumer == f"c{R}"
    finally:
        t.close()
