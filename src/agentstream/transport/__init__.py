"""Everything that speaks to Redis: the seed-compatible ``RedisStreamTransport``,
the connection pool, and the stream operations of the worker and the operator.

The only wing that imports ``redis``.
"""

from agentstream.transport.core import ClaimResult, PendingEntry, RawEntry, RawFields
from agentstream.transport.pool import RedisConnectionPool, pool_from_settings
from agentstream.transport.redis_stream import RedisStreamTransport

__all__ = [
    "ClaimResult",
    "PendingEntry",
    "RawEntry",
    "RawFields",
    "RedisConnectionPool",
    "RedisStreamTransport",
    "pool_from_settings",
]
