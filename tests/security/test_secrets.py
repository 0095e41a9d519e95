"""Secrets: the Redis password never shows in anything the worker or the CLI writes.

The worker runs against a password-protected redis-server with the password
from ``redis.password``, from ``redis.password_file`` and in the URL, at
``log.level = "debug"``, and is made to fail on purpose: a handler raising an
error that quotes its event, a malformed entry, Redis killed mid-run, a wrong
password, ``--check``. Every output is searched for the password (and for a
fragment of it, URL-quoted or not): logs, ``--check`` output, ``/metrics``,
``/healthz``, ``/readyz``, error lines, and the dead letters' stored errors.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from security_harness import (
    CLI,
    E2E,
    WORKER,
    dead_letters,
    one_error_line,
    publish_raw,
    run,
    scrape,
    wait_until,
    worker_env,
    xadd_events,
)

from redis_server import RedisServer

pytestmark = [pytest.mark.security, pytest.mark.redis]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_START = 3

#: A fragment no output may hold; the whole password has URL-special characters.
NEEDLE = "Zk9S3cr3tQ"
PASSWORD = f"{NEEDLE}/p@ss:w0rd%+7f"
WRONG_PASSWORD = "Wr0ngW9uEss/p@ss"
WRONG_NEEDLE = "Wr0ngW9uEss"

APP_MODULE = "secrets_app"
APP_SOURCE = '''\
"""Handlers for the secrets tests; they record handled events in Redis."""

import os

import redis

from agentstream import App, Event

app = App()
_client = redis.Redis.from_url(os.environ["TEST_REDIS_URL"], socket_timeout=5)
_prefix = os.environ["TEST_KEY_PREFIX"]


@app.handler("ok")
async def on_ok(event: Event) -> None:
    _client.hincrby(f"{_prefix}handled", str(event.data["n"]), 1)


@app.handler("explode")
async def on_explode(event: Event) -> None:
    raise RuntimeError(f"cannot handle {event!r}")


@app.handler("leaky")
async def on_leaky(event: Event) -> None:
    # A handler that opens a connection of its own, with the URL in a local.
    url = os.environ["TEST_REDIS_URL"]
    raise ConnectionError(f"gave up on {event.type} after using {len(url)} bytes")
'''


def _leaks(text: str, *needles: str) -> list[str]:
    """The lines of ``text`` that hold one of ``needles`` (URL-quoted or not)."""
    forms = {form for n in needles for form in (n, quote(n, safe=""))}
    return [line for line in text.splitlines() if any(f in line for f in forms)]


def _assert_clean(what: str, text: str, *needles: str) -> None:
    leaked = _leaks(text, *(needles or (NEEDLE,)))
    assert not leaked, f"{what} shows the password:\n" + "\n".join(leaked[:5])


@pytest.fixture(name="server", scope="module")
def _server(
    tmp_path_factory: pytest.TempPathFactory, redis_server_bin: str
) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("secret-redis"), password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="e2e")
def _e2e(server: RedisServer, tmp_path: Path, stream_name: str) -> Iterator[E2E]:
    e2e = E2E(tmp_path / "e2e", server.url, stream_name)
    (e2e.dir / f"{APP_MODULE}.py").write_text(APP_SOURCE, encoding="utf-8")
    try:
        yield e2e
    finally:
        e2e.close()


def _plain_url(server: RedisServer) -> str:
    return f"redis://{server.host}:{server.port}/0"


def _redis_settings(
    e2e: E2E, server: RedisServer, source: str, password: str
) -> dict[str, Any]:
    """``[redis]`` giving ``password`` through ``source``."""
    if source == "password":
        return {"url": _plain_url(server), "password": password}
    if source == "password_file":
        path = e2e.dir / "redis-password"
        path.write_text(password + "\n", encoding="utf-8")
        return {"url": _plain_url(server), "password_file": str(path)}
    assert source == "url"
    quoted = quote(password, safe="")
    return {"url": f"redis://:{quoted}@{server.host}:{server.port}/0"}


def _config(e2e: E2E, redis_settings: dict[str, Any]) -> Path:
    return e2e.write_config(
        {
            "app": f"{APP_MODULE}:app",
            "redis": redis_settings,
            "metrics": {"enabled": True, "port": 0},
            "log": {"level": "debug", "format": "json"},
            "reaper": {
                "interval_s": 0.1,
                "min_idle_ms": 200,
                "max_backoff_ms": 400,
                "max_deliveries": 2,
            },
        }
    )


def _env(e2e: E2E) -> dict[str, str]:
    return worker_env(e2e.redis_url, e2e.key_prefix)


def _handled(e2e: E2E) -> Callable[[], set[str]]:
    def handled() -> set[str]:
        raw: dict[Any, Any] = e2e.client.hgetall(f"{e2e.key_prefix}handled")
        return {k.decode() for k in raw}

    return handled


SOURCES = ["password", "password_file", "url"]


@pytest.mark.parametrize("source", SOURCES)
def test_worker_outputs_never_show_the_password(
    e2e: E2E, server: RedisServer, source: str
) -> None:
    """Through --check, handling, a failing handler, a malformed entry, Redis killed and back, and shutdown, no output shows the password."""
    config = _config(e2e, _redis_settings(e2e, server, source, PASSWORD))
    outputs: dict[str, str] = {}

    check = run(
        [WORKER, "--config", str(config), "--check"], cwd=e2e.dir, env=_env(e2e)
    )
    assert check.returncode == EXIT_OK, check.stderr
    outputs["--check"] = check.stdout + check.stderr

    worker = e2e.start(config)
    try:
        port = int(worker.wait_for_log("metrics_serving", 20)["port"])
        worker.wait_for_log("worker_started", 20)
        handled = _handled(e2e)
        xadd_events(e2e.client, e2e.stream, "ok", [{"n": i} for i in range(5)])
        xadd_events(e2e.client, e2e.stream, "explode", [{"n": "x"}])
        publish_raw(e2e.client, e2e.stream, {"type": "ok", "data": "[1, 2]"})
        wait_until(
            lambda: (
                handled() >= {"0", "1", "2", "3", "4"}
                and len(dead_letters(e2e.client, e2e.dlq)) == 2
            ),
            20,
            "5 handled, 2 dead letters",
            worker,
        )
        for path in ("/metrics", "/healthz", "/readyz"):
            outputs[path] = scrape(port, path)[1]

        server.kill()
        worker.wait_for_log("redis_unavailable", 20)
        status, outputs["/readyz down"] = scrape(port, "/readyz")
        assert status == 503
        server.start()
        worker.wait_for_log("redis_available", 30)
        xadd_events(e2e.client, e2e.stream, "ok", [{"n": "after"}])
        wait_until(lambda: "after" in handled(), 30, "handled after restart", worker)
        outputs["/metrics after"] = scrape(port, "/metrics")[1]

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == EXIT_OK, worker.tail()
    finally:
        if not server.is_running():
            server.start()
        worker.close()
    outputs["stdout"] = worker.stdout()
    outputs["stderr"] = worker.stderr()
    outputs["dead letters"] = repr(dead_letters(e2e.client, e2e.dlq))

    assert any(r.get("event") == "handler_failed" for r in worker.logs())
    for what, text in outputs.items():
        _assert_clean(what, text)


@pytest.mark.parametrize("source", SOURCES)
def test_wrong_password_is_refused_without_showing_it(
    e2e: E2E, server: RedisServer, source: str, tmp_path: Path
) -> None:
    """A wrong password gives exit 3 (worker, --check) and 1 (CLI) with one line that shows neither password."""
    config = _config(e2e, _redis_settings(e2e, server, source, WRONG_PASSWORD))
    for argv, expected in (
        ([WORKER, "--config", str(config)], EXIT_START),
        ([WORKER, "--config", str(config), "--check"], EXIT_START),
        ([CLI, "--config", str(config), "stats"], EXIT_FAILED),
    ):
        proc = run(argv, cwd=e2e.dir, env=_env(e2e))
        assert proc.returncode == expected, proc.stderr
        line = one_error_line(proc)
        assert "refused the credentials" in line, line
        _assert_clean(f"{argv[-1]} stderr", proc.stderr, NEEDLE, WRONG_NEEDLE)
        _assert_clean(f"{argv[-1]} stdout", proc.stdout, NEEDLE, WRONG_NEEDLE)


def test_missing_password_names_the_setting(e2e: E2E, server: RedisServer) -> None:
    """No password for a Redis that needs one: one line naming redis.password_file."""
    config = _config(e2e, {"url": _plain_url(server)})
    for argv, expected in (
        ([WORKER, "--config", str(config)], EXIT_START),
        ([WORKER, "--config", str(config), "--check"], EXIT_START),
        ([CLI, "--config", str(config), "stats"], EXIT_FAILED),
    ):
        proc = run(argv, cwd=e2e.dir, env=_env(e2e))
        assert proc.returncode == expected, proc.stderr
        line = one_error_line(proc)
        assert "requires a password and none was given" in line, line
        assert "redis.password_file" in line, line
        assert "HELLO" not in line, line


def test_check_with_unreachable_redis_does_not_show_the_password(
    e2e: E2E, server: RedisServer
) -> None:
    """--check against a closed port fails in one line that holds no password from the URL."""
    settings = _redis_settings(e2e, server, "url", PASSWORD)
    settings["url"] = settings["url"].replace(f":{server.port}/", ":1/")
    settings["socket_connect_timeout_s"] = 1.0
    config = _config(e2e, settings)
    proc = run([WORKER, "--config", str(config), "--check"], cwd=e2e.dir, env=_env(e2e))
    assert proc.returncode == EXIT_START
    assert "cannot reach Redis at 127.0.0.1:1" in one_error_line(proc)
    _assert_clean("--check", proc.stdout + proc.stderr)


@pytest.mark.parametrize("how", ["crash on a bad URL port", "handler with a local"])
def test_logged_tracebacks_never_show_the_password(
    e2e: E2E, server: RedisServer, how: str
) -> None:
    """Tracebacks in the logs (a worker crash, a failing handler) show no password held in a local variable."""
    settings = _redis_settings(e2e, server, "url", PASSWORD)
    if how == "crash on a bad URL port":
        settings["url"] = settings["url"].replace(f":{server.port}/", ":99999/")
        status, worker = e2e.run(["--config", str(_config(e2e, settings))])
        assert status != EXIT_OK
    else:
        worker = e2e.start(_config(e2e, settings))
        worker.wait_for_log("worker_started", 20)
        xadd_events(e2e.client, e2e.stream, "leaky", [{"n": "l"}])
        worker.wait_for_log("handler_failed", 20)
        worker.terminate()
        worker.wait(15)
    _assert_clean("stdout", worker.stdout())
    _assert_clean("stderr", worker.stderr())
