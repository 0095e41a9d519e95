"""The ``agentstream`` operator command against a real redis-server."""

from __future__ import annotations

import functools
import io
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from agentstream import RedisStreamTransport
from agentstream.admin import run_admin
from agentstream.testing import free_port
from agentstream.testing.pytest_plugin import RedisServerFactory
from stream_data import dead_letter

pytestmark = pytest.mark.redis

AGENTSTREAM = Path(sys.executable).parent / "agentstream"
DURATION = re.compile(r"^\d+(ms|\.\d+s|m\d\ds|h\d\dm|d\d\dh)$")


def _config(path: Path, url: str, *subscriptions: dict[str, str]) -> Path:
    lines = ["[redis]", f'url = "{url}"']
    for sub in subscriptions:
        lines.append("[[subscriptions]]")
        lines += [f'{key} = "{value}"' for key, value in sub.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(name="config")
def _config_file(tmp_path: Path, redis_url: str, stream_name: str) -> Path:
    return _config(tmp_path / "worker.toml", redis_url, {"stream": stream_name})


@pytest.fixture(name="transport")
def _transport(redis_url: str, stream_name: str) -> Iterator[RedisStreamTransport]:
    """The subscribed stream, with its group "agents" created."""
    t = RedisStreamTransport(stream_name, redis_url=redis_url)
    yield t
    t.close()


@pytest.fixture(name="raw")
def _raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


TARGET = re.compile(r"^redis: \S+( \(user \S+\))?\n")


def without_target(err: str) -> str:
    """stderr without the first line naming the target Redis."""
    return TARGET.sub("", err, count=1)


def admin(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in-process: (status, stdout, stderr without the target line)."""
    status = run_admin(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, without_target(captured.err)


#: ``cli("dlq", "list")`` runs ``agentstream --config <config> dlq list``
#: in-process and returns (status, stdout, stderr).
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(name="cli")
def _cli(capsys: pytest.CaptureFixture[str], config: Path) -> Cli:
    return functools.partial(admin, capsys, "--config", str(config))


def xadd(raw: redis.Redis, key: str, fields: dict[str, str | bytes]) -> str:
    """Add an entry with arbitrary bytes, as another producer could."""
    entry_id = raw.xadd(key, fields)  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def row(output: str, *first: str) -> list[str]:
    """The whitespace-split table line whose first cells are ``first``."""
    for line in output.splitlines():
        cells = line.split()
        if cells[: len(first)] == list(first):
            return cells
    raise AssertionError(f"no line starting with {first} in:\n{output}")


@pytest.fixture(name="busy")
def _busy(transport: RedisStreamTransport, redis_url: str) -> dict[str, str]:
    """Three events: one pending on worker-1, one dead-lettered, one never read."""
    first = transport.publish("token", {"token": "a"})
    second = transport.publish("tool_call", {"name": "weather"}, {"run": "r1"})
    transport.read_group("worker-1", count=2)
    third = transport.publish("token", {"token": "c"})
    dlq_id = dead_letter(redis_url, transport.stream_name, second, "max_deliveries")
    return {"pending": first, "dead": second, "unread": third, "dlq": dlq_id}


class TestStats:
    def test_table(self, cli: Cli, busy: dict[str, str], stream_name: str) -> None:
        """The table shows length, lag, pending, oldest age, dead letters, owners."""
        status, out, err = cli("stats")
        assert (status, err) == (0, "")
        cells = row(out, stream_name, "agents")
        assert cells[2:6] == ["ok", "3", "1", "1"]
        assert DURATION.match(cells[6])
        assert cells[7:] == [f"{stream_name}:dlq", "1"]
        consumer = row(out, stream_name, "agents", "worker-1")
        assert consumer[3] == "1"
        assert DURATION.match(consumer[4])
        assert out.splitlines()[0].split()[:4] == [
            "STREAM",
            "GROUP",
            "STATUS",
            "LENGTH",
        ]

    def test_json(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        busy: dict[str, str],
        stream_name: str,
    ) -> None:
        """--json gives the same facts under stable keys, ids and ages included."""
        status, out, _ = admin(capsys, "stats", "--json", "--config", str(config))
        assert status == 0
        [stats] = json.loads(out)["subscriptions"]
        age = stats.pop("oldest_pending_age_ms")
        unread_age = stats.pop("oldest_undelivered_age_ms")
        [consumer] = stats.pop("consumers")
        assert stats == {
            "stream": stream_name,
            "group": "agents",
            "stream_exists": True,
            "group_exists": True,
            "paused": False,
            "paused_by": None,
            "paused_at": None,
            "length": 3,
            "lag": 1,
            "redis_lag": 1,
            "pending": 1,
            "oldest_pending_id": busy["pending"],
            "oldest_undelivered_id": busy["unread"],
            "last_delivered_id": busy["dead"],
            "entries_read": 2,
            "dead_letter_stream": f"{stream_name}:dlq",
            "dead_letters": 1,
        }
        assert isinstance(age, int)
        assert age >= 0
        assert isinstance(unread_age, int)
        assert unread_age >= 0
        assert consumer["name"] == "worker-1"
        assert consumer["pending"] == 1
        assert consumer["idle_ms"] >= 0

    def test_lag_redis_cannot_compute_is_counted(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
        stream_name: str,
    ) -> None:
        """An unread entry deleted voids Redis's lag; a short stream is counted."""
        transport.publish("token", {})
        unread = transport.publish("token", {})
        transport.publish("token", {})
        transport.read_group("worker-1", count=1)
        raw.xdel(stream_name, unread)
        status, out, _ = admin(capsys, "--config", str(config), "stats")
        assert status == 0
        assert row(out, stream_name, "agents")[2:6] == ["ok", "2", "1", "1"]
        _, out, _ = admin(capsys, "--config", str(config), "stats", "--json")
        [stats] = json.loads(out)["subscriptions"]
        assert (stats["lag"], stats["redis_lag"]) == (1, None)

    def test_unknown_lag(
        self,
        cli: Cli,
        transport: RedisStreamTransport,
        raw: redis.Redis,
        stream_name: str,
    ) -> None:
        """Too long to count on either side, and Redis cannot tell: unknown."""
        with raw.pipeline(transaction=False) as pipe:
            for n in range(300):
                pipe.xadd(stream_name, {"type": "token", "data": "{}", "n": n})
            ids = pipe.execute()
        transport.read_group("worker-1", count=150)
        raw.xdel(stream_name, ids[200])
        status, out, _ = cli("stats")
        assert status == 0
        assert row(out, stream_name, "agents")[2:6] == ["ok", "299", "unknown", "150"]
        _, out, _ = cli("stats", "--json")
        assert json.loads(out)["subscriptions"][0]["lag"] is None

    def test_missing_stream_and_group(
        self,
        capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
        redis_url: str,
        transport: RedisStreamTransport,
        raw: redis.Redis,
        stream_name: str,
    ) -> None:
        """A missing stream or group is reported as such, and is not created."""
        transport.publish("token", {})
        absent = f"{stream_name}-absent"
        config = _config(
            tmp_path / "c.toml",
            redis_url,
            {"stream": absent},
            {"stream": stream_name, "group": "nobody"},
        )
        status, out, err = admin(capsys, "--config", str(config), "stats")
        assert (status, err) == (0, "")
        assert row(out, absent, "agents")[2:4] == ["no", "stream"]
        assert row(out, stream_name, "nobody")[2:5] == ["no", "group", "1"]
        assert "no consumers" in out
        status, out, _ = admin(capsys, "--config", str(config), "stats", "--json")
        missing, no_group = json.loads(out)["subscriptions"]
        assert (missing["stream_exists"], missing["group_exists"]) == (False, False)
        assert (no_group["stream_exists"], no_group["group_exists"]) == (True, False)
        assert no_group["length"] == 1
        assert no_group["pending"] is None
        assert raw.exists(absent) == 0
        groups = [g["name"] for g in raw.xinfo_groups(stream_name)]
        assert groups == [b"agents"]


@pytest.fixture(name="dead")
def _dead(transport: RedisStreamTransport, redis_url: str) -> list[str]:
    """Three dead letters: token/max_deliveries, tool_call/timeout, token/timeout."""
    events = [
        ("token", {"token": "a"}, None),
        ("tool_call", {"name": "weather"}, {"run": "r1"}),
        ("token", {"token": "c"}, None),
    ]
    ids = [transport.publish(t, d, m) for t, d, m in events]
    transport.read_group("worker-1", count=3)
    reasons = ["max_deliveries", "timeout", "timeout"]
    errors = [
        "ValueError: boom\nTraceback (most recent call last):\n  File 'app.py'",
        "TimeoutError: handler ran past 300 s",
        "TimeoutError: again",
    ]
    return [
        dead_letter(redis_url, transport.stream_name, i, r, e, n)
        for i, r, e, n in zip(ids, reasons, errors, [5, 1, 2], strict=True)
    ]


class TestDlqListShow:
    def test_list(
        self, cli: Cli, dead: list[str], transport: RedisStreamTransport
    ) -> None:
        """Each dead letter is one line: ids, type, reason, deliveries, error."""
        status, out, err = cli("dlq", "list")
        assert (status, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].split() == [
            "ID", "ORIGINAL", "ID", "TYPE", "REASON", "DELIVERIES", "ERROR",
        ]  # fmt: skip
        assert len(lines) == 4
        original = transport.read_all()[0]["id"]
        assert lines[1].split() == [
            dead[0], original, "token", "max_deliveries", "5", "ValueError:", "boom",
        ]  # fmt: skip
        assert "Traceback" not in out

    def test_filters(self, cli: Cli, dead: list[str], stream_name: str) -> None:
        """--type, --reason, --from, --to and --count select dead letters."""

        def listed(*filters: str) -> list[str]:
            status, out, _ = cli("dlq", "list", stream_name, *filters)
            assert status == 0
            return [line.split()[0] for line in out.splitlines()[1:]]

        assert listed("--type", "token") == [dead[0], dead[2]]
        assert listed("--reason", "timeout") == [dead[1], dead[2]]
        assert listed("--type", "token", "--reason", "time*") == [dead[2]]
        assert listed("--from", dead[1]) == [dead[1], dead[2]]
        assert listed("--to", dead[1]) == [dead[0], dead[1]]
        assert listed("--count", "1") == [dead[0]]
        status, out, _ = cli("dlq", "list", "--type", "nothing")
        assert (status, out) == (0, f"no dead letters match in {stream_name}:dlq\n")

    def test_count_tells_about_more(self, cli: Cli, dead: list[str]) -> None:
        """When --count hides entries, stderr says where the rest starts."""
        status, _, err = cli("dlq", "list", "--count", "2")
        assert status == 0
        assert f"--from {dead[2]}" in err

    def test_configured_dead_letter_stream(
        self,
        capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
        redis_url: str,
        transport: RedisStreamTransport,
        stream_name: str,
    ) -> None:
        """The subscription's dead_letter_stream is the key listed."""
        key = f"{stream_name}:failed"
        entry = transport.publish("token", {})
        dlq_id = dead_letter(redis_url, stream_name, entry, "boom", key=key)
        config = _config(
            tmp_path / "c.toml",
            redis_url,
            {"stream": stream_name, "dead_letter_stream": key},
        )
        status, out, _ = admin(capsys, "--config", str(config), "dlq", "list")
        assert status == 0
        assert row(out, dlq_id)[1] == entry

    def test_show(self, cli: Cli, dead: list[str], stream_name: str) -> None:
        """Show prints every field, the whole error on indented lines."""
        status, out, _ = cli("dlq", "show", dead[0])
        assert status == 0
        lines = out.splitlines()
        assert lines[0] == f"dead letter {dead[0]} in {stream_name}:dlq"
        names = [line.split()[0] for line in lines[1:] if not line.startswith(" ")]
        assert names == [
            "type", "timestamp", "data", "dlq_stream", "dlq_id", "dlq_group",
            "dlq_at", "dlq_reason", "dlq_error", "dlq_delivery_count",
        ]  # fmt: skip
        assert row(out, "dlq_error") == ["dlq_error", "ValueError:", "boom"]
        assert any(
            line.strip() == "Traceback (most recent call last):" for line in lines
        )
        assert row(out, "dlq_stream") == ["dlq_stream", stream_name]
        assert row(out, "data") == ["data", '{"token":', '"a"}']

    def test_show_unknown_id(self, cli: Cli, stream_name: str) -> None:
        """An unknown id is one line on stderr and status 1."""
        status, out, err = cli("dlq", "show", "1-0")
        assert (status, out) == (1, "")
        assert err == f"agentstream: no dead letter 1-0 in {stream_name}:dlq\n"

    def test_non_utf8(self, cli: Cli, raw: redis.Redis, stream_name: str) -> None:
        """Bytes that are not UTF-8 are shown replaced, not a crash."""
        dlq_id = xadd(
            raw,
            f"{stream_name}:dlq",
            {"type": b"bad\xff", "data": b"\xfe", "dlq_reason": "data is not UTF-8"},
        )
        status, out, _ = cli("dlq", "list")
        assert status == 0
        assert row(out, dlq_id)[2] == "bad\ufffd"
        status, out, _ = cli("dlq", "show", dlq_id)
        assert status == 0
        assert row(out, "data") == ["data", "\ufffd"]


def _entries(raw: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return raw.xrange(key)  # type: ignore[return-value]


class TestDlqReplay:
    def test_replay_ids(
        self, cli: Cli, dead: list[str], raw: redis.Redis, stream_name: str
    ) -> None:
        """The original fields go back on the original stream; the DLQ loses them."""
        dlq = f"{stream_name}:dlq"
        before = dict(_entries(raw, dlq))
        status, out, err = cli("dlq", "replay", dead[1], dead[0])
        assert (status, err) == (0, "")
        lines = out.splitlines()
        assert lines[-1] == f"replayed 2 dead letters from {dlq}"
        new_ids = {}
        for line in lines[:-1]:
            dlq_id, arrow, target, new_id = line.split()
            assert (arrow, target) == ("->", stream_name)
            new_ids[dlq_id] = new_id
        assert set(new_ids) == {dead[0], dead[1]}
        replayed = dict(_entries(raw, stream_name))
        for dlq_id, new_id in new_ids.items():
            original = {
                k: v for k, v in before[dlq_id.encode()].items() if b"dlq" not in k
            }
            assert replayed[new_id.encode()] == original
        assert set(replayed[new_ids[dead[1]].encode()]) == {
            b"type", b"timestamp", b"data", b"metadata",
        }  # fmt: skip
        assert [i.decode() for i, _ in _entries(raw, dlq)] == [dead[2]]

    def test_replay_all_with_filter(
        self, cli: Cli, dead: list[str], raw: redis.Redis, stream_name: str
    ) -> None:
        """--all replays every dead letter that matches the filters."""
        status, out, _ = cli(
            "dlq",
            "replay",
            "--all",
            "--reason",
            "timeout",
        )
        assert status == 0
        assert out.splitlines()[-1] == f"replayed 2 dead letters from {stream_name}:dlq"
        remaining = [i.decode() for i, _ in _entries(raw, f"{stream_name}:dlq")]
        assert remaining == [dead[0]]
        assert raw.xlen(stream_name) == 5

    def test_replay_all_skips_what_cannot_go_back(
        self, cli: Cli, dead: list[str], raw: redis.Redis, stream_name: str
    ) -> None:
        """A dead letter that kept no event fields stays; the others go, status 1."""
        dlq = f"{stream_name}:dlq"
        empty = xadd(raw, dlq, {"dlq_stream": stream_name, "dlq_reason": "lost"})
        status, out, err = cli("dlq", "replay", "--all")
        assert status == 1
        assert out.splitlines()[-1] == f"replayed 3 dead letters from {dlq}"
        assert err == f"agentstream: not replayed: {empty} kept no event fields\n"
        assert [i.decode() for i, _ in _entries(raw, dlq)] == [empty]
        status, _, err = cli("dlq", "replay", empty)
        assert status == 1
        assert err == (
            f"agentstream: cannot replay: {empty} kept no event fields; "
            "nothing replayed\n"
        )

    def test_replay_unknown_id(
        self, cli: Cli, dead: list[str], raw: redis.Redis, stream_name: str
    ) -> None:
        """One unknown id fails the command before anything is replayed."""
        status, _, err = cli("dlq", "replay", dead[0], "1-0")
        assert status == 1
        assert err == f"agentstream: no dead letter 1-0 in {stream_name}:dlq\n"
        assert raw.xlen(f"{stream_name}:dlq") == 3
        assert raw.xlen(stream_name) == 3

    @pytest.mark.parametrize(
        "argv",
        [[], ["--all", "1-0"], ["1-0", "--type", "token"], ["not-an-id"]],
    )
    def test_replay_usage(self, cli: Cli, argv: list[str]) -> None:
        """IDs or --all, one of the two, and filters with --all only."""
        status, out, err = cli("dlq", "replay", *argv)
        assert (status, out) == (2, "")
        assert err.startswith("usage: agentstream dlq replay")


class _Terminal(io.StringIO):
    """A stdin that claims to be a terminal, with the user's answer in it."""

    def isatty(self) -> bool:
        return True


class TestDlqPurge:
    def test_purge_yes(
        self,
        cli: Cli,
        dead: list[str],
        raw: redis.Redis,
        stream_name: str,
    ) -> None:
        """--yes deletes the matching dead letters without asking."""
        dlq = f"{stream_name}:dlq"
        status, out, _ = cli("dlq", "purge", "--yes", "--type", "token")
        assert (status, out) == (0, f"deleted 2 dead letters from {dlq}\n")
        assert [i.decode() for i, _ in _entries(raw, dlq)] == [dead[1]]
        status, out, _ = cli("dlq", "purge", "--yes")
        assert (status, out) == (0, f"deleted 1 dead letter from {dlq}\n")
        assert raw.xlen(dlq) == 0

    def test_refuses_without_yes_off_a_terminal(
        self, cli: Cli, dead: list[str], raw: redis.Redis, stream_name: str
    ) -> None:
        """Without --yes and no terminal to ask on, nothing is deleted: status 2."""
        status, out, err = cli("dlq", "purge")
        assert (status, out) == (2, "")
        assert "--yes" in err
        assert len(err.splitlines()) == 1
        assert raw.xlen(f"{stream_name}:dlq") == 3

    @pytest.mark.parametrize(
        ("answer", "status", "left"), [("y\n", 0, 1), ("\n", 1, 3)]
    )
    def test_asks_on_a_terminal(
        self,
        cli: Cli,
        monkeypatch: pytest.MonkeyPatch,
        dead: list[str],
        raw: redis.Redis,
        stream_name: str,
        answer: str,
        status: int,
        left: int,
    ) -> None:
        """On a terminal it asks first; only "y" deletes."""
        monkeypatch.setattr(sys, "stdin", _Terminal(answer))
        dlq = f"{stream_name}:dlq"
        got, _, err = cli("dlq", "purge", "--reason", "timeout")
        assert got == status
        assert err.startswith(f"Delete 2 dead letters from {dlq}? [y/N] ")
        assert raw.xlen(dlq) == left


class TestPublishTail:
    def test_publish_then_tail(
        self,
        cli: Cli,
        raw: redis.Redis,
        stream_name: str,
    ) -> None:
        """Publish prints the id; tail --from 0 --count N prints N event lines."""
        status, out, _ = cli("publish", stream_name, "token", '{"t": 1}')
        assert status == 0
        first = out.strip()
        status, out, _ = cli(
            "publish",
            stream_name,
            "done",
            "{}",
            "--metadata",
            '{"r": 2}',
        )
        second = out.strip()
        assert [i.decode() for i, _ in _entries(raw, stream_name)] == [first, second]
        status, out, err = cli("tail", stream_name, "--from", "0", "--count", "2")
        assert status == 0
        assert out.splitlines() == [
            f'{first} token {{"t": 1}}',
            f'{second} done {{}} {{"r": 2}}',
        ]
        assert err == f"following {stream_name} after 0 (Ctrl-C to stop)\n"
        # Publishing creates no consumer group.
        assert raw.xinfo_groups(stream_name) == []

    def test_tail_follows_new_events(
        self, redis_url: str, config: Path, stream_name: str, raw: redis.Redis
    ) -> None:
        """The real command skips what was there and prints what arrives."""
        raw.xadd(stream_name, {"type": "old", "data": "{}"})
        tail = subprocess.Popen(
            [AGENTSTREAM, "tail", stream_name, "--config", str(config), "--count", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert tail.stderr is not None
            assert TARGET.match(tail.stderr.readline())
            assert tail.stderr.readline().startswith(f"following {stream_name} after")
            for n in (1, 2):
                subprocess.run(
                    [AGENTSTREAM, "--config", str(config), "publish", stream_name,
                     "token", json.dumps({"n": n})],
                    check=True, capture_output=True, timeout=30,
                )  # fmt: skip
            out, err = tail.communicate(timeout=30)
        finally:
            tail.kill()
            tail.wait()
        assert tail.returncode == 0
        assert [line.split(" ", 1)[1] for line in out.splitlines()] == [
            'token {"n": 1}',
            'token {"n": 2}',
        ]
        assert err == ""

    def test_tail_ctrl_c(self, config: Path, stream_name: str) -> None:
        """Ctrl-C stops tail quietly with status 0."""
        tail = subprocess.Popen(
            [AGENTSTREAM, "tail", stream_name, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert tail.stderr is not None
            assert TARGET.match(tail.stderr.readline())
            assert tail.stderr.readline().startswith("following")
            tail.send_signal(signal.SIGINT)
            out, err = tail.communicate(timeout=30)
        finally:
            tail.kill()
            tail.wait()
        assert (tail.returncode, out, err) == (0, "", "")

    def test_tail_non_utf8(self, cli: Cli, raw: redis.Redis, stream_name: str) -> None:
        """An entry that is not UTF-8 is printed with replacement characters."""
        entry = xadd(raw, stream_name, {"type": "token", "data": b'{"t": "\xff"}'})
        status, out, _ = cli("tail", stream_name, "--from", "0",
            "--count", "1",
        )  # fmt: skip
        assert status == 0
        assert out == f'{entry} token {{"t": "\ufffd"}}\n'


class TestErrors:
    @pytest.mark.parametrize(
        ("data", "metadata", "message"),
        [
            ("{bad", None, "JSON_DATA is not valid JSON"),
            ("[1]", None, "JSON_DATA must be a JSON object"),
            ('{"x": NaN}', None, "JSON_DATA is not valid JSON"),
            ("{}", "7", "--metadata must be a JSON object"),
        ],
    )
    def test_bad_json(
        self,
        cli: Cli,
        stream_name: str,
        raw: redis.Redis,
        data: str,
        metadata: str | None,
        message: str,
    ) -> None:
        """Bad JSON is one line on stderr and status 2; nothing is published."""
        extra = [] if metadata is None else ["--metadata", metadata]
        status, out, err = cli("publish", stream_name, "t", data, *extra)
        assert (status, out) == (2, "")
        assert err.startswith(f"agentstream: {message}")
        assert len(err.splitlines()) == 1
        assert raw.exists(stream_name) == 0

    @pytest.mark.parametrize(
        "argv", [["stats"], ["dlq", "list"], ["publish", "s", "t", "{}"], ["tail", "s"]]
    )
    def test_unreachable_redis(self, tmp_path: Path, argv: list[str]) -> None:
        """No Redis: one line naming host and port, status 1, no traceback."""
        port = free_port()
        config = _config(
            tmp_path / "c.toml", f"redis://127.0.0.1:{port}/0", {"stream": "s"}
        )
        done = subprocess.run(
            [AGENTSTREAM, "--config", str(config), *argv],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert lines.pop(0) == f"redis: redis://127.0.0.1:{port}/0"
        assert lines[0].startswith(
            f"agentstream: cannot reach Redis at 127.0.0.1:{port}"
        )
        assert "Traceback" not in done.stderr
        assert len(lines) == 1

    def test_wrong_password(
        self,
        capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
        redis_factory: RedisServerFactory,
    ) -> None:
        """A refused password is one line without the password, status 1."""
        server = redis_factory(password="right-one")
        url = f"redis://:wrong-one@127.0.0.1:{server.port}/0"
        config = _config(tmp_path / "c.toml", url, {"stream": "s"})
        status, out, err = admin(capsys, "--config", str(config), "stats")
        assert (status, out) == (1, "")
        assert err.startswith(f"agentstream: Redis at 127.0.0.1:{server.port} refused")
        assert "wrong-one" not in err
        assert len(err.splitlines()) == 1

    @pytest.mark.parametrize(
        "content", ["[redis]\nurl = 'http://nowhere'\n", "nonsense = 1\n", "[[[\n"]
    )
    def test_bad_config(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str
    ) -> None:
        """A configuration error is one line and status 78."""
        config = tmp_path / "c.toml"
        config.write_text(content)
        status, out, err = admin(capsys, "stats", "--config", str(config))
        assert (status, out) == (78, "")
        assert err.startswith("agentstream: configuration error: ")
        assert len(err.splitlines()) == 1

    def test_missing_config_file(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """A config file that does not exist is a configuration error too."""
        missing = tmp_path / "nope.toml"
        status, _, err = admin(capsys, "--config", str(missing), "dlq", "list")
        assert status == 78
        assert (
            err
            == f"agentstream: configuration error: config file not found: {missing}\n"
        )

    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["frobnicate"],
            ["dlq"],
            ["stats", "--bogus"],
            ["tail", "s", "--count", "0"],
        ],
    )
    def test_usage(self, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
        """Bad arguments print argparse's usage and give status 2."""
        status, out, err = admin(capsys, *argv)
        assert (status, out) == (2, "")
        assert err.startswith("usage: agentstream")

    def test_environment_overrides_the_file(
        self,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        redis_url: str,
        stream_name: str,
    ) -> None:
        """AGENTSTREAM_* variables override the file, as for the worker."""
        config = _config(
            tmp_path / "c.toml", f"redis://127.0.0.1:{free_port()}/0", {"stream": "s"}
        )
        monkeypatch.setenv("AGENTSTREAM_REDIS__URL", redis_url)
        status, out, _ = admin(
            capsys, "--config", str(config), "publish", stream_name, "t", "{}"
        )
        assert status == 0
        assert re.match(r"^\d+-\d+\n$", out)

    def test_python_dash_m(self, config: Path, stream_name: str) -> None:
        """``python -m agentstream`` is the same command."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentstream",
                "--config",
                str(config),
                "dlq",
                "list",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, without_target(done.stderr)) == (0, "")
        assert done.stdout == f"no dead letters in {stream_name}:dlq\n"
