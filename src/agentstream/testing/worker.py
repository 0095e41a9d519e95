"""Run an ``App`` in-process against a real Redis; publish, drain, see what became of each event.

The worker is the real one (the supervisor, its consumers and reaper), with
settings that make retries quick; each handler call is recorded as it returns
or raises, and an event's final state is read from Redis: acknowledged,
dead-lettered, or still pending.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import redis.exceptions
from prometheus_client import CollectorRegistry

from agentstream.app import App, Handler
from agentstream.config import Settings, SubscriptionSettings
from agentstream.errors import DeadLetter, Retry
from agentstream.event import Event
from agentstream.transport.pool import (
    AsyncClient,
    RedisConnectionPool,
    pool_from_settings,
)
from agentstream.transport.redis_stream import RedisStreamTransport
from agentstream.worker.supervisor import Supervisor

__all__ = [
    "CallOutcome",
    "HandlerCall",
    "NotDrained",
    "Outcome",
    "RunningWorker",
    "Status",
    "run_worker",
    "worker_settings",
]

#: What one handler call did.
CallOutcome = Literal["ok", "retry", "dead_letter", "failed", "cancelled"]
#: Where an event is now: ``unread`` means no consumer of the group read it yet.
Status = Literal["acked", "dead_lettered", "pending", "unread"]

#: Settings that keep a test short: a failed event is retried within ~0.1 s,
#: dead-lettered after ``max_deliveries`` within a second or two; one consumer,
#: so events are handled in stream order; no metrics server.
TEST_DEFAULTS: Mapping[str, Any] = {
    "consumers": 1,
    "block_ms": 500,
    "ack_interval_ms": 10,
    "handler_timeout_s": 30.0,
    "shutdown_timeout_s": 5.0,
    "name_prefix": "test",
    "reaper": {"interval_s": 0.05, "min_idle_ms": 100, "max_backoff_ms": 400},
    "metrics": {"enabled": False},
}


class NotDrained(AssertionError):
    """``drained()`` timed out: some events are still unread or pending."""


@dataclass(frozen=True, slots=True)
class HandlerCall:
    """One call of a handler: the event as delivered, and what the handler did.

    ``cancelled`` is an async handler stopped by ``handler_timeout_s`` or a
    forced shutdown; ``error`` is the exception raised (None for ``ok``).
    """

    handler: str
    event: Event
    outcome: CallOutcome
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one event: its status in Redis and every handler call.

    ``dead_letter_reason`` is the ``DeadLetter`` reason, ``max_deliveries``,
    ``malformed`` or ``unhandled``; ``dead_letter_error`` the recorded error.
    """

    id: str
    stream: str
    status: Status
    calls: tuple[HandlerCall, ...]
    dead_letter_reason: str | None = None
    dead_letter_error: str | None = None

    @property
    def acked(self) -> bool:
        """Acknowledged without a dead letter (handled, or unhandled and acked)."""
        return self.status == "acked"

    @property
    def dead_lettered(self) -> bool:
        """Moved to the dead-letter stream."""
        return self.status == "dead_lettered"

    @property
    def retried(self) -> bool:
        """Handled more than once (a failure, timeout or ``Retry`` came first)."""
        return len(self.calls) > 1


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def worker_settings(
    redis_url: str, streams: Sequence[str], **overrides: Any
) -> Settings:
    """Settings for a test worker: :data:`TEST_DEFAULTS` under ``overrides``.

    ``overrides`` are ``Settings`` fields; a nested dict is merged into the
    section (``reaper={"max_deliveries": 2}`` keeps the other reaper defaults).

    Raises:
        pydantic.ValidationError: an override is not a valid setting.
    """
    values = _merge(
        TEST_DEFAULTS,
        {
            "redis": {"url": redis_url},
            "subscriptions": [{"stream": s} for s in streams],
        },
    )
    return Settings(**_merge(values, overrides))


def _recorder(handler: Handler, calls: list[HandlerCall]) -> Callable[[Event], Any]:
    func, name = handler.func, handler.name

    def record(event: Event, outcome: CallOutcome, error: BaseException | None) -> None:
        # list.append is atomic: sync handlers record from worker threads.
        calls.append(HandlerCall(name, event, outcome, error))

    def classify(event: Event, exc: BaseException) -> None:
        if isinstance(exc, DeadLetter):
            record(event, "dead_letter", exc)
        elif isinstance(exc, Retry):
            record(event, "retry", exc)
        elif isinstance(exc, Exception):
            record(event, "failed", exc)
        else:
            record(event, "cancelled", None)

    if handler.is_async:

        @functools.wraps(func)
        async def run_async(event: Event) -> None:
            try:
                await func(event)
            except BaseException as exc:
                classify(event, exc)
                raise
            record(event, "ok", None)

        return run_async

    @functools.wraps(func)
    def run_sync(event: Event) -> None:
        try:
            func(event)
        except BaseException as exc:
            classify(event, exc)
            raise
        record(event, "ok", None)

    return run_sync


def recording_app(app: App, calls: list[HandlerCall]) -> App:
    """A copy of ``app`` whose handlers append a :class:`HandlerCall` to ``calls``."""
    copy = App()
    for handler in app.handlers:
        register = copy.handler(handler.event_type, stream=handler.stream or None)
        register(_recorder(handler, calls))
    return copy


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class RunningWorker:
    """A worker running in this process; made by :func:`run_worker`.

    Attributes:
        settings: the worker's settings.
        supervisor: the running ``Supervisor`` (its consumers, reapers).
        calls: every handler call so far, in the order they ended.
    """

    def __init__(
        self, settings: Settings, supervisor: Supervisor, pool: RedisConnectionPool
    ) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.calls: list[HandlerCall] = []
        self._pool = pool
        self._client: AsyncClient = pool.get_async_client()
        self._raw_client: AsyncClient = pool.get_raw_async_client()
        self._publishers: dict[str, RedisStreamTransport] = {}
        #: Whether the worker stopped (the block ended, or it crashed).
        self.stopped = False
        #: The exception that stopped the worker, if it crashed.
        self.failure: BaseException | None = None

    def _subscription(self, stream: str | None) -> SubscriptionSettings:
        subs = self.settings.subscriptions
        if stream is None:
            if len(subs) > 1:
                names = ", ".join(s.stream for s in subs)
                raise ValueError(f"several streams ({names}): pass stream=")
            return subs[0]
        for sub in subs:
            if sub.stream == stream:
                return sub
        raise ValueError(f"the worker does not read stream {stream!r}")

    async def publish(
        self,
        event_type: str,
        data: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        *,
        stream: str | None = None,
    ) -> str:
        """Publish an event (``XADD``, the wire format); return its entry id.

        ``stream`` may be left out when the worker reads one stream only.
        """
        sub = self._subscription(stream)
        publisher = self._publishers.get(sub.stream)
        if publisher is None:
            publisher = await RedisStreamTransport.aopen(
                sub.stream, consumer_group=sub.group, pool=self._pool
            )
            self._publishers[sub.stream] = publisher
        return await publisher.apublish(
            event_type, dict(data), None if metadata is None else dict(metadata)
        )

    async def publish_raw(
        self, fields: Mapping[str, str | bytes], *, stream: str | None = None
    ) -> str:
        """``XADD`` these fields as they are (a malformed entry, a foreign producer)."""
        sub = self._subscription(stream)
        entry_id: Any = await self._client.xadd(sub.stream, dict(fields))  # type: ignore[arg-type]
        return str(entry_id)

    async def drained(self, timeout_s: float = 10.0) -> None:
        """Wait until every event in the streams is acknowledged or dead-lettered.

        That is: each group has read its stream to the end and holds no pending
        entry; retries and dead letters done by the reaper included.

        Raises:
            NotDrained: not so within ``timeout_s``; says what is left.
            RuntimeError: the worker stopped.
        """
        deadline = anyio.current_time() + timeout_s
        while True:
            if self.stopped:
                raise RuntimeError(
                    "the worker stopped; nothing more will drain"
                ) from self.failure
            left = [await self._left(sub) for sub in self.settings.subscriptions]
            if not any(left):
                return
            if anyio.current_time() >= deadline:
                raise NotDrained(
                    f"not drained within {timeout_s}s: " + "; ".join(filter(None, left))
                )
            await anyio.sleep(0.02)

    async def _left(self, sub: SubscriptionSettings) -> str:
        """What of ``sub`` is not done, in words; "" when drained."""
        try:
            # Raw: the reply holds the first and last entries, maybe not UTF-8.
            stream_info: Any = await self._raw_client.xinfo_stream(sub.stream)
            groups: Any = await self._client.xinfo_groups(sub.stream)
        except redis.exceptions.ResponseError:  # no stream: nothing published
            return ""
        group = next((g for g in groups if g["name"] == sub.group), None)
        last_id = stream_info["last-generated-id"].decode()  # keys are decoded
        if group is None:
            return f"{sub.stream}: group {sub.group!r} not created yet"
        unread = _id_key(group["last-delivered-id"]) < _id_key(last_id)
        if not unread and group["pending"] == 0:
            return ""
        return f"{sub.stream}: {group['pending']} pending" + (
            f", unread after {group['last-delivered-id']}" if unread else ""
        )

    def calls_of(self, entry_id: str) -> list[HandlerCall]:
        """The handler calls of one event, in order."""
        return [c for c in self.calls if c.event.id == entry_id]

    async def outcome(self, entry_id: str, *, stream: str | None = None) -> Outcome:
        """What became of one event, read from Redis now (call ``drained()`` first)."""
        sub = self._subscription(stream)
        calls = tuple(self.calls_of(entry_id))
        client = self._client
        # Raw bytes: a dead letter keeps the original fields, which may not be UTF-8.
        dead: Any = await self._raw_client.xrange(sub.dead_letter_key)
        for _, raw_fields in dead:
            fields = {
                k.decode(errors="replace"): v.decode(errors="replace")
                for k, v in raw_fields.items()
                if k.startswith(b"dlq_")
            }
            if (
                fields.get("dlq_id") == entry_id
                and fields.get("dlq_stream") == sub.stream
            ):
                return Outcome(
                    entry_id,
                    sub.stream,
                    "dead_lettered",
                    calls,
                    fields.get("dlq_reason"),
                    fields.get("dlq_error"),
                )
        pending: Any = await client.xpending_range(
            sub.stream, sub.group, min=entry_id, max=entry_id, count=1
        )
        if pending:
            return Outcome(entry_id, sub.stream, "pending", calls)
        groups: Any = await client.xinfo_groups(sub.stream)
        group = next((g for g in groups if g["name"] == sub.group), None)
        read = group is not None and _id_key(entry_id) <= _id_key(
            group["last-delivered-id"]
        )
        return Outcome(entry_id, sub.stream, "acked" if read else "unread", calls)

    async def aclose(self) -> None:
        """Close the connections of the test's own client and publishers."""
        for publisher in self._publishers.values():
            await publisher.aclose()
        await self._pool.aclose()


@asynccontextmanager
async def run_worker(
    app: App,
    redis_url: str | None = None,
    *,
    streams: Sequence[str] | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningWorker]:
    """Run ``app`` in this process until the block ends; yield the running worker.

    Either ``redis_url`` (with ``streams`` and setting ``overrides``, see
    :func:`worker_settings`) or complete ``settings``. ``streams`` defaults to
    those the app's handlers name with ``stream=``. The block starts once the
    worker's consumers run; leaving it stops the worker gracefully (in-flight
    handlers finish, acknowledgements are flushed). Needs the asyncio backend.

    Raises:
        ValueError: no stream to subscribe to, or both settings and a URL.
        agentstream.errors.StartupError: Redis refused the credentials or ACL.
    """
    if settings is None:
        if redis_url is None:
            raise ValueError("run_worker() needs redis_url or settings")
        names = list(streams) if streams is not None else sorted(app.streams())
        if not names:
            raise ValueError("name the streams to read: run_worker(..., streams=[...])")
        settings = worker_settings(redis_url, names, **overrides)
    elif redis_url is not None or streams is not None or overrides:
        raise ValueError("pass settings alone, or redis_url, streams and overrides")
    calls: list[HandlerCall] = []
    supervisor = Supervisor(
        settings,
        recording_app(app, calls),
        handle_signals=False,
        registry=CollectorRegistry(),
    )
    pool = pool_from_settings(settings.redis, socket_timeout_s=30.0, max_connections=8)
    worker = RunningWorker(settings, supervisor, pool)
    worker.calls = calls

    async def run() -> None:
        try:
            await supervisor.run()
        except Exception as exc:  # noqa: BLE001 - raised to the test below
            worker.failure = exc
        finally:
            worker.stopped = True

    try:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                while not supervisor.started.is_set() and not worker.stopped:  # noqa: ASYNC110 - started or crashed
                    await anyio.sleep(0.01)
                if not worker.stopped:
                    try:
                        yield worker
                    finally:
                        supervisor.stop()
        except BaseExceptionGroup as group:
            # The test's own exception (an assert), not wrapped by the task group.
            raise _single(group) from None
        if worker.failure is not None:
            raise worker.failure
        if not supervisor.started.is_set():
            raise RuntimeError("the worker stopped before it started")
    finally:
        with anyio.CancelScope(shield=True):
            await worker.aclose()


def _single(exc: BaseException) -> BaseException:
    """The single exception inside nested task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
