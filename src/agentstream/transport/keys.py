"""The key scheme: partitions, the partition of a key, and keys derived from a stream.

Redis Cluster runs a command or a Lua script only when all its keys hash to one
slot (else ``CROSSSLOT``). Every key derived from a stream therefore carries the
stream's hash tag, so that the dead-letter stream, error records, consumer-name
leases and partition leases live in the stream's slot:

- a partition of the logical stream ``orders`` is ``orders:{3}`` (hash tag ``3``);
- a key derived from stream ``S`` is ``S:<suffix>`` when ``S`` carries a hash tag
  (``orders:{3}:dlq``); for a stream without one it is ``S:<suffix>`` on a single
  Redis (the names of earlier releases) and ``{S}:<suffix>`` on a cluster, which
  hashes exactly like ``S`` itself.

The partition of an event key is ``crc32(key.encode("utf-8")) % partitions``
(zlib's CRC-32, the one of gzip, PNG and Java's ``java.util.zip.CRC32``), so a
producer in any language can route like the Python one.
"""

from __future__ import annotations

import itertools
import zlib

from redis.crc import key_slot

from agentstream.config import SubscriptionSettings
from agentstream.errors import ConfigError

__all__ = [
    "RECOVERED_CONSUMER",
    "RETRY_CONSUMER",
    "derived_key",
    "errors_key",
    "hash_tag",
    "lease_key",
    "lease_pattern",
    "partition_for",
    "partition_streams",
    "pause_key",
    "physical_subscriptions",
    "same_slot",
    "slot_of",
]


def hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` as Redis Cluster reads it, or None.

    The tag is what lies between the first ``{`` and the next ``}``, when that
    is not empty (Redis Cluster specification, "Hash tags").
    """
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def slot_of(key: str) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag or of the key, mod 16384)."""
    return int(key_slot(key.encode()))


def same_slot(*keys: str) -> bool:
    """Whether all ``keys`` hash to one cluster slot."""
    return len({slot_of(k) for k in keys}) <= 1


def derived_key(stream: str, suffix: str, *, cluster: bool) -> str:
    """A key that belongs to ``stream`` (dead letters, leases, error records).

    Raises:
        ConfigError: on a cluster, ``stream`` has braces but no valid hash tag,
            so no derived name can share its slot.
    """
    if hash_tag(stream) is not None or not cluster:
        return f"{stream}:{suffix}"
    if "{" in stream or "}" in stream:
        raise ConfigError(
            f"stream {stream!r}: on Redis Cluster a stream name with braces needs "
            "a non-empty hash tag such as {orders}"
        )
    return f"{{{stream}}}:{suffix}"


def partition_streams(stream: str, partitions: int) -> list[str]:
    """The stream keys of a logical stream: itself, or ``stream:{0}`` ... ``{P-1}``."""
    if partitions == 1:
        return [stream]
    return [f"{stream}:{{{i}}}" for i in range(partitions)]


_spread = itertools.count()


def partition_for(key: str | None, partitions: int) -> int:
    """The partition of an event key: ``crc32(utf-8 key) % partitions``.

    Without a key, successive calls go round the partitions (even spread).
    """
    if partitions == 1:
        return 0
    if key is None:
        return next(_spread) % partitions
    return zlib.crc32(key.encode("utf-8")) % partitions


def physical_subscriptions(
    sub: SubscriptionSettings, *, cluster: bool
) -> list[SubscriptionSettings]:
    """One subscription per stream key of ``sub`` (one per partition).

    Each carries an explicit dead-letter stream in its own slot: the
    partition's ``:dlq`` (or ``dead_letter_stream:{i}`` when one is set).

    Raises:
        ConfigError: on a cluster, a configured dead-letter stream does not
            hash to the slot of its stream.
    """
    result = []
    for index, stream in enumerate(partition_streams(sub.stream, sub.partitions)):
        if sub.dead_letter_stream is None:
            dead = derived_key(stream, "dlq", cluster=cluster)
        elif sub.partitions == 1:
            dead = sub.dead_letter_stream
        else:
            dead = f"{sub.dead_letter_stream}:{{{index}}}"
        if cluster and not same_slot(stream, dead):
            raise ConfigError(
                f"subscriptions: dead-letter stream {dead!r} of {stream!r} is in "
                f"another cluster slot; give it the stream's hash tag "
                "or leave dead_letter_stream unset"
            )
        result.append(
            sub.model_copy(
                update={"stream": stream, "dead_letter_stream": dead, "partitions": 1}
            )
        )
    return result


def errors_key(stream: str, group: str, *, cluster: bool = False) -> str:
    """The hash of a group's error records (field: entry id): ``{stream}:errors:{group}``."""
    return derived_key(stream, f"errors:{group}", cluster=cluster)


def lease_key(stream: str, group: str, name: str, *, cluster: bool = False) -> str:
    """A worker's lease on a consumer-name base: ``{stream}:owner:{group}:{name}``."""
    return derived_key(stream, f"owner:{group}:{name}", cluster=cluster)


def lease_pattern(stream: str, group: str, *, cluster: bool = False) -> str:
    """A SCAN MATCH pattern for every lease of a group (glob characters escaped)."""
    prefix = lease_key(stream, group, "", cluster=cluster)
    escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix)
    return escaped + "*"


def pause_key(stream: str, group: str, *, cluster: bool = False) -> str:
    """Set while the subscription (stream, group) is paused: ``{stream}:paused:{group}``."""
    return derived_key(stream, f"paused:{group}", cluster=cluster)


#: Where a consumer parks the entries it failed, until the reaper retries them.
#: Live consumers then hold only entries in flight (their leases fresh), so a
#: sweep looks at this consumer's and at idle consumers' entries only.
RETRY_CONSUMER = "agentstream-retry"
#: Where a consumer parks, when it starts, the entries its previous run left
#: pending (in flight when it crashed, was killed or hit the shutdown deadline):
#: the reaper redelivers them as it does a dead consumer's.
RECOVERED_CONSUMER = "agentstream-recovered"
