"""Metrics: Prometheus collectors and the exposition server."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import WSGIApplication

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    multiprocess,
)
from prometheus_client import make_wsgi_app as _make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric

from agentstream._version import __version__
from agentstream.observe.counts import (
    BUCKETS_S,
    OTHER,
    OUTCOMES,
    UNKNOWN_TYPE,
    SweepResult,
    Tally,
)

__all__ = [
    "DEAD_LETTER_REASONS",
    "OUTCOMES",
    "CollectorRegistry",
    "GroupStats",
    "Metrics",
    "MetricsServer",
    "start_server",
]

_GROUP = ("stream", "group")

#: The ``reason`` label values of ``agentstream_dead_lettered_total``. A
#: handler's own ``DeadLetter(reason)`` text is free (it goes to the log and the
#: dead-letter entry); its label is ``handler``.
DEAD_LETTER_REASONS = ("handler", "max_deliveries", "malformed", "unhandled")
# Sweeps also handle what they claim, so they can take as long as handlers do.
_SWEEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One consumer group's backlog as Redis reports it at one moment."""

    length: int
    lag: int | None
    pending: int
    oldest_pending_age_s: float | None
    consumers: int
    dead_letter_length: int
    #: Age of the oldest entry not yet delivered to the group, from its id;
    #: 0 when the group has read everything, None when it cannot be told.
    lag_age_s: float | None = 0.0


class Metrics:
    """The worker's collectors, registered on the registry it is given.

    Labels stay bounded for the life of the process, whatever producers send:
    ``type`` is the event type only for the types in ``event_types`` (those
    with a handler of their own), else ``other`` (``unknown`` for entries with
    no readable type); ``reason`` is one of `DEAD_LETTER_REASONS`.
    """

    def __init__(
        self, registry: CollectorRegistry, event_types: Collection[str] = ()
    ) -> None:
        self._types = frozenset(event_types) | {UNKNOWN_TYPE}

        def counter(name: str, doc: str, labels: tuple[str, ...] = _GROUP) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        # With several worker processes, each reports the same group state:
        # the parent shows the most recent report, not a sum of copies.
        def gauge(
            name: str,
            doc: str,
            labels: tuple[str, ...] = _GROUP,
            mode: Literal[
                "mostrecent", "max", "livesum", "livemin", "livemax"
            ] = "mostrecent",
        ) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        self.events = counter(
            "agentstream_events_total",
            "Events handled, by type and outcome.",
            ("stream", "group", "type", "outcome"),
        )
        self.handler_duration = Histogram(
            "agentstream_handler_duration_seconds",
            "Time spent in handlers, by event type.",
            ("stream", "group", "type"),
            buckets=BUCKETS_S,
            registry=registry,
        )
        self.event_age = Histogram(
            "agentstream_event_age_seconds",
            "Time from an entry's id (its publish time) to the start of its handler.",
            _GROUP,
            buckets=BUCKETS_S,
            registry=registry,
        )
        self.redis_errors = Counter(
            "agentstream_redis_errors_total",
            "Redis commands that failed, by operation.",
            ("operation",),
            registry=registry,
        )
        self.redis_refusals = Counter(
            "agentstream_redis_refusals_total",
            "Commands Redis answered but refused, by its error code (OOM, "
            "READONLY, MISCONF, BUSY, NOPERM...).",
            ("reason",),
            registry=registry,
        )
        self.redis_up = gauge(
            "agentstream_redis_up",
            "1 while Redis answers, 0 while it cannot be reached (the lowest of "
            "all live processes).",
            (),
            "livemin",
        )
        self.redis_refusing = gauge(
            "agentstream_redis_refusing",
            "1 while Redis refused a command within the last minute, by code "
            "(the highest of all live processes).",
            ("reason",),
            "livemax",
        )
        self.redis_reconnects = Counter(
            "agentstream_redis_reconnects_total",
            "Times Redis answered again after being unavailable.",
            registry=registry,
        )
        self.claimed = counter(
            "agentstream_claimed_total", "Stale entries the reaper claimed."
        )
        self.dead_lettered = counter(
            "agentstream_dead_lettered_total",
            "Entries moved to the dead-letter stream, by reason.",
            ("stream", "group", "reason"),
        )
        self.dead_letter_failures = counter(
            "agentstream_dead_letter_failures_total",
            "Dead letters the dead-letter stream refused (the event stays pending).",
            ("stream", "group", "reason"),
        )
        self.sweep_duration = Histogram(
            "agentstream_reaper_sweep_duration_seconds",
            "Duration of one reaper sweep, claimed entries handled included.",
            _GROUP,
            buckets=_SWEEP_BUCKETS,
            registry=registry,
        )
        self.last_sweep = gauge(
            "agentstream_reaper_last_sweep_timestamp_seconds",
            "Unix time at which the last reaper sweep ended.",
            mode="max",
        )
        self.paused = gauge(
            "agentstream_subscription_paused",
            "1 while an operator has paused the subscription (agentstream pause).",
        )
        self.lag = gauge(
            "agentstream_group_lag",
            "Entries not yet delivered to the group (absent while unknown).",
        )
        self.lag_age = gauge(
            "agentstream_group_lag_seconds",
            "Age of the oldest entry not yet delivered to the group, from its id "
            "(absent while unknown); 0 when the group has read everything.",
        )
        self.lag_unknown = gauge(
            "agentstream_group_lag_unknown",
            "1 when Redis cannot tell the group's lag (entries deleted), else 0.",
        )
        self.pending = gauge(
            "agentstream_group_pending", "Entries delivered and not yet acknowledged."
        )
        self.oldest_pending_age = gauge(
            "agentstream_oldest_pending_age_seconds",
            "Age of the oldest pending entry, from its id and the server's clock; "
            "0 when none is pending; absent when the id lies in the future.",
        )
        self.oldest_pending_idle = gauge(
            "agentstream_oldest_pending_idle_seconds",
            "Largest idle time (since its last delivery or claim) of a pending "
            "entry the last reaper sweep found idle for min_idle_ms or more; "
            "0 when none was.",
            mode="livemax",
        )
        self.stream_length = gauge(
            "agentstream_stream_length", "Entries in the stream.", ("stream",)
        )
        self.consumers = gauge(
            "agentstream_group_consumers", "Consumers the group knows of."
        )
        self.dead_letter_length = gauge(
            "agentstream_dead_letter_length",
            "Entries in the dead-letter stream of the subscription to this stream.",
            ("stream",),
        )
        self.restarts = Counter(
            "agentstream_consumer_restarts_total",
            "Consumer and reaper loops restarted after a failure.",
            registry=registry,
        )
        self.in_flight = gauge(
            "agentstream_in_flight",
            "Entries read and not yet acknowledged (summed over live processes).",
            (),
            "livesum",
        )
        self.ready = gauge(
            "agentstream_worker_ready",
            "1 when the worker is ready (as /readyz), else 0.",
            (),
            "livemin",
        )
        self.redis_last_contact = gauge(
            "agentstream_redis_last_contact_timestamp_seconds",
            "Unix time of the last command Redis answered.",
            (),
            "max",
        )
        # CPU, memory, open descriptors of this process (Linux /proc), as
        # prometheus_client.start_http_server would add by default.
        ProcessCollector(registry=registry)
        self.retention_dropped = Counter(
            "agentstream_retention_dropped_total",
            "Entries the processed-retention hard cap removed before the group "
            "acknowledged them; state: unread (lost) or pending (lost unless "
            "the consumer holding them lives).",
            ("stream", "group", "state"),
            registry=registry,
        )
        self.retention_trimmed = Counter(
            "agentstream_retention_trimmed_total",
            "Entries the worker's trimmer removed from a processed-retention "
            "stream; reason: acknowledged (by every group) or cap.",
            ("stream", "reason"),
            registry=registry,
        )
        self.memory_policy = gauge(
            "agentstream_redis_maxmemory_policy",
            "1 for Redis's current maxmemory-policy (INFO memory); any policy "
            "but noeviction may evict streams.",
            ("policy",),
            "max",
        )
        self._policy: str | None = None
        self.calls_in_flight = gauge(
            "agentstream_handler_calls_in_flight",
            "Handler calls running now (summed over live processes).",
            (),
            "livesum",
        )
        self.capacity = gauge(
            "agentstream_handler_capacity",
            "Handler calls allowed at once: concurrency, summed over live processes.",
            (),
            "livesum",
        )
        self.slot_wait = Histogram(
            "agentstream_slot_wait_seconds",
            "Time an event waited for a free slot before its handler started: "
            'slot="slot" for concurrency, "thread" for sync_threads.',
            ("stream", "group", "slot"),
            buckets=BUCKETS_S,
            registry=registry,
        )
        self.overruns = counter(
            "agentstream_sync_handler_overruns_total",
            "Sync handler calls that ran past handler_timeout_s (not cancellable).",
        )
        build = gauge(
            "agentstream_build_info", "agentstream version.", ("version",), "max"
        )
        build.labels(__version__).set(1)
        self._restarts_seen = 0
        self._refusing_seen: set[tuple[str]] = set()
        self.redis_up.set(1)

    def record_tally(self, stream: str, group: str, tally: Tally) -> None:
        """Add what a consumer counted (a ``Tally.take()``) to the totals."""
        age_buckets = [0] * (len(BUCKETS_S) + 1)
        age_sum = 0.0
        for event_type, counts in tally.types.items():
            label = event_type if event_type in self._types else OTHER
            for outcome, n in zip(OUTCOMES, counts.counts, strict=True):
                if n:
                    self.events.labels(stream, group, label, outcome).inc(n)
            if any(counts.duration):
                child = self.handler_duration.labels(stream, group, label)
                _add_buckets(child, counts.duration, counts.duration_sum)
            age_buckets = [a + b for a, b in zip(age_buckets, counts.age, strict=True)]
            age_sum += counts.age_sum
        if any(age_buckets):
            _add_buckets(self.event_age.labels(stream, group), age_buckets, age_sum)
        for reason, n in tally.dead_letter_reasons.items():
            label = reason if reason in DEAD_LETTER_REASONS else "handler"
            self.dead_lettered.labels(stream, group, label).inc(n)
        for reason, n in tally.dead_letter_failures.items():
            label = reason if reason in DEAD_LETTER_REASONS else "handler"
            self.dead_letter_failures.labels(stream, group, label).inc(n)
        for slot, (buckets, total) in tally.waits.items():
            _add_buckets(self.slot_wait.labels(stream, group, slot), buckets, total[0])
        if tally.overran:
            self.overruns.labels(stream, group).inc(tally.overran)

    def record_redis(
        self,
        errors: dict[str, int],
        reconnects: int,
        refusals: dict[str, int] | None = None,
    ) -> None:
        """Add Redis failures by operation, recoveries and refusals by code."""
        for operation, n in errors.items():
            self.redis_errors.labels(operation).inc(n)
        if reconnects:
            self.redis_reconnects.inc(reconnects)
        for reason, n in (refusals or {}).items():
            self.redis_refusals.labels(reason).inc(n)

    def set_redis_state(self, up: bool, refusing: str | None) -> None:
        """Set ``agentstream_redis_up`` and which refusal code is current."""
        self.redis_up.set(1 if up else 0)
        for (reason,) in list(self._refusing_seen):
            self.redis_refusing.labels(reason).set(1 if reason == refusing else 0)
        if refusing is not None and (refusing,) not in self._refusing_seen:
            self._refusing_seen.add((refusing,))
            self.redis_refusing.labels(refusing).set(1)

    def record_sweep(self, stream: str, group: str, result: SweepResult) -> None:
        """Record what one reaper sweep did and how long it took."""
        self.claimed.labels(stream, group).inc(result.claimed)
        self.sweep_duration.labels(stream, group).observe(result.duration_s)
        self.last_sweep.labels(stream, group).set(time.time())
        self.oldest_pending_idle.labels(stream, group).set(result.max_idle_ms / 1000)

    def record_group_stats(self, stream: str, group: str, stats: GroupStats) -> None:
        """Set the backlog gauges of one group from a ``GroupStats``."""
        if stats.lag is None:
            # A 0 would claim "caught up"; no sample says "unknown" honestly.
            # A child of a multi-process parent cannot remove a series from its
            # value file: it writes NaN, which the parent's collector drops.
            if os.environ.get(MULTIPROC_ENV):
                self.lag.labels(stream, group).set(math.nan)
            else:
                _remove(self.lag, stream, group)
            self.lag_unknown.labels(stream, group).set(1)
        else:
            self.lag.labels(stream, group).set(stats.lag)
            self.lag_unknown.labels(stream, group).set(0)
        if stats.lag_age_s is None:
            _remove(self.lag_age, stream, group)
        else:
            self.lag_age.labels(stream, group).set(stats.lag_age_s)
        self.pending.labels(stream, group).set(stats.pending)
        if stats.oldest_pending_age_s is None:  # an id that is not a publish time
            self.oldest_pending_age.remove(stream, group)
        else:
            self.oldest_pending_age.labels(stream, group).set(
                stats.oldest_pending_age_s
            )
        self.consumers.labels(stream, group).set(stats.consumers)
        self.stream_length.labels(stream).set(stats.length)
        self.dead_letter_length.labels(stream).set(stats.dead_letter_length)

    def set_paused(self, stream: str, group: str, paused: bool) -> None:
        """Record whether a subscription is paused."""
        self.paused.labels(stream, group).set(1 if paused else 0)

    def record_trim(
        self,
        stream: str,
        acknowledged: int,
        capped: int,
        dropped: Mapping[str, tuple[int, int]],
    ) -> None:
        """Count what one trim removed, and per group ``(unread, pending)`` of
        what the cap removed before that group acknowledged it."""
        if acknowledged:
            self.retention_trimmed.labels(stream, "acknowledged").inc(acknowledged)
        # Touched even at 0, so that increase() sees the first removals.
        self.retention_trimmed.labels(stream, "cap").inc(capped)
        for group, (unread, pending) in dropped.items():
            self.retention_dropped.labels(stream, group, "unread").inc(unread)
            self.retention_dropped.labels(stream, group, "pending").inc(pending)

    def init_retention(self, stream: str, group: str) -> None:
        """Show a subscription's dropped-entry counts from 0, in any mode (in
        ``"length"`` mode the worker never trims, so they stay 0)."""
        for state in ("unread", "pending"):
            self.retention_dropped.labels(stream, group, state)

    def set_memory_policy(self, policy: str) -> None:
        """Show ``policy`` as Redis's maxmemory-policy (only the current one)."""
        if self._policy is not None and self._policy != policy:
            self.memory_policy.remove(self._policy)
        self._policy = policy
        self.memory_policy.labels(policy).set(1)

    def set_restarts(self, n: int) -> None:
        """Bring the restart counter up to ``n``, the supervisor's running total."""
        if n > self._restarts_seen:
            self.restarts.inc(n - self._restarts_seen)
            self._restarts_seen = n

    def set_in_flight(self, n: int) -> None:
        """Set the number of entries read and not yet acknowledged."""
        self.in_flight.set(n)

    def set_state(self, ready: bool, redis_up: bool, last_contact_s: float) -> None:
        """Set readiness, whether Redis answers, and when it last did (Unix s)."""
        self.ready.set(1 if ready else 0)
        self.redis_up.set(1 if redis_up else 0)
        if last_contact_s:
            self.redis_last_contact.set(last_contact_s)

    def set_calls(self, running: int, capacity: int) -> None:
        """Set the handler calls running now and the process's concurrency."""
        self.calls_in_flight.set(running)
        self.capacity.set(capacity)


def _remove(gauge: Gauge, *labels: str) -> None:
    # Gauge.remove raises KeyError for a series never set.
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


def _add_buckets(child: Histogram, buckets: list[int], total: float) -> None:
    # prometheus-client has no bulk observe: add the counts that consumers
    # gathered per bucket (same bounds) to the child's own per-bucket values.
    # Its buckets are stored non-cumulative, like ours.
    for value, n in zip(child._buckets, buckets, strict=True):
        if n:
            value.inc(n)
    child._sum.inc(total)


# -- exposition server -------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    """Request handler that leaves access logs to whoever scrapes."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """A running exposition server: a WSGI server in a daemon thread."""

    def __init__(self, httpd: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self._closed = False

    @property
    def port(self) -> int:
        """The TCP port bound (the one picked when 0 was asked for)."""
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port; blocks up to half a second."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    async def aclose(self) -> None:
        """Async ``close()``, run in a worker thread."""
        await anyio.to_thread.run_sync(self.close)


def start_server(
    registry: CollectorRegistry,
    host: str,
    port: int,
    wrap: Callable[[WSGIApplication], WSGIApplication] | None = None,
) -> MetricsServer:
    """Serve ``registry`` at ``/metrics`` on ``host:port`` from a daemon thread.

    Built like ``prometheus_client.start_http_server``, from its public pieces.
    ``wrap`` may put other routes (health probes) in front of the metrics app.

    Raises:
        OSError: the address cannot be resolved or bound.
    """
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class _Server(ThreadingWSGIServer):
        address_family = family

    app: WSGIApplication = _make_wsgi_app(registry)
    if wrap is not None:
        app = wrap(app)
    httpd = make_server(
        str(sockaddr[0]), port, app, _Server, handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=httpd.serve_forever, name="agentstream-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(httpd, thread)


# -- several worker processes --------------------------------------------------

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _KnownGaugeValues:
    """prometheus-client's multiprocess collector without NaN gauge samples.

    A process cannot remove a labelled gauge from its value file; it sets NaN
    instead (``record_group_stats`` for an unknown lag), meaning "no sample".
    """

    def __init__(self, path: str) -> None:
        self._inner = multiprocess.MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for metric in self._inner.collect():  # type: ignore[no-untyped-call]
            if metric.type == "gauge":
                metric.samples = [s for s in metric.samples if not math.isnan(s.value)]
            yield metric


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that sums what every process wrote into ``path``."""
    registry = CollectorRegistry()
    registry.register(_KnownGaugeValues(path))
    ProcessCollector(registry=registry)  # the parent process's own
    return registry


def mark_process_dead(pid: int, path: str) -> None:
    """Drop a dead process's live gauges (its counters keep counting in the sum)."""
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
