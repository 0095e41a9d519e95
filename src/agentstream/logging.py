"""Structured logging set-up: JSON lines off a terminal, readable lines on one."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
import structlog.tracebacks

from .config import LogSettings

__all__ = ["configure_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process.

    Context bound with `structlog.contextvars` is merged into every event.
    Levels below ``settings.level`` are dropped before any processing. Calling
    it again replaces the configuration for loggers created afterwards.

    Args:
        settings: the level and format to use.
        stream: where lines are written; standard output by default.
    """
    out = sys.stdout if stream is None else stream
    tty = _isatty(out)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.format == "json" or (settings.format == "auto" and not tty):
        processors += [
            # Locals stay out of tracebacks: they hold passwords and event data.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        # no colour escapes when the console format is forced into a file or pipe
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=tty, exception_formatter=structlog.dev.plain_traceback
            )
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        context_class=dict,
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty(), or a closed stream
        return False
