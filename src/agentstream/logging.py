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
    """Configure structlog, and the standard library's logging, for the process.

    Context bound with `structlog.contextvars` is merged into every event.
    Levels below ``settings.level`` are dropped before any processing. Records
    of the standard library's ``logging`` (from handlers and libraries) go
    through structlog's ``ProcessorFormatter`` to the same stream in the same
    format; every line has a ``logger`` field (the logger's name). Calling it
    again replaces the configuration for loggers created afterwards.

    Args:
        settings: the level and format to use.
        stream: where lines are written; standard output by default.
    """
    out = sys.stdout if stream is None else stream
    tty = _isatty(out)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render: list[structlog.typing.Processor]
    if settings.format == "json" or (settings.format == "auto" and not tty):
        render = [
            # Locals stay out of tracebacks: they hold passwords and event data.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
    else:
        # no colour escapes when the console format is forced into a file or pipe
        render = [
            structlog.dev.ConsoleRenderer(
                colors=tty, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    level = _LEVELS[settings.level]
    structlog.configure(
        processors=[*shared, _add_logger_name, *render],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
        logger_factory=_NamedWriteLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(out, level, shared, render)


class _NamedWriteLogger(structlog.WriteLogger):
    """A ``WriteLogger`` that knows the name it was asked for."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: object) -> _NamedWriteLogger:
        # structlog.get_logger("agentstream.monitor") passes the name here.
        name = args[0] if args and isinstance(args[0], str) else "root"
        return _NamedWriteLogger(self._file, name)


def _add_logger_name(
    logger: object, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    event_dict.setdefault("logger", getattr(logger, "name", "root"))
    return event_dict


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler this module installs on the root logger (replaced on reconfigure)."""


def _route_stdlib_logging(
    out: TextIO,
    level: int,
    shared: list[structlog.typing.Processor],
    render: list[structlog.typing.Processor],
) -> None:
    handler = _Handler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *render,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty(), or a closed stream
        return False
