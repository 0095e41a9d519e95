"""Tests for agentstream.logging."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from agentstream.config import LogSettings
from agentstream.logging import _Handler, configure_logging


@pytest.fixture(name="reset_structlog", autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)


def _records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_context() -> None:
    """Each event is one JSON object with its level, time and bound context."""
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)
    log = structlog.get_logger()

    with structlog.contextvars.bound_contextvars(stream="s", msg_id="1-0"):
        log.info("message_acked", handler="h")

    [record] = _records(out)
    assert record["event"] == "message_acked"
    assert record["level"] == "info"
    assert record["stream"] == "s"
    assert record["msg_id"] == "1-0"
    assert record["handler"] == "h"
    assert "timestamp" in record


def test_debug_dropped_at_info() -> None:
    """At level info, debug events are not written."""
    out = io.StringIO()
    configure_logging(LogSettings(level="info", format="json"), stream=out)
    log = structlog.get_logger()

    log.debug("noisy")
    log.info("kept")

    assert [r["event"] for r in _records(out)] == ["kept"]


def test_auto_is_json_off_a_terminal() -> None:
    """The auto format writes JSON lines to a stream that is not a TTY."""
    out = io.StringIO()
    configure_logging(LogSettings(level="debug"), stream=out)

    structlog.get_logger().debug("consumer_started")

    assert _records(out)[0]["event"] == "consumer_started"


def test_json_traceback_is_structured() -> None:
    """An exception is logged as structured data inside the JSON line."""
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)

    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger().exception("handler_failed")

    [record] = _records(out)
    assert record["exception"][0]["exc_type"] == "ValueError"


def test_console_format_and_reconfiguring() -> None:
    """The console format writes readable lines; configuring again takes effect."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogSettings(format="json"), stream=first)
    configure_logging(LogSettings(format="console"), stream=second)

    structlog.get_logger().warning("redis_unreachable", attempt=2)

    assert first.getvalue() == ""
    line = second.getvalue()
    assert "redis_unreachable" in line
    assert "attempt=2" in line
    assert "\x1b[" not in line  # no colours off a terminal


def test_every_line_names_its_logger() -> None:
    """structlog lines carry the logger's name in a ``logger`` field."""
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)

    structlog.get_logger("agentstream.monitor").info("metrics_serving")
    structlog.get_logger().info("anonymous")

    assert [r["logger"] for r in _records(out)] == ["agentstream.monitor", "root"]


def test_stdlib_logging_becomes_json_lines() -> None:
    """A handler's or library's logging call is a JSON line like any other."""
    out = io.StringIO()
    configure_logging(LogSettings(format="json", level="info"), stream=out)
    stdlib = logging.getLogger("myapp.tools")

    with structlog.contextvars.bound_contextvars(msg_id="1-0"):
        stdlib.info("calling %s", "get_weather")
    stdlib.debug("dropped at info")
    try:
        raise KeyError("city")
    except KeyError:
        stdlib.exception("tool failed")

    records = _records(out)  # every line is JSON
    assert [r["event"] for r in records] == ["calling get_weather", "tool failed"]
    assert records[0]["logger"] == "myapp.tools"
    assert records[0]["level"] == "info"
    assert records[0]["msg_id"] == "1-0"
    assert records[1]["exception"][0]["exc_type"] == "KeyError"


def test_reconfiguring_keeps_one_stdlib_handler() -> None:
    """Configuring twice leaves one handler: stdlib lines are not doubled."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogSettings(format="json"), stream=first)
    configure_logging(LogSettings(format="json"), stream=second)

    logging.getLogger("lib").warning("once")

    assert first.getvalue() == ""
    assert [r["event"] for r in _records(second)] == ["once"]
