"""``agentstream web``: serve the console with uvicorn."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from agentstream.admin._common import err
from agentstream.admin.web.app import create_app
from agentstream.admin.web.security import check_bind, load_credentials
from agentstream.config import Settings, redact_url
from agentstream.errors import ConfigError
from agentstream.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_STARTUP
from agentstream.logging import configure_logging

__all__ = ["serve"]

log = structlog.get_logger("agentstream.web")


class _Server(uvicorn.Server):
    """uvicorn's server, but a stop on SIGTERM or SIGINT exits 0.

    uvicorn raises the caught signal again after its graceful shutdown, so the
    process would end killed by SIGTERM; the worker exits 0 there, and so do we.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self.handle_exit) for s in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve the console until SIGTERM or Ctrl-C; returns the exit status.

    ``host`` and ``port`` override ``web.host`` and ``web.port``. Exits 78
    (configuration error) for a non-loopback address without credentials or an
    unreadable credentials file, and 3 when the port cannot be bound.
    """
    web = settings.web
    host = web.host if host is None else host
    port = web.port if port is None else port
    try:
        credentials = load_credentials(web)
        check_bind(host, credentials)
    except ConfigError as exc:
        err(f"agentstream: configuration error: {exc}")
        return EXIT_CONFIG
    configure_logging(settings.log)
    app = create_app(settings, credentials)
    auth = "token" if credentials.token else "basic" if credentials.users else "none"
    log.info(
        "web_starting",
        host=host,
        port=port,
        redis=redact_url(settings.redis.url),
        auth=auth,
        read_only=web.read_only,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
    )
    server = _Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        return EXIT_OK
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind
        return EXIT_STARTUP if exc.code else EXIT_OK
    if not server.started:
        err(f"agentstream: cannot serve the console on {host}:{port}")
        return EXIT_STARTUP
    return EXIT_OK
