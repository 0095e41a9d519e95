"""What the worker counts for the instruments: per-batch tallies and sweeps.

Tally: per-batch counts and latency buckets, cheap enough for the hot path.

Consumers add to plain lists here for every event; the metrics reporter takes
the totals every few seconds, so no Prometheus call happens per event.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["BUCKETS_S", "OUTCOMES", "SLOTS", "SweepResult", "Tally", "TypeTally"]

#: The ``outcome`` label values of ``agentstream_events_total``.
OUTCOMES = (
    "ok",
    "retry",
    "failed",
    "timeout",
    "dead_letter",
    "unhandled",
    "malformed",
    "lost",
)
OK, RETRY, FAILED, TIMEOUT, DEAD_LETTER, UNHANDLED, MALFORMED, LOST = range(8)

#: Upper bounds of the handler-duration and event-age histograms, in seconds.
BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

_FIRST_BUCKET_S = BUCKETS_S[0]

# Producers may invent event types without end; past this many, the rest are
# counted as "other" so that the label set stays bounded.
MAX_TYPES = 200
MAX_REASONS = 50
UNKNOWN_TYPE = "unknown"
OTHER = "other"


class TypeTally:
    """Counts by outcome and two histograms (duration, age) for one type."""

    __slots__ = ("age", "age_sum", "counts", "duration", "duration_sum")

    def __init__(self) -> None:
        self.counts = [0] * len(OUTCOMES)
        self.duration = [0] * (len(BUCKETS_S) + 1)
        self.duration_sum = 0.0
        self.age = [0] * (len(BUCKETS_S) + 1)
        self.age_sum = 0.0

    def observe(self, duration_s: float, age_s: float) -> None:
        """Record one handler call: its duration and the event's age at start."""
        if duration_s <= _FIRST_BUCKET_S:  # the usual case of a quick handler
            self.duration[0] += 1
        else:
            self.duration[bisect_left(BUCKETS_S, duration_s)] += 1
        self.duration_sum += duration_s
        self.age[bisect_left(BUCKETS_S, age_s)] += 1
        self.age_sum += age_s


#: The ``slot`` label values of ``agentstream_slot_wait_seconds``: a handler
#: slot (``concurrency``), a thread for a sync handler (``sync_threads``).
SLOTS = ("slot", "thread")


class Tally:
    """Everything a consumer counted since the last ``take()``.

    Args:
        labelled: the event types with a handler of their own: each keeps its
            own count however many other types arrived first (the metrics
            label those by name, the others ``other``).
    """

    __slots__ = (
        "dead_letter_failures",
        "dead_letter_reasons",
        "labelled",
        "overran",
        "slot_free",
        "types",
        "waits",
    )

    def __init__(self, labelled: frozenset[str] = frozenset()) -> None:
        self.labelled = labelled
        self.types: dict[str, TypeTally] = {}
        self.dead_letter_reasons: dict[str, int] = {}
        self.dead_letter_failures: dict[str, int] = {}
        #: Waits for a slot, by kind: ``[buckets, sum]`` as in `TypeTally`.
        self.waits: dict[str, tuple[list[int], list[float]]] = {}
        #: Sync handler calls that ran past handler_timeout_s (reported, not
        #: cancelled: their outcome is counted when they return).
        self.overran = 0
        #: Handler slots taken without waiting (counted apart: the hot path).
        self.slot_free = 0

    def waited(self, slot: str, seconds: float) -> None:
        """Record one wait for a free slot of kind ``slot`` (see ``SLOTS``)."""
        wait = self.waits.get(slot)
        if wait is None:
            wait = self.waits[slot] = ([0] * (len(BUCKETS_S) + 1), [0.0])
        if seconds <= _FIRST_BUCKET_S:  # the usual case: no wait at all
            wait[0][0] += 1
        else:
            wait[0][bisect_left(BUCKETS_S, seconds)] += 1
        wait[1][0] += seconds

    def of(self, event_type: str) -> TypeTally:
        """The tally of one event type (``other`` past ``MAX_TYPES`` types,
        unless it is one of ``labelled``)."""
        tally = self.types.get(event_type)
        if tally is None:
            if len(self.types) >= MAX_TYPES and event_type not in self.labelled:
                event_type = OTHER
                tally = self.types.get(OTHER)
            if tally is None:
                tally = self.types[event_type] = TypeTally()
        return tally

    def count(self, event_type: str, outcome: int, n: int = 1) -> None:
        """Add ``n`` events of one outcome (an index into ``OUTCOMES``)."""
        self.of(event_type).counts[outcome] += n

    def dead_lettered(self, reason: str) -> None:
        """Count one dead letter by reason (``other`` past ``MAX_REASONS``)."""
        _count_reason(self.dead_letter_reasons, reason)

    def dead_letter_failed(self, reason: str) -> None:
        """Count one dead letter the dead-letter stream refused, by reason."""
        _count_reason(self.dead_letter_failures, reason)

    def total(self, outcome: int) -> int:
        """The count of one outcome over every type."""
        return sum(t.counts[outcome] for t in self.types.values())

    def take(self) -> Tally:
        """Return what was counted so far and start counting from zero."""
        taken = Tally(self.labelled)
        taken.types, self.types = self.types, {}
        taken.dead_letter_reasons, self.dead_letter_reasons = (
            self.dead_letter_reasons,
            {},
        )
        taken.dead_letter_failures, self.dead_letter_failures = (
            self.dead_letter_failures,
            {},
        )
        taken.waits, self.waits = self.waits, {}
        taken.overran, self.overran = self.overran, 0
        if self.slot_free:
            buckets, _ = taken.waits.setdefault(
                "slot", ([0] * (len(BUCKETS_S) + 1), [0.0])
            )
            buckets[0] += self.slot_free
            self.slot_free = 0
        return taken


def _count_reason(reasons: dict[str, int], reason: str) -> None:
    if reason not in reasons and len(reasons) >= MAX_REASONS:
        reason = OTHER
    reasons[reason] = reasons.get(reason, 0) + 1


@dataclass(slots=True)
class SweepResult:
    """What one sweep found and did."""

    scanned: int = 0
    claimed: int = 0
    dead_lettered: int = 0
    lost: int = 0
    waiting: int = 0
    removed_consumers: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    #: The largest idle time (XPENDING) among the pending entries the sweep
    #: scanned, before it claimed any: those idle for ``min_idle_ms`` or more,
    #: of consumers not alive (a live one renews its entries); 0 when none.
    max_idle_ms: int = 0
