"""Consumer and worker operations shared by the CLI and the web console.

A group's consumers with the worker process that owns each (from the
consumer-name leases), the running workers, removing a consumer that owns
nothing, and moving a group's last-delivered id.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentstream.admin._common import CommandFailed, no_group, text
from agentstream.transport.admin_ops import AdminOps
from agentstream.transport.core import NoGroup
from agentstream.transport.keys import RETRY_CONSUMER

__all__ = [
    "ConsumerInfo",
    "WorkerInfo",
    "list_consumers",
    "list_workers",
    "name_base",
    "remove_consumer",
    "reset_group",
]


def name_base(consumer: str) -> str | None:
    """The worker's name base of a consumer name: ``host-0`` of ``host-0-3``.

    Worker consumers are named ``{base}-{index}`` or ``{base}-reaper``; None
    for the parking consumer and for names not of that form.
    """
    if consumer == RETRY_CONSUMER:
        return None
    base, sep, _ = consumer.rpartition("-")
    return base if sep and base else None


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of a group.

    ``inactive_ms`` is None before Redis 7.2. ``worker`` is the name base whose
    lease a running worker holds, or None; ``stale`` means no running worker
    owns the consumer (its process is gone) and it is not the parking consumer.
    """

    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None
    worker: str | None
    stale: bool

    @property
    def removable(self) -> bool:
        """Whether it may be removed: it owns no pending entry."""
        return self.pending == 0 and self.name != RETRY_CONSUMER


async def list_consumers(ops: AdminOps) -> list[ConsumerInfo]:
    """The group's consumers, with their owning worker and whether stale.

    Raises:
        CommandFailed: the stream or the group does not exist.
    """
    rows = await ops.aconsumer_rows()
    if rows is None:
        raise no_group(ops)
    bases = sorted({b for r in rows if (b := name_base(r["name"])) is not None})
    held = {
        b for b, ttl in zip(bases, await ops.alease_ttls(bases), strict=True) if ttl
    }
    result = []
    for r in rows:
        base = name_base(r["name"])
        alive = base in held
        result.append(
            ConsumerInfo(
                r["name"],
                r["pending"],
                r["idle_ms"],
                r["inactive_ms"],
                base if alive else None,
                stale=not alive and r["name"] != RETRY_CONSUMER,
            )
        )
    return result


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A running worker process: its consumer-name base, lease and consumers."""

    name: str
    lease_ms_left: int
    consumers: list[str]
    pending: int


async def list_workers(ops: AdminOps) -> list[WorkerInfo]:
    """The worker processes that hold a name lease in this group now."""
    leases = await ops.aleases()
    rows = await ops.aconsumer_rows() or []
    workers = []
    for name, ttl in leases:
        mine = [r for r in rows if name_base(r["name"]) == name]
        workers.append(
            WorkerInfo(
                name,
                ttl,
                [r["name"] for r in mine],
                sum(r["pending"] for r in mine),
            )
        )
    return workers


async def remove_consumer(ops: AdminOps, name: str) -> None:
    """Remove a consumer that owns no pending entry (XGROUP DELCONSUMER).

    Raises:
        CommandFailed: no such consumer; it owns pending entries (removing it
            would drop them from the group); or it is the parking consumer.
    """
    if name == RETRY_CONSUMER:
        raise CommandFailed(f"{name} is the parking consumer of failed entries")
    rows = await ops.aconsumer_rows()
    found = [r for r in rows or () if r["name"] == name]
    if not found:
        raise CommandFailed(
            f"no consumer {name!r} in group {ops.group!r} of {ops.stream!r}"
        )
    if found[0]["pending"]:
        raise CommandFailed(
            f"consumer {name!r} owns {found[0]['pending']} pending entries: hand "
            "them over (pending claim) or acknowledge them first"
        )
    if not await ops.aremove_empty_consumer(name):
        raise CommandFailed(f"consumer {name!r} took entries meanwhile; not removed")


async def reset_group(ops: AdminOps, entry_id: str) -> tuple[str, str]:
    """Set the group's last-delivered id (XGROUP SETID); pending entries stay.

    ``entry_id`` is an id, ``0`` (deliver the whole stream again) or ``$``
    (skip everything not yet delivered). Returns ``(old id, new id)``.

    Raises:
        CommandFailed: the stream or the group does not exist.
    """
    info = await ops.agroup_info()
    if info is None:
        raise no_group(ops)
    old = text(info["last-delivered-id"])
    try:
        await ops.aset_last_delivered(entry_id)
    except NoGroup:
        raise CommandFailed(f"group {ops.group!r} vanished meanwhile") from None
    new = await ops.agroup_info()
    return old, text(new["last-delivered-id"]) if new else entry_id
