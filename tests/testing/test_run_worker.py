"""run_worker(): an App in-process against a real server; outcomes read back from Redis."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from agentstream import App, DeadLetter, Event, Retry
from agentstream.errors import StartupError
from agentstream.testing import NotDrained, RedisServer, run_worker
from agentstream.testing.pytest_plugin import RedisServerFactory

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def _failing(times: int, exc: Callable[[], Exception] = RuntimeError) -> App:
    """An app whose ``job`` handler raises ``exc()`` on its first ``times`` calls."""
    app = App()
    calls = 0

    @app.handler("job")
    async def job(event: Event) -> None:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise exc()

    return app


class TestOutcomes:
    async def test_handled_event_is_acked_and_its_call_recorded(
        self, redis_url: str, stream_name: str
    ) -> None:
        """An event whose handler returns is acked; the call carries the event."""
        app = App()

        @app.handler("token")
        async def on_token(event: Event) -> None: ...

        async with run_worker(app, redis_url, streams=[stream_name]) as worker:
            entry_id = await worker.publish("token", {"token": "hi"}, {"run": "r1"})
            await worker.drained()
            outcome = await worker.outcome(entry_id)

        assert (outcome.status, outcome.acked, outcome.retried) == (
            "acked",
            True,
            False,
        )
        [call] = outcome.calls
        assert (call.outcome, call.error) == ("ok", None)
        assert call.handler.endswith("on_token")
        assert (call.event.type, call.event.data, call.event.metadata) == (
            "token",
            {"token": "hi"},
            {"run": "r1"},
        )

    async def test_dead_letter_is_reported_with_its_reason(
        self, redis_url: str, stream_name: str
    ) -> None:
        """A sync handler raising DeadLetter: dead-lettered at once with its reason."""
        app = App()

        @app.handler("tool_call")
        def on_tool(event: Event) -> None:
            raise DeadLetter("tool_call without name")

        async with run_worker(app, redis_url, streams=[stream_name]) as worker:
            entry_id = await worker.publish("tool_call", {})
            await worker.drained()
            outcome = await worker.outcome(entry_id)

        assert outcome.dead_lettered
        assert outcome.dead_letter_reason == "tool_call without name"
        assert [c.outcome for c in outcome.calls] == ["dead_letter"]

    async def test_failure_then_success_is_retried_and_acked(
        self, redis_url: str, stream_name: str
    ) -> None:
        """A handler that fails once, and raises Retry once, is acked on the third try."""
        app = App()
        outcomes = iter([RuntimeError("flaky"), Retry()])

        @app.handler("job")
        async def job(event: Event) -> None:
            exc = next(outcomes, None)
            if exc is not None:
                raise exc

        async with run_worker(app, redis_url, streams=[stream_name]) as worker:
            entry_id = await worker.publish("job", {})
            await worker.drained()
            outcome = await worker.outcome(entry_id)

        assert (outcome.acked, outcome.retried) == (True, True)
        assert [c.outcome for c in outcome.calls] == ["failed", "retry", "ok"]
        assert isinstance(outcome.calls[0].error, RuntimeError)
        assert [c.event.delivery_count for c in outcome.calls] == [1, 2, 3]

    async def test_always_failing_ends_as_max_deliveries(
        self, redis_url: str, stream_name: str
    ) -> None:
        """After reaper.max_deliveries failed calls, the reaper dead-letters it."""
        app = _failing(times=100)

        async with run_worker(
            app, redis_url, streams=[stream_name], reaper={"max_deliveries": 2}
        ) as worker:
            entry_id = await worker.publish("job", {})
            await worker.drained()
            outcome = await worker.outcome(entry_id)

        assert outcome.dead_letter_reason == "max_deliveries"
        assert outcome.dead_letter_error is not None
        assert "RuntimeError" in outcome.dead_letter_error
        assert [c.outcome for c in outcome.calls] == ["failed", "failed"]

    async def test_malformed_entry_is_dead_lettered_without_a_call(
        self, redis_url: str, stream_name: str
    ) -> None:
        """publish_raw() writes any fields; an entry with no type never reaches a handler."""
        app = App()

        @app.handler("*")
        async def anything(event: Event) -> None: ...

        async with run_worker(app, redis_url, streams=[stream_name]) as worker:
            no_type = await worker.publish_raw({"data": "{}"})
            not_utf8 = await worker.publish_raw({"type": "t", "data": b"\xff\xfe"})
            await worker.drained()
            outcomes = [await worker.outcome(i) for i in (no_type, not_utf8)]

        assert [(o.dead_letter_reason, o.calls) for o in outcomes] == [
            ("malformed", ()),
            ("malformed", ()),
        ]
        assert "UTF-8" in (outcomes[1].dead_letter_error or "")

    async def test_streams_default_to_those_the_handlers_name(
        self, redis_url: str, stream_name: str
    ) -> None:
        """Without streams=, the worker reads the streams named by stream=."""
        app = App()

        @app.handler("token", stream=stream_name)
        async def on_token(event: Event) -> None: ...

        async with run_worker(app, redis_url) as worker:
            assert [s.stream for s in worker.settings.subscriptions] == [stream_name]
            entry_id = await worker.publish("token", {})
            await worker.drained()
            assert (await worker.outcome(entry_id)).acked


class TestDraining:
    async def test_not_drained_names_what_is_left(
        self, redis_url: str, stream_name: str
    ) -> None:
        """drained() raises NotDrained while a handler holds an event, then returns."""
        app = App()
        release = anyio.Event()

        @app.handler("slow")
        async def slow(event: Event) -> None:
            await release.wait()

        async with run_worker(app, redis_url, streams=[stream_name]) as worker:
            entry_id = await worker.publish("slow", {})
            with pytest.raises(NotDrained, match=f"{stream_name}: 1 pending"):
                await worker.drained(timeout_s=0.3)
            assert (await worker.outcome(entry_id)).status == "pending"
            release.set()
            await worker.drained()
            assert (await worker.outcome(entry_id)).acked

    async def test_an_assertion_in_the_block_is_not_wrapped(
        self, redis_url: str, stream_name: str
    ) -> None:
        """A failing assert inside the block surfaces as itself, not an ExceptionGroup."""
        with pytest.raises(AssertionError, match="the test's own"):
            async with run_worker(App(), redis_url, streams=[stream_name]):
                raise AssertionError("the test's own")

    async def test_refused_credentials_fail_at_start(
        self, redis_factory: RedisServerFactory, stream_name: str
    ) -> None:
        """A worker Redis refuses raises StartupError from the async with."""
        server = redis_factory(password="right")
        url = server.url.replace(":right@", ":wrong@")

        with pytest.raises(StartupError):
            async with run_worker(App(), url, streams=[stream_name]):
                pytest.fail("the block must not run")

    async def test_needs_a_stream(self, redis_url: str) -> None:
        """An app that names no stream, without streams=, is a clear error."""
        with pytest.raises(ValueError, match="streams="):
            async with run_worker(App(), redis_url):
                pass


async def test_runs_over_a_unix_socket(
    redis_factory: RedisServerFactory, stream_name: str
) -> None:
    """A unix_socket server takes no TCP port; the worker reaches it by unix://."""
    server: RedisServer = redis_factory(unix_socket=True)
    assert server.url.startswith("unix://") and server.port == 0
    app = _failing(times=0)

    async with run_worker(app, server.url, streams=[stream_name]) as worker:
        entry_id = await worker.publish("job", {})
        await worker.drained()
        assert (await worker.outcome(entry_id)).acked
