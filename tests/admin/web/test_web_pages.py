"""Every page and action of the web console, server-side, against a real Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient
from structlog.testing import capture_logs
from web_harness import client_for, csrf_of, message, settings_for

from agentstream import RedisStreamTransport
from agentstream.transport import keys
from agentstream.worker.consumer import RETRY_CONSUMER
from stream_data import dead_letter

pytestmark = pytest.mark.redis


@pytest.fixture(name="raw")
def _raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(name="transport")
def _transport(redis_url: str, stream_name: str) -> Iterator[RedisStreamTransport]:
    t = RedisStreamTransport(stream_name, redis_url=redis_url)
    yield t
    t.close()


@pytest.fixture(name="client")
def _client(tmp_path: Path, redis_url: str, stream_name: str) -> Iterator[TestClient]:
    with client_for(settings_for(tmp_path, redis_url, [stream_name])) as client:
        client.get("/")
        yield client


@pytest.fixture(name="data")
def _data(transport: RedisStreamTransport, redis_url: str) -> dict[str, Any]:
    """Two pending on w-0-0, one dead letter of each of two errors, one unread."""
    stream = transport.stream_name
    ids = [transport.publish("token", {"n": n, "html": "<b>x</b>"}) for n in range(4)]
    transport.read_group("w-0-0", count=4)
    dead = [
        dead_letter(
            redis_url,
            stream,
            ids[2],
            "max_deliveries",
            "KeyError: 'city'\nTraceback: ...",
        ),
        dead_letter(redis_url, stream, ids[3], "handler", "ValueError: no run"),
    ]
    unread = transport.publish("tool_call", {"name": "<script>alert(1)</script>"})
    return {"pending": ids[:2], "dead": dead, "unread": unread, "stream": stream}


def post(
    client: TestClient, path: str, confirm: bool = True, **form: Any
) -> tuple[int, str]:
    """Submit an action (and confirm it): status and page sentence or page."""
    data = {"csrf": csrf_of(client), **form}
    first = client.post(path, data=data)
    if not confirm or first.status_code != 200 or 'id="confirm"' not in first.text:
        return first.status_code, first.text
    done = client.post(path, data={**data, "confirmed": "1"})
    return done.status_code, done.text


def listed(html: str) -> list[str]:
    """The dead-letter ids of a list page's rows."""
    return re.findall(r'class="dl" href="/s/0/dead-letters/([0-9-]+)"', html)


def count_of(html: str) -> int:
    found = re.search(r'<b id="count">(\d+)</b>', html)
    assert found, html[-1500:]
    return int(found.group(1))


class TestPages:
    def test_overview(self, client: TestClient, data: dict[str, Any]) -> None:
        """The overview shows length, lag, pending, dead letters, and refreshes."""
        page = client.get("/")
        assert page.status_code == 200
        html = page.text
        assert data["stream"] in html
        assert 'hx-get="/partials/overview"' in html
        assert "/static/htmx.min.js" in html
        row = client.get("/partials/overview").text
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)]  # fmt: skip
        # stream, group, status, length, lag, pending, ..., consumers, dead letters
        assert cells[1:6] == ["agents", "running", "5", "1", "2"]
        assert cells[8:10] == ["1", "2"]

    def test_unknown_lag_is_not_zero(
        self, client: TestClient, transport: RedisStreamTransport, raw: redis.Redis
    ) -> None:
        """When the lag cannot be known, the page says unknown, never 0."""
        stream = transport.stream_name
        with raw.pipeline(transaction=False) as pipe:
            for n in range(300):
                pipe.xadd(stream, {"type": "t", "data": "{}", "n": n})
            ids = pipe.execute()
        transport.read_group("w-0-0", count=150)
        # A deleted unread entry, too many entries on both sides to count: unknown.
        raw.xdel(stream, ids[200])
        assert "unknown" in client.get("/partials/overview").text

    def test_consumers(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """Consumers show pending, idle, owner (from leases) and staleness."""
        stream = data["stream"]
        raw.set(keys.lease_key(stream, "agents", "live-0"), "tok", px=30_000)
        raw.xgroup_createconsumer(stream, "agents", "live-0-1")
        html = client.get("/s/0/consumers").text
        live = re.search(
            r"<tr class=\"\">\s*<td><a[^>]*>live-0-1</a>.*?</tr>", html, re.DOTALL
        )
        stale = re.search(r"<tr class=\"stale\">\s*<td><a[^>]*>w-0-0</a>.*?</tr>", html, re.DOTALL)  # fmt: skip
        assert live and "live-0" in live.group(0)
        assert stale and "Remove" not in stale.group(0)  # it owns entries
        assert "Running workers" in html and "live-0" in html

    def test_pending_and_entry(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """Pending entries filter by consumer, idle and deliveries; one in full."""
        html = client.get("/s/0/pending").text
        for entry in data["pending"]:
            assert f'/s/0/pending/{entry}"' in html
        html = client.get("/s/0/pending?min_deliveries=2").text
        assert "No pending entries match this filter" in html
        html = client.get("/s/0/pending?consumer=w-0-0&min_idle_ms=0").text
        assert data["pending"][0] in html
        entry = data["pending"][0]
        error_key = keys.errors_key(data["stream"], "agents")
        raw.hset(error_key, entry, "RuntimeError: downstream 503")
        html = client.get(f"/s/0/pending/{entry}").text
        assert "RuntimeError: downstream 503" in html
        assert "w-0-0" in html
        assert "&lt;b&gt;x&lt;/b&gt;" in html  # event data is escaped

    def test_pending_pagination(
        self, tmp_path: Path, redis_url: str, transport: RedisStreamTransport
    ) -> None:
        """A page holds page_size entries and links to the next."""
        ids = [transport.publish("t", {}) for _ in range(5)]
        transport.read_group("w-0-0", count=5)
        settings = settings_for(
            tmp_path, redis_url, [transport.stream_name], page_size=2
        )
        with client_for(settings) as client:
            html = client.get("/s/0/pending").text
            assert ids[1] in html and ids[2] not in html
            link = re.search(r'href="\?(after=[0-9-]+)"', html)
            assert link
            html = client.get(f"/s/0/pending?{link.group(1)}").text
            assert ids[2] in html and ids[3] in html and ids[1] not in html

    def test_dead_letters(self, client: TestClient, data: dict[str, Any]) -> None:
        """Dead letters list, filter by type, reason and text, and group by error."""
        html = client.get("/s/0/dead-letters").text
        assert all(d in html for d in data["dead"])
        assert "Errors, most common first" in html
        assert "KeyError: &#39;city&#39;" in html
        html = client.get("/s/0/dead-letters?reason=max*").text
        assert listed(html) == [data["dead"][0]]
        html = client.get("/s/0/dead-letters?q=NO+RUN").text
        assert listed(html) == [data["dead"][1]]
        html = client.get("/s/0/dead-letters?type=nothing").text
        assert "No dead letters match this filter" in html

    def test_dead_letter_detail(self, client: TestClient, data: dict[str, Any]) -> None:
        """One dead letter in full: data, reason, error with traceback."""
        html = client.get(f"/s/0/dead-letters/{data['dead'][0]}").text
        assert "Traceback: ..." in html
        assert "max_deliveries" in html
        assert data["pending"][0] not in html

    def test_tail(self, client: TestClient, transport: RedisStreamTransport) -> None:
        """The tail page polls for entries after the one it opened at."""
        transport.publish("old", {})
        html = client.get("/s/0/tail").text
        after = re.search(r"tail/rows\?after=([0-9-]+)", html)
        assert after
        assert "No entries since" in client.get(f"/s/0/tail/rows?after={after.group(1)}").text  # fmt: skip
        transport.publish("new", {"x": "<i>"})
        rows = client.get(f"/s/0/tail/rows?after={after.group(1)}").text
        assert "new" in rows and "old" not in rows and "&lt;i&gt;" in rows

    def test_rates(self, client: TestClient, transport: RedisStreamTransport) -> None:
        """Events per second come from two samples of Redis's counters."""
        sampler = client.app.state.console.sampler  # type: ignore[attr-defined]
        client.portal.call(sampler.sample)  # type: ignore[union-attr]
        for _ in range(10):
            transport.publish("t", {})
        client.portal.call(sampler.sample)  # type: ignore[union-attr]
        rates = sampler.rates(0)
        assert rates.added_1m is not None and rates.added_1m > 0
        assert rates.series
        assert "<polyline" in client.get("/partials/overview").text


class TestBadInput:
    @pytest.mark.parametrize(
        ("path", "status", "text"),
        [
            ("/s/0/pending/not-an-id", 400, "is not a stream entry id"),
            ("/s/0/pending/1-0", 404, "1-0 is not pending"),
            ("/s/0/dead-letters/1-0", 404, "no dead letter 1-0"),
            ("/s/0/dead-letters/12", 400, "is not a stream entry id"),
            (
                "/s/0/pending?min_idle_ms=soon",
                400,
                "min_idle_ms must be a whole number",
            ),
            (
                "/s/0/pending?min_deliveries=0",
                400,
                "min_deliveries must be at least 1",
            ),
            ("/s/0/dead-letters?after=x", 400, "after 'x' is not a stream entry id"),
            ("/s/9/consumers", 404, "there is no subscription 9"),
            ("/nowhere", 404, "Not Found"),
        ],
    )
    def test_message_not_traceback(
        self,
        client: TestClient,
        data: dict[str, Any],
        path: str,
        status: int,
        text: str,
    ) -> None:
        """A bad id, a missing one, a bad number: a clear message on the page."""
        page = client.get(path)
        assert page.status_code == status
        assert text in page.text.replace("&#39;", "'")
        assert "Traceback" not in page.text

    def test_missing_stream(self, tmp_path: Path, redis_url: str) -> None:
        """A subscription whose stream does not exist: pages say so."""
        with client_for(settings_for(tmp_path, redis_url, ["absent-stream"])) as client:
            assert "no stream" in client.get("/").text
            page = client.get("/s/0/consumers")
            assert page.status_code == 404
            assert "does not exist" in page.text

    def test_redis_down(self, tmp_path: Path, fresh_redis: Any) -> None:
        """Redis unreachable: 503 with the reason, never a traceback."""
        settings = settings_for(tmp_path, fresh_redis.url, ["s"])
        fresh_redis.stop()
        with client_for(settings) as client:
            page = client.get("/")
            assert page.status_code == 503
            assert "cannot reach Redis" in page.text
            assert "Traceback" not in page.text


class TestActions:
    def test_replay_one(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """Replay asks first (1 entry), then moves it back, with an audit line."""
        dead = data["dead"][1]
        first = client.post("/s/0/actions/dlq-replay", data={"csrf": csrf_of(client), "ids": dead})  # fmt: skip
        assert count_of(first.text) == 1
        assert raw.xlen(f"{data['stream']}:dlq") == 2  # nothing done yet
        with capture_logs() as logs:
            status, html = post(client, "/s/0/actions/dlq-replay", ids=dead)
        assert status == 200
        assert message(html) == f"replayed 1 dead letter from {data['stream']}:dlq"
        assert raw.xlen(f"{data['stream']}:dlq") == 1
        [audit] = [e for e in logs if e["event"] == "web_action"]
        assert (audit["action"], audit["count"], audit["who"]) == ("dlq-replay", 1, "local:testclient")  # fmt: skip

    def test_replay_all_matching_stops_at_what_was_confirmed(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis, redis_url: str,
        transport: RedisStreamTransport,
    ) -> None:  # fmt: skip
        """Replay all matching: the count is shown; later arrivals are not touched."""
        form = {"csrf": csrf_of(client), "all": "1", "reason": "*"}
        first = client.post("/s/0/actions/dlq-replay", data=form)
        assert count_of(first.text) == 2
        until = re.search(r'name="until" value="([0-9-]+)"', first.text)
        assert until
        late = transport.publish("t", {})
        late_dead = dead_letter(redis_url, data["stream"], late, "late")
        done = client.post(
            "/s/0/actions/dlq-replay",
            data={**form, "confirmed": "1", "until": until.group(1)},
        )
        assert (
            message(done.text) == f"replayed 2 dead letters from {data['stream']}:dlq"
        )
        left = [str(i, "ascii") for i, _ in raw.xrange(f"{data['stream']}:dlq")]  # type: ignore[union-attr,arg-type]
        assert left == [late_dead]

    def test_purge_selection_and_filter(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """Purge the selected ids, or all that match a filter."""
        dlq = f"{data['stream']}:dlq"
        _, html = post(client, "/s/0/actions/dlq-purge", ids=[data["dead"][0]])
        assert message(html) == f"deleted 1 dead letter from {dlq}"
        _, html = post(client, "/s/0/actions/dlq-purge", all="1", type="nothing")
        assert count_of(html) == 0 and 'id="confirm"' not in html
        _, html = post(client, "/s/0/actions/dlq-purge", all="1", q="no run")
        assert message(html) == f"deleted 1 dead letter from {dlq}"
        assert raw.xlen(dlq) == 0

    def test_replay_unknown_or_nothing_selected(
        self, client: TestClient, data: dict[str, Any]
    ) -> None:
        """An unknown id and an empty selection are refused with a message."""
        status, html = post(client, "/s/0/actions/dlq-replay", ids="1-0")
        assert status == 409 and "no dead letter 1-0" in html
        status, html = post(client, "/s/0/actions/dlq-replay")
        assert status == 400 and "select dead letters" in html

    def test_claim_and_ack(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """Claim hands an entry to the parking consumer; ack removes one."""
        stream = data["stream"]
        first, second = data["pending"]
        status, html = post(client, "/s/0/actions/pending-claim", ids=first)
        assert "handed 1 entry" in message(html)
        rows = raw.xpending_range(stream, "agents", "-", "+", 10)
        owners = {str(p["message_id"], "ascii"): str(p["consumer"], "ascii") for p in rows}  # type: ignore[arg-type]  # fmt: skip
        assert owners == {first: RETRY_CONSUMER, second: "w-0-0"}
        status, html = post(client, "/s/0/actions/pending-ack", ids=second)
        assert message(html) == f"acknowledged 1 entry of {stream} (group agents)"
        status, html = post(client, "/s/0/actions/pending-ack", ids=second)
        assert status == 409 and "is not pending" in html

    def test_remove_stale_consumer(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """An empty stale consumer is removed; one that owns entries is refused."""
        stream = data["stream"]
        raw.xgroup_createconsumer(stream, "agents", "gone-0-0")
        assert "gone-0-0" in client.get("/s/0/consumers").text
        status, html = post(client, "/s/0/actions/consumer-remove", name="gone-0-0")
        assert (
            message(html) == f"removed consumer gone-0-0 from {stream} (group agents)"
        )
        status, html = post(client, "/s/0/actions/consumer-remove", name="w-0-0")
        assert status == 409 and "owns 2 pending entries" in html

    def test_pause_and_resume(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """Pause sets the key workers obey and the overview shows it; resume clears it."""
        key = keys.pause_key(data["stream"], "agents")
        _, html = post(client, "/s/0/actions/pause")
        assert message(html) == f"{data['stream']} (group agents) paused"
        assert raw.get(key) is not None
        assert b"web:local:testclient" in raw.get(key)  # type: ignore[operator]
        assert ">paused<" in client.get("/partials/overview").text
        _, html = post(client, "/s/0/actions/resume")
        assert message(html) == f"{data['stream']} (group agents) resumed"
        assert raw.get(key) is None

    def test_csrf_is_required(
        self, client: TestClient, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """Without the CSRF token, or with a wrong one, nothing is done (403)."""
        for form in ({}, {"csrf": "forged"}):
            page = client.post(
                "/s/0/actions/dlq-purge",
                data={**form, "all": "1", "confirmed": "1"},
            )
            assert page.status_code == 403
            assert "CSRF" in page.text
        assert raw.xlen(f"{data['stream']}:dlq") == 2

    def test_get_is_not_an_action(
        self, client: TestClient, data: dict[str, Any]
    ) -> None:
        """Actions answer POST only."""
        assert client.get("/s/0/actions/pause").status_code == 405

    def test_read_only(
        self, tmp_path: Path, redis_url: str, data: dict[str, Any], raw: redis.Redis
    ) -> None:
        """read_only hides every action and refuses them (403)."""
        settings = settings_for(tmp_path, redis_url, [data["stream"]], read_only=True)
        with client_for(settings) as client:
            for path in ("/", "/partials/overview", "/s/0/consumers", "/s/0/pending",
                         "/s/0/dead-letters", f"/s/0/dead-letters/{data['dead'][0]}",
                         f"/s/0/pending/{data['pending'][0]}"):  # fmt: skip
                html = client.get(path).text
                assert 'method="post"' not in html, path
            status, html = post(client, "/s/0/actions/dlq-purge", all="1")
            assert status == 403 and "read-only" in html
        assert raw.xlen(f"{data['stream']}:dlq") == 2
