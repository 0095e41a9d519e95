"""PartitionedStream: publish events to the partitions of a logical stream by key."""

from __future__ import annotations

from typing import Any

from agentstream.event import encode_fields
from agentstream.transport.core import StreamCore
from agentstream.transport.keys import partition_for, partition_streams
from agentstream.transport.pool import RedisConnectionPool

__all__ = ["PartitionedStream"]


class PartitionedStream:
    """The producer side of a partitioned subscription (``partitions = P``).

    An event with a ``key`` goes to partition ``crc32(utf-8 key) % P``
    (``stream:{n}``), so that every event of one key is in one partition, in
    publish order; without a key, events go round the partitions. It creates
    no stream or group: the workers do, and XADD creates a missing stream.

    Args:
        stream_name: the logical stream (the subscription's ``stream``).
        partitions: P, as in the workers' configuration.
        pool: the connections (``pool_from_settings`` for Cluster or Sentinel);
            its ``wait_replicas`` applies to every publish.
        max_len: approximate cap of each partition, in entries.
    """

    def __init__(
        self,
        stream_name: str,
        partitions: int,
        *,
        pool: RedisConnectionPool,
        max_len: int = 10000,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.stream_name = stream_name
        self.partitions = partitions
        self._cores = [
            StreamCore.attach(name, max_len=max_len, pool=pool)
            for name in partition_streams(stream_name, partitions)
        ]

    def partition_of(self, key: str | None) -> int:
        """The partition an event with ``key`` goes to."""
        return partition_for(key, self.partitions)

    def publish(
        self,
        event_type: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> str:
        """Publish to the key's partition (XADD, then WAIT if the pool asks).

        Returns:
            The new entry id (ids are per partition).

        Raises:
            agentstream.errors.TransportError: Redis failed, or fewer replicas
                than ``wait_replicas`` confirmed in time (``ReplicationTimeout``).
        """
        core = self._cores[self.partition_of(key)]
        return core.publish_fields(encode_fields(event_type, data, metadata))

    async def apublish(
        self,
        event_type: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> str:
        """Async version of ``publish()``."""
        core = self._cores[self.partition_of(key)]
        return await core.apublish_fields(encode_fields(event_type, data, metadata))
