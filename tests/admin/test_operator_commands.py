"""The operator's commands: pending, consumers, workers, group reset, pause, resume,
--json listings, --redis-url and the target line, against a real redis-server."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import redis
from test_admin import (  # noqa: F401 - fixtures are found by name
    TARGET,
    _busy,
    _config_file,
    _dead,
    _raw,
    _Terminal,
    _transport,
    admin,
    row,
)

from agentstream import RedisStreamTransport
from agentstream.admin import run_admin
from agentstream.transport import keys
from agentstream.worker.consumer import RETRY_CONSUMER

pytestmark = pytest.mark.redis


def _pending_ids(raw: redis.Redis, stream: str) -> list[str]:
    rows = raw.xpending_range(stream, "agents", "-", "+", 100)
    return [str(p["message_id"]) for p in rows]


class TestPending:
    def test_list_filters_and_json(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
    ) -> None:
        """pending list filters by consumer and delivery count; --json has the same."""
        ids = [transport.publish("t", {"n": n}) for n in range(3)]
        transport.read_group("w-1", count=2)
        transport.read_group("w-2", count=1)
        transport.read_group("w-2", count=10, start_id="0")  # a second delivery
        status, out, _ = admin(capsys, "--config", str(config), "pending", "list")
        assert status == 0
        assert row(out, ids[0])[1] == "w-1"
        assert row(out, ids[2])[1:2] == ["w-2"]
        assert row(out, ids[2])[-1] == "2"
        status, out, _ = admin(
            capsys, "--config", str(config), "pending", "list", "--min-deliveries",
            "2", "--json",
        )  # fmt: skip
        listed = json.loads(out)["entries"]
        assert [(e["id"], e["consumer"], e["delivery_count"]) for e in listed] == [
            (ids[2], "w-2", 2)
        ]
        status, out, _ = admin(
            capsys, "--config", str(config), "pending", "list", "--consumer", "w-1",
            "--count", "1", "--json",
        )  # fmt: skip
        page = json.loads(out)
        assert [e["id"] for e in page["entries"]] == [ids[0]]
        assert page["next_after"] == ids[0]
        status, out, _ = admin(
            capsys, "--config", str(config), "pending", "list", "--consumer", "w-1",
            "--after", ids[0],
        )  # fmt: skip
        assert [line.split()[0] for line in out.splitlines()[1:]] == [ids[1]]

    def test_show_with_last_error(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
    ) -> None:
        """pending show prints the owner, the fields and the last recorded error."""
        entry = transport.publish("tool_call", {"name": "x"})
        transport.read_group("w-1", count=1)
        error_key = keys.errors_key(transport.stream_name, "agents")
        raw.hset(error_key, entry, "KeyError: 'city'\nTraceback ...")
        status, out, _ = admin(
            capsys, "--config", str(config), "pending", "show", entry
        )
        assert status == 0
        assert f"pending entry {entry} in group agents" in out
        assert "consumer        w-1" in out
        assert "last error      KeyError: 'city'" in out
        status, out, _ = admin(
            capsys, "--config", str(config), "pending", "show", entry, "--json"
        )
        shown = json.loads(out)
        assert shown["fields"]["type"] == "tool_call"
        assert shown["last_error"].startswith("KeyError")

    def test_show_unknown_and_malformed(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
    ) -> None:
        """An id that is not pending fails in one line; a malformed id is a usage error."""
        status, _, err = admin(
            capsys, "--config", str(config), "pending", "show", "1-0"
        )
        assert status == 1
        assert err == f"agentstream: 1-0 is not pending in group 'agents' of '{transport.stream_name}'\n"  # fmt: skip
        status, _, err = admin(capsys, "--config", str(config), "pending", "show", "x")
        assert status == 2
        assert "'x' is not a stream id" in err

    def test_claim_hands_over_to_the_parking_consumer(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
    ) -> None:
        """claim moves the entry to agentstream-retry, due now, delivery count kept."""
        entry = transport.publish("t", {})
        transport.read_group("stuck", count=1)
        status, out, _ = admin(
            capsys, "--config", str(config), "pending", "claim", entry, "2-0"
        )
        assert status == 1  # 2-0 was not pending
        assert f"{entry} -> redelivery" in out
        [info] = raw.xpending_range(transport.stream_name, "agents", "-", "+", 10)
        assert info["consumer"] == RETRY_CONSUMER.encode()
        assert info["times_delivered"] == 1
        assert int(info["time_since_delivered"]) >= 3_600_000  # max_backoff_ms

    def test_ack_asks_and_acknowledges(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
    ) -> None:
        """ack refuses off a terminal without --yes, then acknowledges."""
        entry = transport.publish("t", {})
        transport.read_group("stuck", count=1)
        status, _, err = admin(capsys, "--config", str(config), "pending", "ack", entry)
        assert status == 2
        assert "add --yes" in err
        status, out, _ = admin(
            capsys, "--config", str(config), "pending", "ack", entry, "--yes"
        )
        assert status == 0
        assert out.startswith("acknowledged 1 entry")
        assert _pending_ids(raw, transport.stream_name) == []


class TestConsumersAndWorkers:
    def test_list_marks_stale_and_owner(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
    ) -> None:
        """A consumer whose name base holds a lease is live; the others are stale."""
        stream = transport.stream_name
        transport.publish("t", {})
        transport.read_group("host-0-0", count=1)
        raw.xgroup_createconsumer(stream, "agents", "old-0-0")
        raw.set(keys.lease_key(stream, "agents", "host-0"), "token", px=30_000)
        status, out, _ = admin(
            capsys, "--config", str(config), "consumers", "list", "--json"
        )
        assert status == 0
        by_name = {c["name"]: c for c in json.loads(out)["consumers"]}
        assert by_name["host-0-0"]["worker"] == "host-0"
        assert by_name["host-0-0"]["stale"] is False
        assert by_name["old-0-0"]["stale"] is True
        assert by_name["old-0-0"]["worker"] is None
        _, out, _ = admin(capsys, "--config", str(config), "consumers", "list")
        assert row(out, "old-0-0")[-1] == "stale"
        _, out, _ = admin(capsys, "--config", str(config), "workers")
        assert row(out, stream, "agents", "host-0")[3:5] == ["1", "1"]
        _, out, _ = admin(capsys, "--config", str(config), "workers", "--json")
        [worker] = json.loads(out)["workers"]
        assert worker["name"] == "host-0"
        assert worker["consumers"] == ["host-0-0"]
        assert 0 < worker["lease_ms_left"] <= 30_000

    def test_remove_only_what_owns_nothing(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
    ) -> None:
        """remove refuses a consumer with pending entries, and removes an empty one."""
        stream = transport.stream_name
        transport.publish("t", {})
        transport.read_group("busy-0-0", count=1)
        raw.xgroup_createconsumer(stream, "agents", "empty-0-0")
        status, _, err = admin(
            capsys, "--config", str(config), "consumers", "remove", "busy-0-0"
        )
        assert status == 1
        assert "owns 1 pending entries" in err
        status, _, _ = admin(
            capsys, "--config", str(config), "consumers", "remove", "empty-0-0"
        )
        assert status == 0
        names = [c["name"].decode() for c in raw.xinfo_consumers(stream, "agents")]
        assert names == ["busy-0-0"]
        status, _, err = admin(
            capsys, "--config", str(config), "consumers", "remove", "nobody"
        )
        assert (status, "no consumer 'nobody'" in err) == (1, True)


class TestGroupReset:
    def test_reset_with_confirmation(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """reset needs --yes off a terminal, asks on one, then moves the id."""
        first = transport.publish("t", {})
        transport.publish("t", {})
        transport.read_group("w-0-0", count=10)
        argv = ["--config", str(config), "group", "reset", "0"]
        status, _, err = admin(capsys, *argv)
        assert status == 2
        assert "add --yes" in err
        monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
        status, _, err = admin(capsys, *argv)
        assert status == 1
        monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
        status, out, _ = admin(capsys, *argv)
        assert status == 0
        assert out.endswith("-> 0-0\n")
        [group] = raw.xinfo_groups(transport.stream_name)
        assert group["last-delivered-id"] == b"0-0"
        status, out, _ = admin(capsys, *argv[:-1], first, "--yes")
        assert out.endswith(f"0-0 -> {first}\n")

    def test_reset_missing_group(
        self, capsys: pytest.CaptureFixture[str], config: Path
    ) -> None:
        """A stream without the group fails in one line."""
        status, _, err = admin(
            capsys, "--config", str(config), "group", "reset", "$", "--yes",
            "--stream", "nothing-here",
        )  # fmt: skip
        assert status == 1
        assert "does not exist" in err


class TestPauseResume:
    def test_pause_shows_in_stats_and_resume(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        transport: RedisStreamTransport,
        raw: redis.Redis,
    ) -> None:
        """pause sets the key workers poll; stats shows who paused; resume clears it."""
        stream = transport.stream_name
        status, out, _ = admin(
            capsys, "--config", str(config), "pause", "--by", "alice"
        )
        assert (status, out) == (0, f"{stream} (group agents) paused\n")
        assert raw.exists(keys.pause_key(stream, "agents")) == 1
        status, out, _ = admin(capsys, "--config", str(config), "pause")
        assert out == f"{stream} (group agents) was already paused\n"
        status, out, _ = admin(capsys, "--config", str(config), "stats")
        assert row(out, stream, "agents")[2] == "paused"
        status, out, _ = admin(capsys, "--config", str(config), "stats", "--json")
        [state] = json.loads(out)["subscriptions"]
        assert (state["paused"], state["paused_by"]) == (True, "alice")
        status, out, _ = admin(capsys, "--config", str(config), "resume", stream)
        assert out == f"{stream} (group agents) resumed\n"
        assert raw.exists(keys.pause_key(stream, "agents")) == 0

    def test_pause_needs_the_group(
        self, capsys: pytest.CaptureFixture[str], config: Path, raw: redis.Redis
    ) -> None:
        """Pausing a stream without the group is refused (nothing is created)."""
        status, _, err = admin(capsys, "--config", str(config), "pause", "nope")
        assert status == 1
        assert "has no consumer group 'agents'" in err
        assert raw.exists(keys.pause_key("nope", "agents")) == 0


class TestTargetAndJson:
    def test_redis_url_overrides_and_is_printed(
        self,
        capsys: pytest.CaptureFixture[str],
        tmp_path: Path,
        redis_url: str,
        stream_name: str,
        transport: RedisStreamTransport,
    ) -> None:
        """--redis-url wins over the file, and every command names its target."""
        config = tmp_path / "w.toml"
        config.write_text(
            f'[redis]\nurl = "redis://127.0.0.1:1/0"\n[[subscriptions]]\n'
            f'stream = "{stream_name}"\n'
        )
        for argv in (
            ["stats"],
            ["dlq", "list", "--json"],
            ["pending", "list"],
            ["consumers", "list"],
            ["workers"],
        ):
            status = run_admin(
                ["--redis-url", redis_url, "--config", str(config), *argv]
            )
            captured = capsys.readouterr()
            assert status == 0, (argv, captured.err)
            assert captured.err.splitlines()[0] == f"redis: {redis_url}", argv
            assert TARGET.match(captured.err)

    def test_password_is_masked_in_the_target(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """The target line never shows a password."""
        status = run_admin(["--redis-url", "redis://u:s3cret@127.0.0.1:1/0", "workers"])
        err = capsys.readouterr().err
        assert status == 1
        assert err.splitlines()[0] == "redis: redis://u:***@127.0.0.1:1/0"
        assert "s3cret" not in err

    def test_dlq_list_json_and_text_filter(
        self, capsys: pytest.CaptureFixture[str], config: Path, dead: list[str]
    ) -> None:
        """dlq list --json gives every field; --text matches inside the error."""
        _, out, _ = admin(
            capsys, "--config", str(config), "dlq", "list", "--json", "--text", "AGAIN"
        )
        listed = json.loads(out)
        assert [e["id"] for e in listed["entries"]] == [dead[2]]
        assert listed["entries"][0]["dlq_error"] == "TimeoutError: again"
        assert listed["next"] is None

    def test_web_without_extra(
        self,
        capsys: pytest.CaptureFixture[str],
        config: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Without the web extra, agentstream web says which extra to install."""
        monkeypatch.setitem(sys.modules, "uvicorn", None)
        status, _, err = admin(capsys, "--config", str(config), "web")
        assert status == 1
        assert err == (
            "agentstream: the web console needs the 'web' extra (uvicorn is "
            "missing): pip install 'agentstream[web]'\n"
        )


class TestMissingGroup:
    def test_listings_of_a_missing_group_are_empty(
        self, capsys: pytest.CaptureFixture[str], config: Path
    ) -> None:
        """pending and consumers list say there is no group and exit 0, as stats does."""
        for argv in (["pending", "list"], ["consumers", "list"]):
            status, out, _ = admin(capsys, "--config", str(config), *argv, "--stream", "absent")  # fmt: skip
            assert (status, out) == (0, "no group agents on absent (no stream, or not created yet)\n")  # fmt: skip
            status, out, _ = admin(capsys, "--config", str(config), *argv, "--stream", "absent", "--json")  # fmt: skip
            assert status == 0
            assert json.loads(out)["group_exists"] is False
