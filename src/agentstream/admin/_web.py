"""``agentstream web``: start the web console, or say which extra it needs."""

from __future__ import annotations

import argparse

from agentstream.admin._common import err
from agentstream.config import Settings
from agentstream.exit_codes import EXIT_CRASH

#: The modules the console needs beyond the core dependencies.
_WEB_MODULES = ("starlette", "uvicorn", "jinja2", "multipart")


def run_web(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the console until Ctrl-C or SIGTERM; returns the exit status."""
    try:
        for name in _WEB_MODULES:
            __import__(name)
    except ImportError as exc:
        err(
            f"agentstream: the web console needs the 'web' extra ({exc.name} is "
            "missing): pip install 'agentstream[web]'"
        )
        return EXIT_CRASH
    # Imported here: the console is optional, and web/ builds on admin/.
    from agentstream.admin.web.server import serve

    return serve(settings, host=args.host, port=args.port)
