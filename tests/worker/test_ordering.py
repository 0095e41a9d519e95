"""Ordering keys: the dotted path of a subscription, or the App's function."""

from __future__ import annotations

from typing import Any

import pytest

from agentstream import App, Event
from agentstream.worker.ordering import dotted_key, order_key_of


def _event(data: dict[str, Any], metadata: dict[str, Any] | None = None) -> Event:
    return Event("1-0", "s", "t", 0.0, data, metadata or {})


class TestDottedKey:
    @pytest.mark.parametrize(
        ("path", "data", "metadata", "key"),
        [
            ("data.run_id", {"run_id": "r1"}, None, "r1"),
            ("data.run_id", {"run_id": 7}, None, "7"),
            ("data.a.b", {"a": {"b": "deep"}}, None, "deep"),
            ("metadata.conversation", {}, {"conversation": "c"}, "c"),
            ("data.run_id", {}, None, None),
            ("data.run_id", {"run_id": None}, None, None),
            ("data.run_id", {"run_id": 1.5}, None, None),
            ("data.run_id", {"run_id": {"x": 1}}, None, None),
            ("data.a.b", {"a": "not an object"}, None, None),
            ("data.run_id", {"run_id": True}, None, None),
        ],
    )
    def test_key_or_none(
        self,
        path: str,
        data: dict[str, Any],
        metadata: dict[str, Any] | None,
        key: str | None,
    ) -> None:
        """Strings and integers are keys; anything else means the event runs unordered."""
        assert dotted_key(path)(_event(data, metadata)) == key


def test_subscription_path_wins_over_the_app_function() -> None:
    """A subscription's order_key is used for its stream; else the App's function."""
    app = App(order_key=lambda e: "from-app")
    event = _event({"run_id": "from-path"})
    by_path = order_key_of("data.run_id", app)
    by_app = order_key_of(None, app)
    assert by_path is not None and by_path(event) == "from-path"
    assert by_app is not None and by_app(event) == "from-app"
    assert order_key_of(None, App()) is None
