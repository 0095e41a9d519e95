"""Events per second, sampled by the console from what Redis holds.

Redis keeps two running counters per subscription: the stream's
``entries-added`` (XINFO STREAM, Redis 7+) and the group's ``entries-read``
(XINFO GROUPS). The console samples both every few seconds and keeps the last
ten minutes; rates are the differences. No worker is needed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import anyio
import structlog

from agentstream.errors import TransportError
from agentstream.transport.admin_ops import AdminOps

__all__ = ["RateSampler", "Rates"]

log = structlog.get_logger("agentstream.web")

_KEEP_S = 600.0


@dataclass(frozen=True, slots=True)
class Rates:
    """Added (published) and read (delivered) events per second.

    ``*_1m`` over the last minute, ``*_window`` over the whole window;
    ``series`` is the added rate per sampling interval, oldest first.
    None where there are not yet two samples (or Redis does not count).
    """

    added_1m: float | None
    read_1m: float | None
    window_s: float
    series: list[float]


def _rate(a: tuple[float, int | None, int | None], b: tuple[float, int | None, int | None], i: int) -> float | None:  # fmt: skip
    if a[i] is None or b[i] is None or b[0] <= a[0]:
        return None
    return max((b[i] or 0) - (a[i] or 0), 0) / (b[0] - a[0])


class RateSampler:
    """Samples each subscription's counters every ``interval_s`` seconds."""

    def __init__(self, transports: Sequence[AdminOps], interval_s: float) -> None:
        self._transports = list(transports)
        self.interval_s = interval_s
        size = int(_KEEP_S / interval_s) + 1
        self._samples: list[deque[tuple[float, int | None, int | None]]] = [
            deque(maxlen=size) for _ in self._transports
        ]

    async def sample(self) -> None:
        """Take one sample of every subscription (failures are skipped)."""
        for ops, samples in zip(self._transports, self._samples, strict=True):
            try:
                info = await ops.astream_info()
                group = await ops.agroup_info() if info is not None else None
            except TransportError as exc:
                log.debug("rate_sample_failed", error=str(exc))
                continue
            added = info.get("entries-added") if info else None
            read = group.get("entries-read") if group else None
            samples.append(
                (
                    time.monotonic(),
                    None if added is None else int(added),
                    None if read is None else int(read),
                )
            )

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            await self.sample()
            await anyio.sleep(self.interval_s)

    def rates(self, index: int) -> Rates:
        """The rates of subscription ``index`` (in configuration order)."""
        samples = list(self._samples[index])
        if len(samples) < 2:
            return Rates(None, None, 0.0, [])
        now = samples[-1][0]

        def over_minute(i: int) -> float | None:
            known = [s for s in samples if s[i] is not None and now - s[0] <= 60.0]
            return _rate(known[0], known[-1], i) if len(known) > 1 else None

        series = [r for a, b in pairwise(samples) if (r := _rate(a, b, 1)) is not None]
        return Rates(over_minute(1), over_minute(2), now - samples[0][0], series)
