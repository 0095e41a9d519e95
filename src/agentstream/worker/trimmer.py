"""Trimmer: keeps a processed-retention stream bounded without losing events."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog

from agentstream.config import RetentionSettings
from agentstream.transport.worker_ops import Dropped, TrimResult, WorkerOps

__all__ = ["Trimmer"]

log = structlog.get_logger("agentstream.trimmer")

#: Entries the hard cap removes per script call, so that one call never holds
#: Redis for long; the trimmer calls again until the stream is under the cap.
_CAP_CHUNK = 1000


class Trimmer:
    """Trims one stream in ``"processed"`` retention every ``interval_s``.

    Each trim removes the entries every consumer group of the stream has
    acknowledged (``XTRIM MINID`` below the oldest entry any group still has
    pending or unread), then enforces the hard cap ``max_len``, counting per
    group what it removed before that group acknowledged it. On Redis 8.2+
    acknowledgements already delete what they can (``XACKDEL ... ACKED``):
    the trimmer then finds little left but still enforces the cap, and removes
    what other acknowledgers (plain ``XACK``) left behind.

    Every worker process runs one per subscription; trims are atomic scripts,
    so several trimmers on one stream never remove or count an entry twice.
    """

    def __init__(self, transport: WorkerOps, settings: RetentionSettings) -> None:
        self.transport = transport
        self._settings = settings
        self._wake = anyio.Event()
        self._stopping = False

    def stop(self) -> None:
        """Stop after the trim under way."""
        self._stopping = True
        self._wake.set()

    async def run(self, on_trim: Callable[[TrimResult], None] | None = None) -> None:
        """Trim every ``interval_s`` until stopped; ``on_trim`` gets each result."""
        with structlog.contextvars.bound_contextvars(stream=self.transport.stream_name):
            while not self._stopping:
                result = await self.trim()
                if on_trim is not None:
                    on_trim(result)
                with anyio.move_on_after(self._settings.interval_s):
                    await self._wake.wait()

    async def trim(self) -> TrimResult:
        """One trim: the acknowledged entries, then the cap, until under it."""
        acknowledged = capped = 0
        dropped: dict[str, Dropped] = {}
        while True:
            step = await self.transport.atrim_processed(
                self._settings.max_len, _CAP_CHUNK
            )
            acknowledged += step.acknowledged
            capped += step.capped
            for group, d in step.dropped.items():
                before = dropped.get(group, Dropped(0, 0))
                dropped[group] = Dropped(
                    before.unread + d.unread, before.pending + d.pending
                )
            if step.over_cap <= 0 or step.capped == 0 or self._stopping:
                break
        for group, d in dropped.items():
            log.error(
                "retention_cap_dropped",
                group=group,
                unread=d.unread,
                pending=d.pending,
                max_len=self._settings.max_len,
            )
        return TrimResult(acknowledged, capped, 0, dropped)
