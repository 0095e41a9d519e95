"""ACL: the worker and the operator CLI as least-privilege Redis users.

The users are those of ``acl_rules`` (``ACL SETUSER`` issued by the test as the
password-protected default user). Every path of the worker runs under the worker
user with ``ACL LOG`` staying empty; the read-only user runs ``stats`` and the
reading commands; a missing permission is reported in one line naming it.
"""

from __future__ import annotations

import itertools
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from acl_rules import (
    OPERATOR_COMMANDS,
    OPERATOR_RULES,
    OPERATOR_USER,
    ORDERED_COMMANDS,
    READONLY_COMMANDS,
    READONLY_RULES,
    READONLY_USER,
    WORKER_COMMANDS,
    WORKER_RULES,
    WORKER_USER,
    setuser_line,
)
from security_harness import (
    CLI,
    E2E,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_START,
    GROUP,
    WORKER,
    WorkerProcess,
    dead_letters,
    one_error_line,
    pending_count,
    publish_raw,
    run,
    scrape,
    wait_until,
    without_target,
    worker_env,
    xadd_events,
)

import agentstream.cli
from agentstream.admin import run_admin
from agentstream.cli import run_worker
from agentstream.testing import RedisServer
from agentstream.transport.keys import errors_key, lease_key, pause_key
from agentstream.worker.consumer import RETRY_CONSUMER

pytestmark = [pytest.mark.security, pytest.mark.redis]

ADMIN_PASSWORD = "acl-admin-Pw-5b1e"
WORKER_PASSWORD = "acl-worker-Pw-97c2"
READONLY_PASSWORD = "acl-readonly-Pw-0d4a"
OPERATOR_PASSWORD = "acl-operator-Pw-3f81"
README = Path(__file__).resolve().parents[2] / "README.md"

_users = itertools.count()


@pytest.fixture(name="server", scope="module")
def _server(
    tmp_path_factory: pytest.TempPathFactory, redis_server_bin: str
) -> Iterator[RedisServer]:
    """A redis-server whose default user needs a password, with the two users."""
    with (
        RedisServer(
            tmp_path_factory.mktemp("acl-redis"),
            password=ADMIN_PASSWORD,
            executable=redis_server_bin,
        ) as server,
        redis.Redis.from_url(server.url) as admin,
    ):
        _setuser(admin, WORKER_USER, WORKER_RULES, WORKER_PASSWORD)
        _setuser(admin, READONLY_USER, READONLY_RULES, READONLY_PASSWORD)
        _setuser(admin, OPERATOR_USER, OPERATOR_RULES, OPERATOR_PASSWORD)
        yield server


@pytest.fixture(name="admin")
def _admin(server: RedisServer) -> Iterator[redis.Redis]:
    """The default (all-powerful) user; ACL LOG is reset for each test."""
    client = redis.Redis.from_url(server.url)
    _acl(client, "LOG", "RESET")
    yield client
    client.close()


@pytest.fixture(name="stream")
def _stream(stream_name: str) -> str:
    """A stream name the users' key pattern ``agent_output*`` covers."""
    return "agent_output:" + stream_name


def _acl(client: redis.Redis, *args: str) -> Any:
    """Run ``ACL <args>`` (redis-py's execute_command has no type hints)."""
    return client.execute_command("ACL", *args)  # type: ignore[no-untyped-call]


def _setuser(
    admin: redis.Redis, user: str, rules: Sequence[str], password: str
) -> None:
    """``ACL SETUSER``, plus ``+client|setinfo`` where the server knows it.

    redis-py sends CLIENT SETINFO on connect (Redis 7.2+, Valkey); a refusal is
    harmless but lands in ACL LOG. Redis 7.0 rejects the rule: found by asking.
    """
    try:
        _acl(admin, "SETUSER", user, *rules, "+client|setinfo", f">{password}")
    except redis.ResponseError as exc:
        if "unknown command" not in str(exc).lower():
            raise
        _acl(admin, "SETUSER", user, *rules, f">{password}")


def _denials(admin: redis.Redis, user: str) -> list[dict[str, Any]]:
    """ACL LOG entries of ``user``: what Redis refused it."""
    entries: list[Any] = _acl(admin, "LOG", "128")
    found = []
    for entry in entries:
        fields = {
            (k.decode() if isinstance(k, bytes) else k): (
                v.decode() if isinstance(v, bytes) else v
            )
            for k, v in (entry.items() if isinstance(entry, dict) else _pairs(entry))
        }
        # redis-py sends CLIENT SETINFO on connect and ignores a refusal; Redis
        # 7.2+ and Valkey log it (README: add +client|setinfo to keep it quiet).
        if fields.get("username") == user and fields.get("object") != "client|setinfo":
            found.append(fields)
    return found


def _pairs(flat: list[Any]) -> Iterator[tuple[Any, Any]]:
    it = iter(flat)
    return zip(it, it, strict=True)


def _user_config(
    e2e: E2E, server: RedisServer, user: str, password: str, overrides: dict[str, Any]
) -> Path:
    """The e2e config logging in as ``user``, its password in a file."""
    secret = e2e.dir / f"{user}.password"
    secret.write_text(password + "\n", encoding="utf-8")
    redis_settings = {
        "url": f"redis://{server.host}:{server.port}/0",
        "username": user,
        "password_file": str(secret),
    }
    return e2e.write_config({"redis": redis_settings, **overrides})


def _env(e2e: E2E) -> dict[str, str]:
    """The environment of a worker run on ``e2e`` (its app records there)."""
    return worker_env(e2e.redis_url, e2e.key_prefix)


def _cli_config(path: Path, server: RedisServer, stream: str, user: str) -> Path:
    path.write_text(
        f'[redis]\nurl = "redis://{server.host}:{server.port}/0"\n'
        f'username = "{user}"\npassword = "{READONLY_PASSWORD}"\n'
        f'[[subscriptions]]\nstream = "{stream}"\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(name="e2e_factory")
def _e2e_factory(
    tmp_path: Path, server: RedisServer, stream: str
) -> Iterator[Callable[[], E2E]]:
    made: list[E2E] = []

    def factory() -> E2E:
        e2e = E2E(tmp_path / f"e2e-{len(made)}", server.url, stream)
        made.append(e2e)
        return e2e

    try:
        yield factory
    finally:
        for e2e in made:
            e2e.close()


#: ``restricted("+xclaim")``: a worker user with every rule of WORKER_RULES but
#: that one, and the e2e run and config logging in as it: (e2e, config, user).
#: ``restricted("")``: one with all of them.
Restricted = Callable[[str], tuple[E2E, Path, str]]


@pytest.fixture(name="restricted")
def _restricted(
    admin: redis.Redis, server: RedisServer, e2e_factory: Callable[[], E2E]
) -> Restricted:
    def make(without: str) -> tuple[E2E, Path, str]:
        assert not without or without in WORKER_RULES
        user = f"worker-without-{without.strip('+').replace('|', '-')}-{next(_users)}"
        rules = [rule for rule in WORKER_RULES if rule != without]
        _setuser(admin, user, rules, WORKER_PASSWORD)
        e2e = e2e_factory()
        return e2e, _user_config(e2e, server, user, WORKER_PASSWORD, {}), user

    return make


def _stderr_line(worker: WorkerProcess) -> str:
    lines = [line for line in worker.stderr().splitlines() if line.strip()]
    assert len(lines) == 1, worker.tail()
    return lines[0]


def _named(line: str) -> set[str]:
    """The commands a refusal line names (before Redis's own words)."""
    return set(re.findall(r"'([a-z_|]+)'", line.split("(first refusal")[0]))


class TestWorkerUser:
    def test_every_worker_path_runs_under_the_worker_user(
        self,
        admin: redis.Redis,
        server: RedisServer,
        e2e_factory: Callable[[], E2E],
    ) -> None:
        """The worker user runs --check, handling, retries, dead letters, leases, claims, lost entries, metrics and shutdown with ACL LOG empty."""
        e2e = e2e_factory()
        config = _user_config(
            e2e,
            server,
            WORKER_USER,
            WORKER_PASSWORD,
            {
                "unhandled": "dead_letter",
                "handler_timeout_s": 1.0,
                "metrics": {"enabled": True, "port": 0},
                "reaper": {
                    "interval_s": 0.1,
                    "min_idle_ms": 300,
                    "max_backoff_ms": 600,
                    "max_deliveries": 3,
                    "consumer_ttl_s": 0.5,
                },
            },
        )
        check = run(
            [WORKER, "--config", str(config), "--check"], cwd=e2e.dir, env=_env(e2e)
        )
        assert check.returncode == EXIT_OK, check.stderr
        worker = e2e.start(config)
        port = int(worker.wait_for_log("metrics_serving", 20)["port"])
        worker.wait_for_log("worker_started", 20)

        client = e2e.client
        xadd_events(client, e2e.stream, "ok", [{"n": i} for i in range(10)])
        xadd_events(client, e2e.stream, "fail", [{"n": "f1"}, {"n": "lost"}])
        xadd_events(client, e2e.stream, "retry", [{"n": "r1"}])
        xadd_events(client, e2e.stream, "dead", [{"n": "d1"}])
        # held for 1 s: its lease is renewed every 100 ms meanwhile
        xadd_events(client, e2e.stream, "slow", [{"n": "s1", "s": 1.0}])
        xadd_events(client, e2e.stream, "hang", [{"n": "h1"}])
        xadd_events(client, e2e.stream, "no-such-type", [{"n": "u1"}])
        publish_raw(client, e2e.stream, {"type": "ok", "data": b"\xff\xfe"})

        # "lost": its data goes away while it waits for a retry
        wait_until(lambda: bool(e2e.recorder.deliveries("lost")), 20, "lost read")
        lost_id = e2e.recorder.deliveries("lost")[0]["id"]

        def parked() -> bool:
            rows: Any = client.xpending_range(
                e2e.stream, GROUP, lost_id, lost_id, 1, RETRY_CONSUMER
            )
            return bool(rows)

        wait_until(parked, 20, "lost parked for a retry", worker)
        client.xdel(e2e.stream, lost_id)

        def settled() -> bool:
            reasons = sorted(d["dlq_reason"] for d in dead_letters(client, e2e.dlq))
            handled = e2e.recorder.handled()
            return (
                reasons == ["malformed", "max_deliveries", "nope", "unhandled"]
                and {"r1", "s1", "h1", *map(str, range(10))} <= handled.keys()
                and pending_count(client, e2e.stream) == 0
            )

        wait_until(settled, 30, "every path settled", worker)
        worker.wait_for_log("event_lost", 10)
        worker.wait_for_log("consumers_removed", 10)
        wait_until(
            lambda: scrape(port, "/readyz")[0] == 200,
            10,
            "ready: group stats readable",
            worker,
        )
        status, metrics = scrape(port, "/metrics")
        assert status == 200 and "agentstream_group_pending" in metrics

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == EXIT_OK, worker.tail()
        assert "Traceback" not in worker.stdout() + worker.stderr()
        assert not [r for r in worker.logs() if r.get("event") == "redis_unavailable"]
        assert _denials(admin, WORKER_USER) == []

    def test_missing_startup_permission_exits_3_with_one_line(
        self, restricted: Restricted
    ) -> None:
        """A worker user without XGROUP CREATE cannot start: exit 3, one line naming the command."""
        e2e, config, _ = restricted("+xgroup|create")
        status, worker = e2e.run(["--config", str(config)], timeout=30)
        assert status == EXIT_START, worker.tail()
        line = _stderr_line(worker)
        assert line.startswith("agentstream-worker: cannot start:"), line
        assert "no permissions" in line and _named(line) == {"xgroup|create"}, line
        assert "Traceback" not in worker.stdout() + worker.stderr()

    def test_start_names_every_missing_permission(
        self, admin: redis.Redis, server: RedisServer, e2e_factory: Callable[[], E2E]
    ) -> None:
        """Two rules missing (one used only inside a Lua script): the worker names both at start, before it creates anything."""
        user = f"worker-two-missing-{next(_users)}"
        rules = [r for r in WORKER_RULES if r not in ("+hsetnx", "+xgroup|delconsumer")]
        _acl(admin, "SETUSER", user, *rules, f">{WORKER_PASSWORD}")
        e2e = e2e_factory()
        config = _user_config(e2e, server, user, WORKER_PASSWORD, {})
        status, worker = e2e.run(["--config", str(config)], timeout=30)
        assert status == EXIT_START, worker.tail()
        line = _stderr_line(worker)
        assert _named(line) == {"hsetnx", "xgroup|delconsumer"}, line
        assert f"on {e2e.stream}:errors:{GROUP}" in line, line
        assert not e2e.client.exists(e2e.stream), "the check created the stream"

    def test_missing_run_time_permission_is_logged_and_loses_nothing(
        self,
        admin: redis.Redis,
        restricted: Restricted,
    ) -> None:
        """XCLAIM revoked while the worker runs: it keeps running, logs one error line about xclaim, and the failed event stays pending."""
        e2e, config, user = restricted("")
        worker = e2e.start(config)
        worker.wait_for_log("worker_started", 20)
        _acl(admin, "SETUSER", user, "-xclaim")
        xadd_events(e2e.client, e2e.stream, "fail", [{"n": "f1"}])
        record = worker.wait_for_log(
            lambda r: r.get("level") == "error" and "xclaim" in str(r.get("error")),
            20,
        )
        assert "exception" not in record, record
        assert "run the 'xclaim' command" in record["error"], record
        # the other consumers go on handling events
        xadd_events(e2e.client, e2e.stream, "ok", [{"n": "ok1"}])
        wait_until(lambda: "ok1" in e2e.recorder.handled(), 20, "ok1 handled", worker)
        # f1 stays pending (refused its retry parking): nothing is lost
        wait_until(
            lambda: pending_count(e2e.client, e2e.stream) == 1,
            10,
            "only f1 pending",
            worker,
        )
        assert worker.is_running(), worker.tail()
        worker.terminate()
        assert worker.wait(15) == EXIT_OK, worker.tail()
        assert "Traceback" not in worker.stdout() + worker.stderr()
        assert {d["object"] for d in _denials(admin, user)} == {"xclaim"}

    @pytest.mark.parametrize(
        ("revoked", "event_type"),
        [
            ("xclaim", "fail"),  # in the Lua script that parks a retry
            ("xreadgroup", "ok"),  # top level
            ("xadd", "dead"),  # the dead-letter script's XADD (refusal returned)
            ("xack", "dead"),  # the dead-letter script, before its XADD
            ("hset", "fail"),  # a pipeline: the error record
        ],
    )
    def test_run_time_permission_error_names_the_command(
        self,
        admin: redis.Redis,
        restricted: Restricted,
        revoked: str,
        event_type: str,
    ) -> None:
        """A permission revoked at run time is logged as redis_permission_denied naming the command, even inside a Lua script; nothing is lost."""
        e2e, config, user = restricted("")
        worker = e2e.start(config)
        worker.wait_for_log("worker_started", 20)
        _acl(admin, "SETUSER", user, f"-{revoked}")
        xadd_events(e2e.client, e2e.stream, event_type, [{"n": "e1"}])
        record = worker.wait_for_log(
            lambda r: r.get("event") == "redis_permission_denied", 20
        )
        worker.terminate()
        worker.wait(15)
        assert record["command"] == revoked, record
        assert f"denied {revoked}:" in record["error"], record
        assert f"'{revoked}'" in record["error"], record
        assert not [r for r in worker.logs() if r.get("event") == "redis_unavailable"]
        assert "Traceback" not in worker.stdout() + worker.stderr()
        if revoked != "xreadgroup":  # read, so pending or dead-lettered once
            assert e2e.client.xlen(e2e.dlq) + pending_count(e2e.client, e2e.stream) >= 1

    @pytest.mark.parametrize("without", ["+evalsha", "+set"])
    def test_missing_lease_permission_exits_3_with_one_line(
        self, restricted: Restricted, without: str
    ) -> None:
        """A worker user that cannot run the name-lease script cannot start: exit 3, one line, no traceback."""
        e2e, config, _ = restricted(without)
        status, worker = e2e.run(["--config", str(config)], timeout=30)
        assert "Traceback" not in worker.stdout() + worker.stderr()
        assert not [r for r in worker.logs() if "exception" in r], worker.tail()
        assert status == EXIT_START, worker.tail()
        lines = [line for line in worker.stderr().splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot start" in lines[0], worker.tail()


CHECK_APP = """\
from agentstream import App

app = App()


@app.handler("ok")
def ok(event):
    return None
"""


def _in_process_check(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ready ``run_worker(["--check", ...])`` in this process, with the app in
    ``directory``; logging is left as it is (--check prints, and configuring
    it would point every later test's log lines at capsys' closed stream)."""
    (directory / "acl_check_app.py").write_text(CHECK_APP, encoding="utf-8")
    monkeypatch.chdir(directory)
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setattr(agentstream.cli, "configure_logging", lambda *_: None)


@pytest.fixture(name="check_config")
def _check_config(
    tmp_path: Path, server: RedisServer, stream: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Path]:
    """``check_config(user)``: every feature that needs a permission, database 1.

    Metrics on, an ordered subscription of two partitions beside a plain one,
    so that the worker needs every rule of WORKER_RULES and ORDERED_COMMANDS.
    """
    _in_process_check(tmp_path, monkeypatch)

    def write(user: str) -> Path:
        path = tmp_path / f"{user}.toml"
        path.write_text(
            'app = "acl_check_app:app"\n'
            f'[redis]\nurl = "redis://{server.host}:{server.port}/1"\n'
            f'username = "{user}"\npassword = "{WORKER_PASSWORD}"\n'
            "[metrics]\nenabled = true\nport = 0\n"
            f'[[subscriptions]]\nstream = "{stream}"\n'
            f'[[subscriptions]]\nstream = "{stream}:ordered"\n'
            "partitions = 2\nordered = true\n",
            encoding="utf-8",
        )
        return path

    return write


def _db1(server: RedisServer) -> redis.Redis:
    return redis.Redis(
        host=server.host, port=server.port, password=ADMIN_PASSWORD, db=1
    )


class TestCheck:
    def test_check_passes_under_the_rules_and_writes_nothing(
        self,
        admin: redis.Redis,
        server: RedisServer,
        check_config: Callable[[str], Path],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--check as a user with the README's worker and ordered rules: exit 0, ACL LOG empty, no key written."""
        user = f"worker-check-{next(_users)}"
        _acl(
            admin,
            "SETUSER",
            user,
            *WORKER_RULES,
            *ORDERED_COMMANDS,
            f">{WORKER_PASSWORD}",
        )
        with _db1(server) as db1:
            before = db1.dbsize()
            status = run_worker(["--config", str(check_config(user)), "--check"])
            out, err = capsys.readouterr()
            assert status == EXIT_OK, err
            assert "ACL ok" in out, out
            assert db1.dbsize() == before
        assert _denials(admin, user) == []

    @pytest.mark.parametrize(
        "without",
        # +info is optional: without it the worker warns once that it cannot
        # read maxmemory-policy, and runs.
        [r for r in (*WORKER_COMMANDS, *ORDERED_COMMANDS) if r != "+info"],
        ids=lambda rule: rule.strip("+"),
    )
    def test_check_names_each_missing_rule(
        self,
        admin: redis.Redis,
        check_config: Callable[[str], Path],
        capsys: pytest.CaptureFixture[str],
        without: str,
    ) -> None:
        """--check without one rule: exit 3, one line naming exactly that command."""
        user = f"worker-check-{next(_users)}"
        rules = [r for r in (*WORKER_RULES, *ORDERED_COMMANDS) if r != without]
        _acl(admin, "SETUSER", user, *rules, f">{WORKER_PASSWORD}")
        # SCRIPT LOAD is needed only on a server that lost its scripts
        _acl(admin, "LOG", "RESET")
        admin.script_flush()
        status = run_worker(["--config", str(check_config(user)), "--check"])
        _, err = capsys.readouterr()
        lines = err.splitlines()
        assert status == EXIT_START, err
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("agentstream-worker: redis check failed:"), err
        assert _named(lines[0]) == {without.removeprefix("+")}, err


def test_check_names_a_key_outside_the_pattern(
    admin: redis.Redis,
    server: RedisServer,
    tmp_path: Path,
    stream: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A dead_letter_stream the user's key pattern does not cover: --check names that key."""
    _in_process_check(tmp_path, monkeypatch)
    config = tmp_path / "worker.toml"
    config.write_text(
        'app = "acl_check_app:app"\n'
        f'[redis]\nurl = "redis://{server.host}:{server.port}/0"\n'
        f'username = "{WORKER_USER}"\npassword = "{WORKER_PASSWORD}"\n'
        f'[[subscriptions]]\nstream = "{stream}"\n'
        'dead_letter_stream = "elsewhere:dlq"\n',
        encoding="utf-8",
    )
    status = run_worker(["--config", str(config), "--check"])
    _, err = capsys.readouterr()
    assert status == EXIT_START, err
    # dead letters (XADD) and, with metrics on, its length (XLEN)
    assert "key 'elsewhere:dlq' (xadd), key 'elsewhere:dlq' (xlen)" in err, err
    assert "denies the ACL user 2 permission(s)" in err, err


@pytest.fixture(name="busy")
def _busy(admin: redis.Redis, stream: str) -> dict[str, str]:
    """A group with a pending entry, an unread one, and one dead letter."""
    admin.xgroup_create(stream, "agents", "0", mkstream=True)
    first = admin.xadd(stream, {"type": "token", "data": '{"token": "a"}'})
    admin.xreadgroup("agents", "worker-1", {stream: ">"}, count=1)
    admin.xadd(stream, {"type": "token", "data": '{"token": "b"}'})
    dlq_id = admin.xadd(
        f"{stream}:dlq",
        {
            "type": "tool_call",
            "data": '{"name": "x"}',
            "dlq_stream": stream,
            "dlq_id": first.decode() if isinstance(first, bytes) else str(first),
            "dlq_reason": "max_deliveries",
            "dlq_error": "KeyError: 'city'",
            "dlq_delivery_count": "5",
        },
    )
    return {"dlq": dlq_id.decode() if isinstance(dlq_id, bytes) else str(dlq_id)}


@pytest.fixture(name="readonly_config")
def _readonly_config(tmp_path: Path, server: RedisServer, stream: str) -> Path:
    """A CLI config logging in as the read-only user."""
    return _cli_config(tmp_path / "ro.toml", server, stream, READONLY_USER)


@pytest.fixture(name="readonly_cli")
def _readonly_cli(
    readonly_config: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """``readonly_cli("stats")``: the CLI in-process as the read-only user."""

    def run_cli(*argv: str) -> tuple[int, str, str]:
        status = run_admin(["--config", str(readonly_config), *argv])
        out, err = capsys.readouterr()
        return status, out, without_target(err)

    return run_cli


class TestReadOnlyUser:
    @pytest.mark.parametrize(
        "argv",
        [
            ["stats"],
            ["stats", "--json"],
            ["dlq", "list"],
            ["dlq", "show", "{dlq}"],
            ["tail", "{stream}", "--from", "0", "--count", "2"],
            ["pending", "list", "--json"],
            ["consumers", "list", "--json"],
        ],
        ids=[
            "stats",
            "stats-json",
            "dlq-list",
            "dlq-show",
            "tail",
            "pending",
            "consumers",
        ],
    )
    def test_reading_commands_work(
        self,
        admin: redis.Redis,
        readonly_cli: Callable[..., tuple[int, str, str]],
        stream: str,
        busy: dict[str, str],
        argv: list[str],
    ) -> None:
        """The read-only user runs stats, dlq list/show and tail with no refusal in ACL LOG."""
        args = [a.format(dlq=busy["dlq"], stream=stream) for a in argv]
        status, out, err = readonly_cli(*args)
        assert status == EXIT_OK, err
        assert "following" in err if argv[0] == "tail" else err == ""
        assert stream in out or busy["dlq"] in out or '"token"' in out, out
        assert _denials(admin, READONLY_USER) == []

    def test_purge_is_refused_in_one_line(
        self, readonly_config: Path, busy: dict[str, str], tmp_path: Path
    ) -> None:
        """`agentstream dlq purge --yes` as the read-only user exits 1 with one line naming XDEL."""
        argv = [CLI, "--config", str(readonly_config), "dlq", "purge", "--yes"]
        proc = run(argv, cwd=tmp_path, env={})
        assert proc.returncode == EXIT_FAILED, proc.stderr
        line = one_error_line(proc)
        assert line.startswith("agentstream: Redis at 127.0.0.1:"), line
        assert "denied xdel" in line and "no permissions" in line, line
        assert "'xdel'" in line, line

    @pytest.mark.parametrize(
        ("argv", "command"),
        [
            (["publish", "{stream}", "token", "{{}}"], "xadd"),
            # MULTI, or whatever redis-py sends first on that connection
            (["dlq", "replay", "--all"], r"[\w|]+"),
        ],
        ids=["publish", "replay"],
    )
    def test_writes_are_refused_in_one_line(
        self,
        admin: redis.Redis,
        readonly_cli: Callable[..., tuple[int, str, str]],
        stream: str,
        busy: dict[str, str],
        argv: list[str],
        command: str,
    ) -> None:
        """Writing commands as the read-only user exit 1 with one line naming the refused command; nothing changes."""
        before = (admin.xlen(stream), admin.xlen(f"{stream}:dlq"))
        status, out, err = readonly_cli(*[a.format(stream=stream) for a in argv])
        assert status == EXIT_FAILED, err
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("agentstream: "), err
        assert re.search(f"no permissions to run the '{command}' command", lines[0]), (
            err
        )
        assert (admin.xlen(stream), admin.xlen(f"{stream}:dlq")) == before

    def test_worker_cannot_start_as_the_read_only_user(
        self, server: RedisServer, e2e_factory: Callable[[], E2E]
    ) -> None:
        """The read-only user cannot run the worker: --check exits 3 with one line."""
        e2e = e2e_factory()
        config = _user_config(e2e, server, READONLY_USER, READONLY_PASSWORD, {})
        argv = [WORKER, "--config", str(config), "--check"]
        proc = run(argv, cwd=e2e.dir, env=_env(e2e))
        assert proc.returncode == EXIT_START, proc.stderr
        named = _named(one_error_line(proc))
        assert {"xgroup|create", "xreadgroup", "xack", "hset", "evalsha"} <= named


def test_setuser_lines_are_accepted_by_redis(admin: redis.Redis) -> None:
    """The documented ACL SETUSER lines parse in this Redis (they are what the README shows)."""
    for user, rules in ((WORKER_USER, WORKER_RULES), (READONLY_USER, READONLY_RULES)):
        line = setuser_line(f"{user}-doc", rules, "pw")
        assert line.startswith("ACL ")
        assert _acl(admin, *line.split()[1:]) in (b"OK", "OK")
        _acl(admin, "DELUSER", f"{user}-doc")


#: Every ``agentstream`` command but ``web``, and the rules of
#: OPERATOR_COMMANDS it needs (found by removing each: the others are not used
#: by it). Database 1, so that SELECT is needed; scripts flushed first, so that
#: SCRIPT LOAD is; the data is busy1's. No command needs +xrevrange (the web
#: console's: newest dead letters first, its tail page) and none +info
#: (optional for stats: test_stats_without_info_runs).
CLI_NEEDS: dict[str, tuple[list[str], set[str]]] = {
    # GET: the pause state
    "stats": (
        ["stats", "--json"],
        {
            "select", "time", "exists", "get", "xlen", "xpending", "xinfo|stream",
            "xinfo|groups", "xinfo|consumers", "xrange", "evalsha_ro", "script|load",
        },
    ),
    "dlq-list": (["dlq", "list"], {"select", "xrange"}),
    "dlq-show": (["dlq", "show", "{dlq}"], {"select", "xrange"}),
    "tail": (["tail", "{stream}", "--from", "0", "--count", "2"], {"select", "xread"}),
    "publish": (["publish", "{stream}", "token", "{{}}"], {"select", "xadd"}),
    "replay": (
        ["dlq", "replay", "{dlq}"],
        {
            "select", "xrange", "xadd", "xdel", "evalsha", "script|exists",
            "script|load", "evalsha_ro",
        },
    ),
    "purge": (["dlq", "purge", "--yes"], {"select", "xrange", "xdel"}),
    # XINFO GROUPS first: a missing group is listed as empty
    "pending-list": (["pending", "list"], {"select", "xinfo|groups", "xpending"}),
    # the entry's fields (XRANGE) and last error (HMGET)
    "pending-show": (
        ["pending", "show", "{first}"], {"select", "xpending", "xrange", "hmget"},
    ),
    "pending-claim": (["pending", "claim", "{first}"], {"select", "xclaim"}),
    "pending-ack": (["pending", "ack", "{first}", "--yes"], {"select", "xack"}),
    # PTTL only for consumers named like a worker's (worker-1: lease "worker")
    "consumers-list": (
        ["consumers", "list", "--json"],
        {"select", "xinfo|groups", "xinfo|consumers", "pttl"},
    ),
    # XINFO CONSUMERS at top level, then again in the Lua script that removes;
    # XGROUP DELCONSUMER only for a consumer that owns nothing (one that owns
    # entries is refused before the script)
    "consumers-remove": (
        ["consumers", "remove", "idle-0-0"],
        {"select", "xinfo|consumers", "evalsha", "script|load", "xgroup|delconsumer"},
    ),
    # SCAN for the name leases; PTTL only when it finds one
    "workers": (["workers", "--json"], {"select", "scan", "pttl", "xinfo|consumers"}),
    "group-reset": (
        ["group", "reset", "$", "--yes"], {"select", "xinfo|groups", "xgroup|setid"},
    ),
    # pause refuses a missing group (XINFO GROUPS); resume checks nothing
    "pause": (["pause"], {"select", "xinfo|groups", "set"}),
    "resume": (["resume", "--group", "standby"], {"select", "del"}),
}  # fmt: skip
_READING = (
    "stats", "dlq-list", "dlq-show", "tail",
    "pending-list", "pending-show", "consumers-list", "workers",
)  # fmt: skip
#: Documented rules no command needs (see CLI_NEEDS).
_NOT_BY_THE_CLI = {"info", "xrevrange"}

#: What a command changes in _state(): its keys, set to their values after it,
#: from busy1's ids. The other commands change nothing.
EFFECTS: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "publish": lambda _: {"length": 3},
    "replay": lambda _: {"length": 3, "dead_letters": 0},
    "purge": lambda _: {"dead_letters": 0},
    "pending-claim": lambda ids: {
        "pending": [(ids["first"], RETRY_CONSUMER)],
        "consumers": sorted([RETRY_CONSUMER, "idle-0-0", "worker-1"]),
    },
    "pending-ack": lambda _: {"pending": []},
    "consumers-remove": lambda _: {"consumers": ["worker-1"]},
    "group-reset": lambda ids: {"last_delivered": ids["second"]},
    "pause": lambda _: {"paused": ["agents", "standby"]},
    "resume": lambda _: {"paused": []},
}

#: What a command prints of busy1's data, from busy1's ids: proof that each
#: branch that needs a rule ran (the last error, the leases' PTTL).
SHOWS: dict[str, str] = {
    "pending-list": "{first}  worker-1",
    "pending-show": "last error      KeyError: 'city'",
    "consumers-list": '"worker": "worker", "stale": false',
    "workers": '"name": "worker", "lease_ms_left": ',
}


def test_the_rules_are_what_the_commands_need() -> None:
    """The operator's rules are what the commands need, the read-only user's
    what the reading ones need, each but _NOT_BY_THE_CLI."""
    needed = set().union(*(needs for _, needs in CLI_NEEDS.values()))
    assert needed == {r.removeprefix("+") for r in OPERATOR_COMMANDS} - _NOT_BY_THE_CLI
    reading = set().union(*(CLI_NEEDS[name][1] for name in _READING))
    assert reading == {r.removeprefix("+") for r in READONLY_COMMANDS} - _NOT_BY_THE_CLI


@pytest.fixture(name="busy1")
def _busy1(server: RedisServer, admin: redis.Redis, stream: str) -> dict[str, str]:
    """In database 1: group ``agents`` with an entry pending for ``worker-1``
    (its last error recorded, its worker's name lease held), an unread entry, a
    consumer ``idle-0-0`` that owns nothing, and a dead letter; a paused group
    ``standby``."""
    admin.script_flush()
    with _db1(server) as db1:
        db1.xgroup_create(stream, "agents", "0", mkstream=True)
        first = db1.xadd(stream, {"type": "token", "data": '{"token": "a"}'}).decode()
        db1.xreadgroup("agents", "worker-1", {stream: ">"}, count=1)
        second = db1.xadd(stream, {"type": "token", "data": '{"token": "b"}'})
        db1.xgroup_createconsumer(stream, "agents", "idle-0-0")
        db1.hset(errors_key(stream, "agents"), first, "KeyError: 'city'")
        db1.set(lease_key(stream, "agents", "worker"), "token", px=60_000)
        db1.xgroup_create(stream, "standby", "$")
        db1.set(pause_key(stream, "standby"), '{"by": "ops", "at": 0}')
        dlq_id = db1.xadd(
            f"{stream}:dlq",
            {
                "type": "token",
                "data": '{"token": "a"}',
                "dlq_stream": stream,
                "dlq_id": first,
                "dlq_reason": "max_deliveries",
                "dlq_error": "KeyError: 'city'",
                "dlq_delivery_count": "5",
            },
        )
    return {
        "dlq": dlq_id.decode(),
        "stream": stream,
        "first": first,
        "second": second.decode(),
    }


@pytest.fixture(name="cli_as")
def _cli_as(
    tmp_path: Path,
    server: RedisServer,
    stream: str,
    busy1: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> Callable[[str, str], tuple[int, str, str]]:
    """``cli_as(user, command)``: a CLI_NEEDS command in-process as ``user``."""

    def run_cli(user: str, command: str) -> tuple[int, str, str]:
        path = tmp_path / f"{user}.toml"
        path.write_text(
            f'[redis]\nurl = "redis://{server.host}:{server.port}/1"\n'
            f'username = "{user}"\npassword = "{OPERATOR_PASSWORD}"\n'
            f'[[subscriptions]]\nstream = "{stream}"\n',
            encoding="utf-8",
        )
        argv = [a.format(**busy1) for a in CLI_NEEDS[command][0]]
        status = run_admin(["--config", str(path), *argv])
        out, err = capsys.readouterr()
        return status, out, without_target(err)

    return run_cli


def _state(server: RedisServer, stream: str) -> dict[str, Any]:
    """What the commands may change in database 1: the lengths of the stream
    and its dead letters, group ``agents``'s pending entries (with owners),
    consumers and last-delivered id, and which groups are paused."""
    with _db1(server) as db1:
        groups = {g["name"].decode(): g for g in db1.xinfo_groups(stream)}
        pending = db1.xpending_range(stream, "agents", "-", "+", 10)
        return {
            "length": db1.xlen(stream),
            "dead_letters": db1.xlen(f"{stream}:dlq"),
            "pending": [(p["message_id"].decode(), p["consumer"].decode())
                        for p in pending],
            "consumers": sorted(c["name"].decode()
                                for c in db1.xinfo_consumers(stream, "agents")),
            "last_delivered": groups["agents"]["last-delivered-id"].decode(),
            "paused": [g for g in sorted(groups) if db1.exists(pause_key(stream, g))],
        }  # fmt: skip


class TestEveryCommand:
    @pytest.mark.parametrize("command", list(CLI_NEEDS))
    def test_operator_runs_every_command(
        self,
        admin: redis.Redis,
        server: RedisServer,
        stream: str,
        busy1: dict[str, str],
        cli_as: Callable[[str, str], tuple[int, str, str]],
        command: str,
    ) -> None:
        """Each command as the operator user: it works, does what it says, and ACL LOG stays empty."""
        before = _state(server, stream)
        status, out, err = cli_as(OPERATOR_USER, command)
        assert status == EXIT_OK, err
        assert "denied" not in out + err
        assert SHOWS.get(command, "").format(**busy1) in out, out
        change = EFFECTS[command](busy1) if command in EFFECTS else {}
        assert _state(server, stream) == before | change
        assert _denials(admin, OPERATOR_USER) == []

    @pytest.mark.parametrize(
        ("command", "without"),
        [
            (name, rule)
            for name, (_, needs) in CLI_NEEDS.items()
            for rule in sorted(needs)
        ],
    )
    def test_each_missing_rule_is_named(
        self,
        admin: redis.Redis,
        server: RedisServer,
        stream: str,
        cli_as: Callable[[str, str], tuple[int, str, str]],
        command: str,
        without: str,
    ) -> None:
        """A command as a user lacking one of its rules: exit 1, one line naming the refused command; nothing half done."""
        user = f"operator-without-{without.replace('|', '-')}-{next(_users)}"
        rules = [r for r in OPERATOR_RULES if r != f"+{without}"]
        _acl(admin, "SETUSER", user, *rules, f">{OPERATOR_PASSWORD}")
        before = _state(server, stream)
        status, out, err = cli_as(user, command)
        assert status == EXIT_FAILED, err
        assert out == ""
        lines = [line for line in err.splitlines() if not line.startswith("following")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("agentstream: Redis at 127.0.0.1:"), err
        # refused by Redis, or found missing by replay's check beforehand
        assert f" denied {without}:" in lines[0] or f"'{without}' on " in lines[0]
        assert f"no permissions to run the '{without}' command" in lines[0], err
        # Redis's words, also from a pipeline (PTTL, replay's EVALSHA)
        assert "pipeline" not in lines[0], err
        assert _state(server, stream) == before  # replay: not in both streams
        assert {d["object"] for d in _denials(admin, user)} == {without}

    def test_stats_without_info_runs(
        self,
        admin: redis.Redis,
        cli_as: Callable[[str, str], tuple[int, str, str]],
    ) -> None:
        """stats as a user without +info: it runs, and says maxmemory-policy is unknown."""
        user = f"operator-without-info-{next(_users)}"
        rules = [r for r in OPERATOR_RULES if r != "+info"]
        _acl(admin, "SETUSER", user, *rules, f">{OPERATOR_PASSWORD}")
        status, out, err = cli_as(user, "stats")
        assert status == EXIT_OK, err
        assert '"maxmemory_policy": null' in out, out
        assert {d["object"] for d in _denials(admin, user)} == {"info"}


def test_the_readme_gives_these_rules() -> None:
    """The README's ACL SETUSER lines are the tested rules, word for word."""
    text = README.read_text("utf-8")
    for user, rules, password in (
        (WORKER_USER, WORKER_RULES, "WORKER-PASSWORD"),
        (READONLY_USER, READONLY_RULES, "READONLY-PASSWORD"),
        (OPERATOR_USER, OPERATOR_RULES, "OPERATOR-PASSWORD"),
    ):
        assert f"\n{setuser_line(user, rules, password)}\n" in text, user
    assert f"`{' '.join(ORDERED_COMMANDS)}`" in text


class TestOperatorUser:
    def test_operator_commands_run_with_the_documented_rules(
        self,
        admin: redis.Redis,
        server: RedisServer,
        stream: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The README's operator rules run every command that changes a group, no refusal."""
        _setuser(admin, f"{OPERATOR_USER}-console", OPERATOR_RULES, READONLY_PASSWORD)
        admin.xgroup_create(stream, GROUP, "0", mkstream=True)
        first = str(admin.xadd(stream, {"type": "t", "data": "{}"}), "ascii")  # type: ignore[arg-type]
        second = str(admin.xadd(stream, {"type": "t", "data": "{}"}), "ascii")  # type: ignore[arg-type]
        admin.xreadgroup(GROUP, "w-0-0", {stream: ">"}, count=10)
        admin.xgroup_createconsumer(stream, GROUP, "empty-0-0")
        config = _cli_config(
            tmp_path / "op.toml", server, stream, f"{OPERATOR_USER}-console"
        )
        for argv in (
            ["pending", "list"],
            ["pending", "show", first],
            ["pending", "claim", first],
            ["pending", "ack", second, "--yes"],
            ["consumers", "list"],
            ["consumers", "remove", "empty-0-0"],
            ["workers"],
            ["group", "reset", "$", "--yes"],
            ["pause"],
            ["stats"],
            ["resume"],
        ):
            status = run_admin(["--config", str(config), *argv])
            assert status == EXIT_OK, (argv, capsys.readouterr().err)
        assert _denials(admin, f"{OPERATOR_USER}-console") == []
        owners = admin.xpending_range(stream, GROUP, "-", "+", 10)
        assert [o["consumer"] for o in owners] == [RETRY_CONSUMER.encode()]
