"""Ordering keys: which events of a stream must not overlap in a process."""

from __future__ import annotations

from typing import Any

from agentstream.app import App, OrderKey
from agentstream.event import Event

__all__ = ["dotted_key", "order_key_of"]


def dotted_key(path: str) -> OrderKey:
    """The key function of a dotted path such as ``"data.run_id"``.

    The first part names the event's ``data`` or ``metadata`` object, the others
    nested keys. A string or integer found there is the key; anything else (a
    missing key, null, a float, an object) means no key: the event runs
    unordered.
    """
    root, *parts = path.split(".")

    def key(event: Event) -> str | None:
        value: Any = event.data if root == "data" else event.metadata
        for part in parts:
            if type(value) is not dict:
                return None
            value = value.get(part)
        if type(value) is str:
            return value
        if type(value) is int:
            return str(value)
        return None

    return key


def order_key_of(path: str | None, app: App) -> OrderKey | None:
    """A subscription's key function: its ``order_key`` path, else the App's."""
    if path is not None:
        return dotted_key(path)
    return app.order_key
