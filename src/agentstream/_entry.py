"""The console scripts' entry points: Ctrl-C at any moment exits 130, quietly.

The interpreter turns SIGINT into ``KeyboardInterrupt`` wherever the program is,
also while it imports the package (a few hundred milliseconds on a cold disk),
before any handler of ours could catch it. Hence this module: the package's
``__init__`` imports nothing heavy (its names load on first use), so the
``try`` below is in force from the first moments on.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: importing typing takes time
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["admin", "worker"]

_INTERRUPTED = 130  # agentstream.exit_codes.EXIT_INTERRUPTED, not imported yet


def admin() -> NoReturn:
    """``agentstream``: the operator command."""
    _run("agentstream.admin", "run_admin")


def worker() -> NoReturn:
    """``agentstream-worker`` (``worker_main`` exits on time even while sync
    handler threads still run past the shutdown deadline)."""
    _run("agentstream.cli", "worker_main")


def _run(module: str, function: str) -> NoReturn:
    try:
        import importlib

        status = getattr(importlib.import_module(module), function)()
    except KeyboardInterrupt:
        status = _INTERRUPTED
    sys.exit(status)
