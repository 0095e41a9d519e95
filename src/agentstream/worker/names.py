"""NameLease: one live owner per consumer name, across processes and hosts."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Sequence

import anyio
import structlog

from agentstream.config import Settings
from agentstream.errors import PermissionDenied, Refused, TransportError
from agentstream.transport.worker_ops import WorkerOps

__all__ = ["NameLease", "NamesExhausted", "name_base"]

log = structlog.get_logger("agentstream.names")

LEASE_TTL_S = 30.0
_MAX_SUFFIX = 100


def name_base(settings: Settings, process_index: int) -> str:
    """The consumer-name base of a worker process: ``{name_prefix or host}-{index}``."""
    return f"{settings.name_prefix or socket.gethostname()}-{process_index}"


class NamesExhausted(Exception):
    """Every candidate consumer name is held by a live worker."""


class NameLease:
    """Holds the name base ``{prefix}-{process}`` of this process's consumers.

    Two workers with the same configuration on one host (a copied unit, a
    container restarted while the old one drains) would otherwise share
    consumer names, and so re-read and handle one pending list twice. The first
    takes a lease key per subscription, renewed while it runs; the second finds
    it held and takes ``{base}.1`` (then ``.2``, ...). A dead owner's name is
    free again once its lease expires, ``LEASE_TTL_S`` after its last renewal.
    """

    def __init__(
        self,
        transports: Sequence[WorkerOps],
        base: str,
        ttl_s: float = LEASE_TTL_S,
    ) -> None:
        self._transports = list(transports)
        self._wanted = base
        self.name = base
        self._token = uuid.uuid4().hex
        self._ttl_ms = int(ttl_s * 1000)

    async def acquire(self) -> str:
        """Take the first free name base; returns it.

        A server that refuses the lease write (``maxmemory``, a read-only
        replica, a failed save) does not stop the worker: it runs under ``base``
        unleased, and ``keep()`` takes the lease once writes are accepted again.

        Raises:
            NamesExhausted: ``base`` and ``base.1`` .. ``base.99`` are all held.
            PermissionDenied: the ACL refuses the lease script (an operator's
                fix, not a retry, helps).
            TransportError: Redis failed.
        """
        for suffix in range(_MAX_SUFFIX):
            candidate = self._wanted if suffix == 0 else f"{self._wanted}.{suffix}"
            try:
                taken = await self._take(candidate)
            except PermissionDenied:
                raise
            except Refused as exc:
                log.warning("consumer_name_unleased", name=candidate, reason=exc.reason)
                self.name = candidate
                return candidate
            if taken:
                if suffix:
                    log.warning(
                        "consumer_name_taken", wanted=self._wanted, using=candidate
                    )
                self.name = candidate
                return candidate
        raise NamesExhausted(
            f"consumer names {self._wanted} to {self._wanted}.{_MAX_SUFFIX - 1} "
            "are all held by live workers"
        )

    async def _take(self, candidate: str) -> bool:
        held: list[WorkerOps] = []
        for transport in self._transports:
            if not await transport.aacquire_lease(candidate, self._token, self._ttl_ms):
                for other in held:
                    await other.arelease_lease(candidate, self._token)
                return False
            held.append(transport)
        return True

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew the lease every third of its lifetime until cancelled.

        Calls ``on_lost`` if another worker took the name meanwhile (this one
        could not renew it for a whole lifetime).
        """
        while True:
            await anyio.sleep(self._ttl_ms / 3000)
            try:
                for transport in self._transports:
                    if not await transport.aacquire_lease(
                        self.name, self._token, self._ttl_ms
                    ):
                        log.error("consumer_name_lost", name=self.name)
                        on_lost()
                        return
            except TransportError:
                continue  # Redis is down: the consumers report it; retry later

    async def release(self) -> None:
        """Give the names up (on a clean shutdown)."""
        for transport in self._transports:
            try:
                await transport.arelease_lease(self.name, self._token)
            except TransportError:
                return
