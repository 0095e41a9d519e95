"""App: handler registration and resolution (no Redis needed)."""

from __future__ import annotations

import pytest

from agentstream import App, Event, HandlerConflict


async def a(event: Event) -> None:
    """An async handler."""


def s(event: Event) -> None:
    """A sync handler."""


class TestRegistration:
    def test_async_and_sync_are_told_apart(self) -> None:
        """Async functions are marked async; plain functions run in threads."""
        app = App()
        app.handler("token")(a)
        app.handler("tool_call", "tool_result", stream="agent_output")(s)
        by_type = {h.event_type: h for h in app.handlers}
        assert by_type["token"].is_async
        assert not by_type["tool_call"].is_async
        assert by_type["tool_result"].stream == "agent_output"

    def test_duplicate_registration_is_a_clear_error(self) -> None:
        """Two handlers for one stream and type fail at import with both names."""
        app = App()
        app.handler("token")(a)
        with pytest.raises(
            HandlerConflict, match=r"'token' on any stream.*\.a and .*\.s"
        ):
            app.handler("token")(s)

    def test_same_type_on_another_stream_is_fine(self) -> None:
        """A stream-specific handler may coexist with an any-stream one."""
        app = App()
        app.handler("token")(a)
        app.handler("token", stream="other")(s)
        assert len(app.handlers) == 2

    def test_empty_type_list_is_rejected(self) -> None:
        """app.handler() needs at least one non-empty type."""
        with pytest.raises(ValueError, match="at least one"):
            App().handler()
        with pytest.raises(ValueError, match="non-empty"):
            App().handler("")


class TestResolve:
    def test_order_of_precedence(self) -> None:
        """Stream handler, then any-stream, then stream '*', then any-stream '*'."""
        app = App()
        app.handler("t", stream="s1")(a)
        app.handler("t")(s)
        app.handler("*", stream="s2")(a)
        app.handler("*")(s)
        assert app.resolve("s1", "t").func is a  # type: ignore[union-attr]
        assert app.resolve("s2", "t").func is s  # type: ignore[union-attr]
        assert app.resolve("s2", "x").func is a  # type: ignore[union-attr]
        assert app.resolve("s3", "x").func is s  # type: ignore[union-attr]

    def test_nothing_matches(self) -> None:
        """Without a '*' handler an unknown type resolves to None."""
        app = App()
        app.handler("t")(a)
        assert app.resolve("s", "other") is None

    def test_registration_after_resolve_is_seen(self) -> None:
        """The resolution cache is dropped when a handler is added."""
        app = App()
        assert app.resolve("s", "t") is None
        app.handler("t")(a)
        assert app.resolve("s", "t") is not None
