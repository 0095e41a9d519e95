"""The asyncio event loop the worker runs on: uvloop where it is installed.

uvloop (libuv under asyncio's interface) takes less CPU per socket round trip
and per callback than the stdlib's selector loop; anyio runs on it
(``backend_options={"use_uvloop": True}``). The ``event_loop`` setting picks:
``auto`` (uvloop when importable, else asyncio), ``uvloop`` (required) or
``asyncio``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any, Literal

__all__ = [
    "EventLoopChoice",
    "backend_options",
    "running_loop_name",
    "uvloop_installed",
]

#: The values of the ``event_loop`` setting.
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def uvloop_installed() -> bool:
    """Whether the ``uvloop`` package can be imported."""
    return importlib.util.find_spec("uvloop") is not None


def backend_options(choice: EventLoopChoice) -> dict[str, Any]:
    """anyio's asyncio backend options for ``choice``.

    Raises:
        ModuleNotFoundError: ``choice`` is ``"uvloop"`` and it is not installed
            (the settings refuse that value already, see `Settings`).
    """
    if choice == "asyncio":
        return {}
    if choice == "uvloop" and not uvloop_installed():
        raise ModuleNotFoundError("event_loop = 'uvloop' needs the uvloop package")
    return {"use_uvloop": choice == "uvloop" or uvloop_installed()}


def running_loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop running the calling task."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
