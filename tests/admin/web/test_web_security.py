"""Who may use the console: loopback-only without credentials, token and basic
auth from files, cookies that never hold the token, and the real server."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from web_harness import client_for, settings_for, write_config

from agentstream.admin.web.security import check_bind, load_credentials
from agentstream.config import WebSettings
from agentstream.errors import ConfigError
from agentstream.exit_codes import EXIT_CONFIG
from redis_server import free_port, wait_for

pytestmark = pytest.mark.redis

TOKEN = "t0ken-for-the-console-42"
AGENTSTREAM = Path(sys.executable).parent / "agentstream"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


class TestBind:
    @pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
    def test_loopback_needs_no_credentials(self, host: str) -> None:
        """Loopback addresses serve without credentials."""
        check_bind(host, load_credentials(WebSettings()))

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
    def test_elsewhere_is_refused_without_credentials(self, host: str) -> None:
        """Any other address needs a token or basic auth."""
        with pytest.raises(ConfigError, match="refusing to serve on"):
            check_bind(host, load_credentials(WebSettings()))

    def test_elsewhere_with_a_token(self, tmp_path: Path) -> None:
        """With a token file, any address is allowed."""
        (tmp_path / "token").write_text(TOKEN + "\n")
        creds = load_credentials(WebSettings(token_file=tmp_path / "token"))
        check_bind("0.0.0.0", creds)

    @pytest.mark.parametrize(
        ("content", "error"),
        [
            ("short", "shorter than 16 characters"),
            (None, "cannot read"),
        ],
    )
    def test_bad_token_file(self, tmp_path: Path, content: str | None, error: str) -> None:  # fmt: skip
        """A short or missing token file is a configuration error naming the setting."""
        path = tmp_path / "token"
        if content is not None:
            path.write_text(content)
        with pytest.raises(ConfigError, match=f"web.token_file: .*{error}"):
            load_credentials(WebSettings(token_file=path))

    def test_bad_users_file(self, tmp_path: Path) -> None:
        """A users line without a colon is named by its number."""
        path = tmp_path / "users"
        path.write_text("# operators\nalice:pw\nbob\n")
        with pytest.raises(ConfigError, match="line 3 .* is not user:password"):
            load_credentials(WebSettings(basic_auth_file=path))


class TestToken:
    def test_token(self, tmp_path: Path, redis_url: str, stream_name: str) -> None:
        """Without the token: sign-in page (GET) or 401 (POST); with it: served."""
        (tmp_path / "token").write_text(TOKEN)
        settings = settings_for(
            tmp_path, redis_url, [stream_name], token_file=str(tmp_path / "token")
        )
        with client_for(settings) as client:
            page = client.get("/s/0/pending")
            assert page.status_code == 303
            assert page.headers["location"] == "/login?next=/s/0/pending"
            assert client.post("/s/0/actions/pause", data={}).status_code == 401
            assert client.get("/static/htmx.min.js").status_code == 200
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert client.get("/", headers=auth).status_code == 200
            assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 303  # fmt: skip
            stale = client.post("/login", data={"token": TOKEN})  # no CSRF token
            assert stale.status_code == 403
            assert "agentstream_auth" not in client.cookies
            csrf = client.cookies.get("agentstream_csrf")
            wrong = client.post("/login?next=/s/0/pending", data={"token": "nope", "csrf": csrf})  # fmt: skip
            assert wrong.status_code == 401
            good = client.post("/login?next=/s/0/pending", data={"token": TOKEN, "csrf": csrf})  # fmt: skip
            assert (good.status_code, good.headers["location"]) == (303, "/s/0/pending")
            cookie = client.cookies.get("agentstream_auth")
            assert cookie and TOKEN not in cookie
            assert "httponly" in good.headers["set-cookie"].lower()
            assert "samesite=strict" in good.headers["set-cookie"].lower()
            assert client.get("/").status_code == 200

    def test_sign_in_redirects_only_inside(
        self, tmp_path: Path, redis_url: str, stream_name: str
    ) -> None:
        """next= never sends the browser to another site."""
        (tmp_path / "token").write_text(TOKEN)
        settings = settings_for(
            tmp_path, redis_url, [stream_name], token_file=str(tmp_path / "token")
        )
        with client_for(settings) as client:
            client.get("/login")
            csrf = client.cookies.get("agentstream_csrf")
            page = client.post("/login?next=//evil.example/", data={"token": TOKEN, "csrf": csrf})  # fmt: skip
            assert page.headers["location"] == "/"


class TestBasic:
    def test_basic(self, tmp_path: Path, redis_url: str, stream_name: str) -> None:
        """Basic auth: the browser's prompt; the user is named on the page."""
        (tmp_path / "users").write_text("alice:s3cret-pass\n")
        settings = settings_for(
            tmp_path, redis_url, [stream_name], basic_auth_file=str(tmp_path / "users")
        )
        with client_for(settings) as client:
            page = client.get("/")
            assert page.status_code == 401
            assert page.headers["www-authenticate"] == 'Basic realm="agentstream"'
            assert client.get("/", headers=_basic("alice", "wrong")).status_code == 401
            assert client.get("/", headers=_basic("mallory", "s3cret-pass")).status_code == 401  # fmt: skip
            page = client.get("/", headers=_basic("alice", "s3cret-pass"))
            assert page.status_code == 200
            assert "alice" in page.text
            assert "s3cret" not in page.text


class TestServer:
    def test_agentstream_web_serves_and_stops(
        self, tmp_path: Path, redis_url: str, stream_name: str
    ) -> None:
        """agentstream web serves the console and exits 0 on SIGTERM."""
        config = write_config(tmp_path / "w.toml", redis_url, [stream_name])
        port = free_port()
        proc = subprocess.Popen(
            [AGENTSTREAM, "--config", str(config), "web", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def up() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:  # fmt: skip
                        return r.status == 200 and stream_name in r.read().decode()
                except (urllib.error.URLError, ConnectionError):
                    return False

            wait_for(up, timeout=30, interval=0.1, message="console did not come up")
            # Pages served at once each need a connection: none may fail.
            paths = ["/", "/partials/overview", "/s/0/dead-letters", "/s/0/tail"] * 8
            with ThreadPoolExecutor(len(paths)) as pool:
                statuses = list(pool.map(lambda p: _status(f"http://127.0.0.1:{port}{p}"), paths))  # fmt: skip
            assert statuses == [200] * len(paths)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 0, err
        assert "Traceback" not in err + out
        assert "web_starting" in err + out

    def test_refuses_a_public_bind_without_credentials(
        self, tmp_path: Path, redis_url: str, stream_name: str
    ) -> None:
        """--host 0.0.0.0 without credentials: exit 78, one line, nothing bound."""
        config = write_config(tmp_path / "w.toml", redis_url, [stream_name])
        done = subprocess.run(
            [AGENTSTREAM, "--config", str(config), "web", "--host", "0.0.0.0"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == EXIT_CONFIG
        assert done.stderr.splitlines()[-1] == (
            "agentstream: configuration error: web.host: refusing to serve on "
            "0.0.0.0 without authentication; set web.token_file or "
            "web.basic_auth_file, or bind 127.0.0.1"
        )
