"""Wait for a condition instead of sleeping and hoping: sync and async polling."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["await_for", "wait_for"]


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.01,
    message: str = "",
) -> None:
    """Poll *predicate* until it is true; raise AssertionError after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


async def await_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    # Mirrors wait_for(); raising AssertionError is the point, not fail_after's
    # TimeoutError.
    timeout: float,  # noqa: ASYNC109
    interval: float = 0.01,
    message: str = "",
) -> None:
    """Async :func:`wait_for`; *predicate* may be sync or return an awaitable."""
    deadline = anyio.current_time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if anyio.current_time() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await anyio.sleep(interval)
