"""The names of the keys agentstream keeps beside a stream.

Every key starts with the stream's name, so that one ACL key pattern such as
``~agent_output*`` covers a subscription's stream, its dead letters and these.
"""

from __future__ import annotations

__all__ = [
    "RETRY_CONSUMER",
    "last_error_key",
    "lease_key",
    "lease_pattern",
    "pause_key",
]


def last_error_key(stream: str, group: str, entry_id: str) -> str:
    """The last error recorded for a pending entry: ``{stream}:lasterror:{group}:{id}``."""
    return f"{stream}:lasterror:{group}:{entry_id}"


def lease_key(stream: str, group: str, name: str) -> str:
    """A worker's lease on a consumer-name base: ``{stream}:owner:{group}:{name}``."""
    return f"{stream}:owner:{group}:{name}"


def lease_pattern(stream: str, group: str) -> str:
    """A SCAN MATCH pattern for every lease of a group (glob characters escaped)."""
    prefix = lease_key(stream, group, "")
    escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix)
    return escaped + "*"


def pause_key(stream: str, group: str) -> str:
    """Set while the subscription (stream, group) is paused: ``{stream}:paused:{group}``."""
    return f"{stream}:paused:{group}"


#: The parking consumer: failed entries wait on it until a reaper retries them.
RETRY_CONSUMER = "agentstream-retry"
