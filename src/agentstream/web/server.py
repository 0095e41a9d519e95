"""``agentstream web``: serve the console with uvicorn."""

from __future__ import annotations

import structlog
import uvicorn

from agentstream.admin._common import err
from agentstream.config import Settings, redact_url
from agentstream.errors import ConfigError
from agentstream.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_STARTUP
from agentstream.logging import configure_logging
from agentstream.web.app import create_app
from agentstream.web.security import check_bind, load_credentials

__all__ = ["serve"]

log = structlog.get_logger("agentstream.web")


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
    server = uvicorn.Server(config)
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
