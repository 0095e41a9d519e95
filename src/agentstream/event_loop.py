"""The asyncio event loop the worker runs on: uvloop where it is installed.

uvloop (libuv under asyncio's interface) takes less CPU per socket round trip
and per callback than the stdlib's selector loop; anyio runs on it
(``backend_options={"use_uvloop": True}``). The ``event_loop`` setting picks:
``auto`` (uvloop when importable, else asyncio), ``uvloop`` (required) or
``asyncio``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

__all__ = [
    "EventLoopChoice",
    "backend_options",
    "running_loop_name",
    "uvloop_import_error",
    "uvloop_installed",
]

#: The values of the ``event_loop`` setting.
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def uvloop_import_error() -> str | None:
    """Why ``uvloop`` cannot be imported (not installed, or broken: a missing
    shared library, a build for another Python), or None when it can."""
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        return str(exc) or type(exc).__name__
    return None


def uvloop_installed() -> bool:
    """Whether the ``uvloop`` package can be imported."""
    return uvloop_import_error() is None


def backend_options(choice: EventLoopChoice) -> dict[str, Any]:
    """anyio's asyncio backend options for ``choice``.

    Raises:
        ModuleNotFoundError: ``choice`` is ``"uvloop"`` and it cannot be
            imported (the settings refuse that value already, see `Settings`).
    """
    if choice == "asyncio":
        return {}
    if choice == "uvloop" and not uvloop_installed():
        raise ModuleNotFoundError(
            f"event_loop = 'uvloop': uvloop cannot be imported: {uvloop_import_error()}"
        )
    return {"use_uvloop": choice == "uvloop" or uvloop_installed()}


def running_loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop running the calling task."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
