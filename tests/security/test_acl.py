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
    OPERATOR_RULES,
    OPERATOR_USER,
    READONLY_RULES,
    READONLY_USER,
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

from agentstream.admin import run_admin
from agentstream.testing import RedisServer
from agentstream.worker.consumer import RETRY_CONSUMER

pytestmark = [pytest.mark.security, pytest.mark.redis]

ADMIN_PASSWORD = "acl-admin-Pw-5b1e"
WORKER_PASSWORD = "acl-worker-Pw-97c2"
READONLY_PASSWORD = "acl-readonly-Pw-0d4a"

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
        if fields.get("username") == user:
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
Restricted = Callable[[str], tuple[E2E, Path, str]]


@pytest.fixture(name="restricted")
def _restricted(
    admin: redis.Redis, server: RedisServer, e2e_factory: Callable[[], E2E]
) -> Restricted:
    def make(without: str) -> tuple[E2E, Path, str]:
        assert without in WORKER_RULES
        user = f"worker-without-{without.strip('+').replace('|', '-')}-{next(_users)}"
        rules = [rule for rule in WORKER_RULES if rule != without]
        _setuser(admin, user, rules, WORKER_PASSWORD)
        e2e = e2e_factory()
        return e2e, _user_config(e2e, server, user, WORKER_PASSWORD, {}), user

    return make


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
        lines = [line for line in worker.stderr().splitlines() if line.strip()]
        assert len(lines) == 1, worker.tail()
        assert lines[0].startswith("agentstream-worker: cannot start:"), lines
        assert "no permissions" in lines[0] and "'xgroup|create'" in lines[0], lines
        assert "Traceback" not in worker.stdout() + worker.stderr()

    def test_missing_run_time_permission_is_logged_and_loses_nothing(
        self,
        admin: redis.Redis,
        restricted: Restricted,
    ) -> None:
        """A worker user without XCLAIM keeps running, logs one error line about xclaim, and the failed event stays pending."""
        e2e, config, user = restricted("+xclaim")
        worker = e2e.start(config)
        worker.wait_for_log("worker_started", 20)
        xadd_events(e2e.client, e2e.stream, "fail", [{"n": "f1"}])
        record = worker.wait_for_log(
            lambda r: r.get("level") == "error" and "xclaim" in str(r.get("error")),
            20,
        )
        assert "exception" not in record, record
        # Redis 7.0 and 7.2+/Valkey word the refusal differently
        assert "may not run a command of its script" in record["error"], record
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

    @pytest.mark.parametrize("without", ["+xclaim", "+xreadgroup"])
    def test_run_time_permission_error_names_the_command(
        self,
        restricted: Restricted,
        without: str,
    ) -> None:
        """A permission refused at run time is logged as PermissionDenied naming the command, not as Redis being unavailable."""
        e2e, config, _ = restricted(without)
        command = without.removeprefix("+")
        worker = e2e.start(config)
        worker.wait_for_log("worker_started", 20)
        xadd_events(e2e.client, e2e.stream, "fail", [{"n": "f1"}])
        record = worker.wait_for_log(
            lambda r: (
                r.get("level") == "error"
                and "error" in r
                and r.get("event") != "handler_failed"
            ),
            20,
        )
        worker.terminate()
        worker.wait(15)
        assert record["event"] != "redis_unavailable", record
        assert record["error"].startswith("PermissionDenied"), record
        assert f"'{command}'" in record["error"], record

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
        assert "'xgroup|create'" in one_error_line(proc)


def test_setuser_lines_are_accepted_by_redis(admin: redis.Redis) -> None:
    """The documented ACL SETUSER lines parse in this Redis (they are what the README shows)."""
    for user, rules in ((WORKER_USER, WORKER_RULES), (READONLY_USER, READONLY_RULES)):
        line = setuser_line(f"{user}-doc", rules, "pw")
        assert line.startswith("ACL ")
        assert _acl(admin, *line.split()[1:]) in (b"OK", "OK")
        _acl(admin, "DELUSER", f"{user}-doc")


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
        _setuser(admin, OPERATOR_USER, OPERATOR_RULES, READONLY_PASSWORD)
        admin.xgroup_create(stream, GROUP, "0", mkstream=True)
        first = str(admin.xadd(stream, {"type": "t", "data": "{}"}), "ascii")  # type: ignore[arg-type]
        second = str(admin.xadd(stream, {"type": "t", "data": "{}"}), "ascii")  # type: ignore[arg-type]
        admin.xreadgroup(GROUP, "w-0-0", {stream: ">"}, count=10)
        admin.xgroup_createconsumer(stream, GROUP, "empty-0-0")
        config = _cli_config(tmp_path / "op.toml", server, stream, OPERATOR_USER)
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
        assert _denials(admin, OPERATOR_USER) == []
        owners = admin.xpending_range(stream, GROUP, "-", "+", 10)
        assert [o["consumer"] for o in owners] == [RETRY_CONSUMER.encode()]
