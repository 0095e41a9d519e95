"""Everything that speaks to Redis: the seed-compatible ``RedisStreamTransport``,
the connection pool, and the stream operations of the worker and the operator.

The only wing that imports ``redis``.
"""

from agentstream.transport.core import ClaimResult, PendingEntry, RawEntry, RawFields
from agentstream.transport.keys import partition_for
from agentstream.transport.partitioned import PartitionedStream
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings
from agentstream.transport.redis_stream import RedisStreamTransport

__all__ = [
    "ClaimResult",
    "PartitionedStream",
    "PendingEntry",
    "RawEntry",
    "RawFields",
    "RedisConnectionPool",
    "RedisStreamTransport",
    "partition_for",
    "pool_from_settings",
]
