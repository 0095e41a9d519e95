"""Ctrl-C during a one-shot command, as a cancelled anyio scope.

The operator commands and ``agentstream-worker --check`` run under
:func:`until_interrupted`.

asyncio's own handler cancels the main task once. redis-py can swallow that one
cancellation: on Python 3.11 it sends each command under ``asyncio.wait_for``,
which drops a cancellation that lands as the send completes (CPython gh-86296),
and the command then waits out the socket timeout. An anyio scope stays
cancelled until the task leaves it, so the next wait is cut short too.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.abc

__all__ = ["until_interrupted"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def until_interrupted(work: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """Return ``await work(*args)``; the first SIGINT cancels it.

    Raises:
        KeyboardInterrupt: SIGINT arrived before ``work`` finished.
        Exception: whatever ``work`` raised, as itself (not in a group).
    """
    result: list[T] = []
    with anyio.CancelScope() as scope:
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(_cancel_on_interrupt, scope)
                result.append(await work(*args))
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # What ``work`` raised, as itself (the watcher raises nothing).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from group.exceptions[0].__cause__
            raise
    if not result:
        raise KeyboardInterrupt
    return result[0]


async def _cancel_on_interrupt(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    if threading.current_thread() is not threading.main_thread():
        task_status.started()  # signals go to the main thread only
        return
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return
