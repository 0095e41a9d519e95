"""TLS: the worker and the CLI over ``rediss://``, and every way verification fails.

Certificates are made at test time (``tls_certs.make_pki``): a CA, a server
certificate for 127.0.0.1 and localhost, an expired one, one for another host
name, and a second CA that signed none of them. Each redis-server listens with
TLS only (``--port 0 --tls-port P``) and does not ask clients for certificates.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from security_harness import (
    CLI,
    E2E,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_START,
    WORKER,
    WorkerProcess,
    dead_letters,
    drained,
    one_error_line,
    run,
    to_toml,
    wait_until,
    without_target,
    worker_env,
    xadd_events,
)
from tls_certs import Pki, ServerCert, make_pki

from agentstream.config import load_settings
from agentstream.testing import RedisServer, TlsFiles, TlsUnavailable
from agentstream.transport.pool import pool_from_settings

pytestmark = [pytest.mark.security, pytest.mark.redis]

#: Server certificate kinds: "good", "expired", "wrong_host".
Servers = Callable[[str], RedisServer]


@pytest.fixture(name="pki", scope="module")
def _pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(name="servers", scope="module")
def _servers(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory, redis_server_bin: str
) -> Iterator[Servers]:
    """TLS-only redis-servers by certificate kind, started on first use."""
    started: dict[str, RedisServer] = {}

    def get(kind: str) -> RedisServer:
        if kind not in started:
            cert: ServerCert = getattr(pki, kind)
            server = RedisServer(
                tmp_path_factory.mktemp(f"tls-{kind}"),
                tls=TlsFiles(cert.cert, cert.key, pki.ca),
                executable=redis_server_bin,
            )
            try:
                server.start()
            except TlsUnavailable as exc:
                pytest.skip(f"redis-server has no TLS support here: {exc}")
            started[kind] = server
        return started[kind]

    try:
        yield get
    finally:
        for server in started.values():
            server.stop()


def _config(
    directory: Path, server: RedisServer, stream: str, redis_options: dict[str, Any]
) -> Path:
    """A worker config for ``server`` with only ``redis_options`` besides the URL."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls_app.py").write_text(
        "from agentstream import App\napp = App()\n", encoding="utf-8"
    )
    config = {
        "app": "tls_app:app",
        "subscriptions": [{"stream": stream}],
        "redis": {"url": server.url, "socket_connect_timeout_s": 2.0, **redis_options},
        "metrics": {"enabled": False},
        "log": {"format": "json"},
    }
    path = directory / "worker.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    # The app of _config() records nothing: no Redis for it to reach.
    return worker_env("redis://unused", "unused:")


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    argv = [WORKER, "--config", str(config), "--check"]
    return run(argv, cwd=config.parent, env=_env())


def _stats(config: Path) -> subprocess.CompletedProcess[str]:
    return run([CLI, "--config", str(config), "stats"], cwd=config.parent, env=_env())


class TestVerifiedConnection:
    def test_worker_handles_events_over_tls(
        self, servers: Servers, pki: Pki, tmp_path: Path, stream_name: str
    ) -> None:
        """A worker with redis.url = "rediss://..." and redis.ssl_ca_certs handles events and dead letters."""
        server = servers("good")
        # The test's own client and the test app pass the CA in the URL query.
        e2e = E2E(tmp_path, f"{server.url}?ssl_ca_certs={pki.ca}", stream_name)
        try:
            config = e2e.write_config(
                {"redis": {"url": server.url, "ssl_ca_certs": str(pki.ca)}}
            )
            worker = e2e.start(config)
            xadd_events(e2e.client, e2e.stream, "ok", [{"n": i} for i in range(20)])
            xadd_events(e2e.client, e2e.stream, "dead", [{"n": "d"}])
            wait_until(
                lambda: (
                    e2e.recorder.handled_count() == 20
                    and len(dead_letters(e2e.client, e2e.dlq)) == 1
                    and drained(e2e.client, e2e.stream)
                ),
                30,
                "20 events handled and one dead-lettered over TLS",
                worker,
            )
            worker.terminate()
            assert worker.wait(15) == EXIT_OK, worker.tail()
            assert "Traceback" not in worker.stdout() + worker.stderr()
        finally:
            e2e.close()

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
    def test_check_and_stats_over_tls(
        self, servers: Servers, pki: Pki, tmp_path: Path, stream_name: str, host: str
    ) -> None:
        """--check and `agentstream stats` verify the server certificate by IP address and by DNS name."""
        server = servers("good")
        config = _config(tmp_path, server, stream_name, {"ssl_ca_certs": str(pki.ca)})
        text = config.read_text().replace("127.0.0.1", host)
        config.write_text(text, encoding="utf-8")
        check = _check(config)
        assert check.returncode == EXIT_OK, check.stderr
        assert (
            f"redis: ok ({host}:{server.port}, {stream_name}/agents: " in check.stdout
        )
        assert "redis: ACL ok" in check.stdout
        stats = _stats(config)
        assert stats.returncode == EXIT_OK, stats.stderr
        assert stats.stderr.startswith(f"redis: rediss://{host}:{server.port}")
        assert without_target(stats.stderr) == ""
        assert stream_name in stats.stdout.splitlines()[1]


# (server certificate, trusted CA, what the one error line must say)
FAILURES = {
    "wrong CA": ("good", "other_ca", "certificate verify failed"),
    "expired certificate": ("expired", "ca", "certificate has expired"),
    "hostname mismatch": ("wrong_host", "ca", "mismatch"),
}


@pytest.fixture(name="failing", params=list(FAILURES))
def _failing(
    request: pytest.FixtureRequest,
    servers: Servers,
    pki: Pki,
    tmp_path: Path,
    stream_name: str,
) -> tuple[Path, str]:
    """A config whose server certificate does not verify, and the reason it must name."""
    kind, ca, reason = FAILURES[request.param]
    options = {"ssl_ca_certs": str(getattr(pki, ca))}
    return _config(tmp_path, servers(kind), stream_name, options), reason


class TestVerificationFailures:
    def test_check_fails_with_one_line(self, failing: tuple[Path, str]) -> None:
        """`agentstream-worker --check` exits 3 with one stderr line naming the TLS failure, no traceback."""
        config, reason = failing
        proc = _check(config)
        assert proc.returncode == EXIT_START, proc.stderr
        line = one_error_line(proc)
        assert line.startswith("agentstream-worker: redis check failed:"), line
        assert "certificate verify failed" in line and reason in line, line

    def test_cli_fails_with_one_line(self, failing: tuple[Path, str]) -> None:
        """`agentstream stats` exits 1 with one stderr line naming the TLS failure, no traceback."""
        config, reason = failing
        proc = _stats(config)
        assert proc.returncode == EXIT_FAILED, proc.stderr
        assert proc.stdout == ""
        line = one_error_line(proc)
        assert line.startswith("agentstream: "), line
        assert "certificate verify failed" in line and reason in line, line


def test_running_worker_reports_a_bad_certificate_once(
    servers: Servers, pki: Pki, tmp_path: Path, stream_name: str
) -> None:
    """A worker facing an expired certificate logs one redis_unavailable line naming it, retries, and stops cleanly."""
    config = _config(
        tmp_path, servers("expired"), stream_name, {"ssl_ca_certs": str(pki.ca)}
    )
    worker = WorkerProcess(["--config", str(config)], cwd=tmp_path, env=_env())
    try:
        record = worker.wait_for_log("redis_unavailable", 20)
        assert record["level"] == "error"
        assert "certificate has expired" in record["error"], record
        assert "exception" not in record, record
        assert worker.is_running(), worker.tail()
        worker.terminate()
        assert worker.wait(15) == EXIT_OK, worker.tail()
        unavailable = [
            r for r in worker.logs() if r.get("event") == "redis_unavailable"
        ]
        assert len(unavailable) == 1, worker.tail()
        assert "Traceback" not in worker.stdout() + worker.stderr()
    finally:
        worker.close()


class TestNoSilentOptOut:
    def test_defaults_require_a_verified_certificate(self) -> None:
        """By default a rediss:// pool requires a verified certificate that matches the host name."""
        settings = load_settings(None, env={"AGENTSTREAM_REDIS__URL": "rediss://h/0"})
        assert settings.redis.ssl_cert_reqs == "required"
        assert settings.redis.ssl_check_hostname is True
        pool = pool_from_settings(settings.redis, socket_timeout_s=1, max_connections=1)
        try:
            kwargs = pool.sync_pool.connection_kwargs
            assert kwargs["ssl_cert_reqs"] == "required"
            assert kwargs["ssl_check_hostname"] is True
        finally:
            pool.close()

    @pytest.mark.parametrize(
        ("kind", "options", "status"),
        [
            # no CA given: the system store, which does not hold the test CA
            ("good", {}, EXIT_START),
            # "optional" still verifies a certificate the server shows
            (
                "good",
                {"ssl_ca_certs": "other_ca", "ssl_cert_reqs": "optional"},
                EXIT_START,
            ),
            (
                "expired",
                {"ssl_ca_certs": "ca", "ssl_cert_reqs": "optional"},
                EXIT_START,
            ),
            # ssl_check_hostname = false skips the name only, never the chain
            (
                "wrong_host",
                {"ssl_ca_certs": "ca", "ssl_check_hostname": False},
                EXIT_OK,
            ),
            (
                "expired",
                {"ssl_ca_certs": "ca", "ssl_check_hostname": False},
                EXIT_START,
            ),
            # the one explicit opt-out
            ("expired", {"ssl_cert_reqs": "none"}, EXIT_OK),
        ],
        ids=[
            "no-ca-uses-system-store",
            "optional-wrong-ca",
            "optional-expired",
            "no-hostname-check-wrong-host",
            "no-hostname-check-expired",
            "explicit-none",
        ],
    )
    def test_only_ssl_cert_reqs_none_skips_verification(
        self,
        servers: Servers,
        pki: Pki,
        tmp_path: Path,
        stream_name: str,
        kind: str,
        options: dict[str, Any],
        status: int,
    ) -> None:
        """Only an explicit ssl_cert_reqs = "none" accepts a certificate that does not verify."""
        resolved = {
            k: str(getattr(pki, v)) if k == "ssl_ca_certs" else v
            for k, v in options.items()
        }
        config = _config(tmp_path, servers(kind), stream_name, resolved)
        proc = _check(config)
        assert proc.returncode == status, proc.stdout[-500:] + proc.stderr
        if status != EXIT_OK:
            assert "certificate verify failed" in one_error_line(proc)

    @pytest.mark.parametrize(
        ("kind", "query"),
        [("expired", "ssl_cert_reqs=none"), ("wrong_host", "ssl_check_hostname=false")],
    )
    def test_url_query_cannot_disable_verification(
        self,
        servers: Servers,
        pki: Pki,
        tmp_path: Path,
        stream_name: str,
        kind: str,
        query: str,
    ) -> None:
        """A query string in redis.url cannot turn verification off behind the settings' back."""
        server = servers(kind)
        config = _config(tmp_path, server, stream_name, {"ssl_ca_certs": str(pki.ca)})
        text = config.read_text().replace(server.url, f"{server.url}?{query}")
        config.write_text(text, encoding="utf-8")
        proc = _check(config)
        # Refused as a configuration error naming the field, before connecting.
        assert proc.returncode == 78, proc.stdout[-300:] + proc.stderr
        assert "redis.url" in one_error_line(proc)


def test_tls_client_of_tests_really_verifies(servers: Servers, pki: Pki) -> None:
    """The test's own redis-py client refuses the expired certificate (the fixtures are what they claim)."""
    server = servers("expired")
    client = redis.Redis.from_url(server.url, ssl_ca_certs=str(pki.ca))
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="expired"):
            client.ping()
    finally:
        client.close()
