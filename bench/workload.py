"""The preloaded workload: seed-format entries, snapshotted and restored as is."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from bench import GROUP

__all__ = ["Snapshot", "add_entries", "entry_fields"]

_PIPELINE = 1000


def entry_fields(seq: int) -> dict[Any, Any]:
    """One entry in the seed wire format, with about 30 bytes of JSON data."""
    return {
        "type": "token",
        "timestamp": str(time.time()),
        "data": json.dumps({"token": "hello", "seq": seq}),
    }


def add_entries(client: redis.Redis, stream: str, count: int, first: int = 0) -> bytes:
    """XADD ``count`` entries, pipelined; returns the last entry id."""
    last = b""
    for start in range(first, first + count, _PIPELINE):
        pipe = client.pipeline(transaction=False)
        for seq in range(start, min(start + _PIPELINE, first + count)):
            pipe.xadd(stream, entry_fields(seq))
        last = pipe.execute()[-1]
    return last


class Snapshot:
    """A stream and its group at id 0, dumped once and restored identically.

    The group lives inside the dump, so every restore brings it back at id 0
    with no consumers and nothing pending.
    """

    def __init__(self, client: redis.Redis, stream: str, events: int) -> None:
        self.stream = stream
        self.events = events
        client.delete(stream)
        add_entries(client, stream, events)
        client.xgroup_create(stream, GROUP, id="0")
        dump = client.dump(stream)
        assert isinstance(dump, bytes)
        self._dump = dump
        client.delete(stream)

    def restore(self, client: redis.Redis) -> None:
        client.delete(self.stream)
        client.restore(self.stream, 0, self._dump, replace=True)
