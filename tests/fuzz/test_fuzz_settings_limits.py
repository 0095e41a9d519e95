"""Extreme and inconsistent settings: a clear refusal, or values the code can use.

Hypothesis feeds the settings models infinities, NaN, zero, negatives, tiny and
huge numbers, dead-letter streams that collide with subscribed streams, and TLS
options on plain URLs. ``load_settings`` must refuse with a ``ConfigError`` that
names the field (the worker's exit 78), or return settings every consumer, reaper
and lease can run with: finite, within what Redis and the OS accept, consistent.
A few accepted extremes then run a real worker that handles an event.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstream.config import Settings, load_settings
from agentstream.errors import ConfigError

_E2E_DIR = str(Path(__file__).resolve().parent.parent / "e2e")
if _E2E_DIR not in sys.path:
    sys.path.insert(0, _E2E_DIR)

from worker_harness import E2E, xadd_events

pytestmark = pytest.mark.fuzz

INT64 = 2**63 - 1

#: Environment variable -> the field path an error must name.
NUMBERS = {
    "AGENTSTREAM_NAME_LEASE_S": "name_lease_s",
    "AGENTSTREAM_HANDLER_TIMEOUT_S": "handler_timeout_s",
    "AGENTSTREAM_SHUTDOWN_TIMEOUT_S": "shutdown_timeout_s",
    "AGENTSTREAM_BLOCK_MS": "block_ms",
    "AGENTSTREAM_ACK_INTERVAL_MS": "ack_interval_ms",
    "AGENTSTREAM_CONSUMERS": "consumers",
    "AGENTSTREAM_PROCESSES": "processes",
    "AGENTSTREAM_SYNC_THREADS": "sync_threads",
    "AGENTSTREAM_REAPER__INTERVAL_S": "reaper.interval_s",
    "AGENTSTREAM_REAPER__MIN_IDLE_MS": "reaper.min_idle_ms",
    "AGENTSTREAM_REAPER__MAX_BACKOFF_MS": "reaper.max_backoff_ms",
    "AGENTSTREAM_REAPER__CONSUMER_TTL_S": "reaper.consumer_ttl_s",
    "AGENTSTREAM_REAPER__ERROR_TTL_S": "reaper.error_ttl_s",
    "AGENTSTREAM_REAPER__MAX_DELIVERIES": "reaper.max_deliveries",
    "AGENTSTREAM_REDIS__SOCKET_CONNECT_TIMEOUT_S": "redis.socket_connect_timeout_s",
}

EXTREMES = (
    st.sampled_from(
        ["inf", "-inf", "nan", "0", "-1", "1e-9", "0.0001", "1e20", "1e308", "9" * 30]
    )
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.integers(-(2**70), 2**70).map(str)
)


@st.composite
def subscriptions(draw: st.DrawFn) -> list[dict[str, str]]:
    streams = draw(
        st.lists(
            st.sampled_from(["a", "b", "a:dlq", "b:dlq"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    subs = []
    for stream in streams:
        sub = {"stream": stream}
        dlq = draw(st.none() | st.sampled_from(["a", "b", "a:dlq", "b:dlq", "x"]))
        if dlq is not None:
            sub["dead_letter_stream"] = dlq
        subs.append(sub)
    return subs


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    env = {
        "AGENTSTREAM_REDIS__URL": draw(
            st.sampled_from(
                [
                    "redis://127.0.0.1:1/0",
                    "rediss://127.0.0.1:1/0",
                    "unix:///nowhere.sock",
                ]
            )
        )
    }
    for name in draw(
        st.lists(st.sampled_from(sorted(NUMBERS)), max_size=4, unique=True)
    ):
        env[name] = draw(EXTREMES)
    if draw(st.booleans()):
        env["AGENTSTREAM_SUBSCRIPTIONS"] = json.dumps(draw(subscriptions()))
    if draw(st.booleans()):
        tls = draw(
            st.sampled_from(
                ["SSL_CA_CERTS", "SSL_CERTFILE", "SSL_CERT_REQS", "SSL_CHECK_HOSTNAME"]
            )
        )
        value = {"SSL_CERT_REQS": "none", "SSL_CHECK_HOSTNAME": "false"}.get(
            tls, "/etc/ssl/ca.pem"
        )
        env[f"AGENTSTREAM_REDIS__{tls}"] = value
    return env


def assert_runnable(s: Settings) -> None:
    """What the code does with the values, checked against what it can take."""
    floats = [
        s.name_lease_s, s.handler_timeout_s, s.shutdown_timeout_s,
        s.reaper.interval_s, s.reaper.consumer_ttl_s, s.reaper.error_ttl_s,
        s.redis.socket_connect_timeout_s,
    ]  # fmt: skip
    assert all(math.isfinite(v) and v > 0 for v in floats)
    # Redis takes milliseconds as 64-bit integers, and a TTL of at least 1 ms.
    for ms in (
        int(s.name_lease_s * 1000),
        int(s.reaper.error_ttl_s * 1000),
        int(s.reaper.consumer_ttl_s * 1000),
        s.reaper.min_idle_ms,
        s.reaper.max_backoff_ms,
        s.block_ms,
    ):
        assert 1 <= ms <= INT64
    # A lease renewed every third of its life needs at least a few hundred ms.
    assert s.name_lease_s / 3 >= 0.3
    assert s.reaper.min_idle_ms / 3000 > 0
    streams = {sub.stream for sub in s.subscriptions}
    assert not streams & {sub.dead_letter_key for sub in s.subscriptions}
    if not s.redis.url.startswith("rediss://"):
        assert s.redis.ssl_ca_certs is None and s.redis.ssl_certfile is None
        assert s.redis.ssl_cert_reqs == "required" and s.redis.ssl_check_hostname


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=environments())
def test_extreme_settings_are_refused_by_name_or_usable(env: dict[str, str]) -> None:
    """Every generated environment loads to runnable settings or fails naming a field."""
    try:
        loaded = load_settings(None, env)
    except ConfigError as exc:
        message = str(exc)
        named = [
            f
            for f in [*NUMBERS.values(), "subscriptions", "redis."]
            if message.startswith(f)
        ]
        assert named, message
        assert "Traceback" not in message and "\n" not in message
        return
    assert_runnable(loaded)


@pytest.mark.parametrize(
    ("setting", "value", "field"),
    [
        ("AGENTSTREAM_NAME_LEASE_S", "inf", "name_lease_s"),
        ("AGENTSTREAM_NAME_LEASE_S", "0.0001", "name_lease_s"),
        ("AGENTSTREAM_REAPER__ERROR_TTL_S", "inf", "reaper.error_ttl_s"),
        ("AGENTSTREAM_REAPER__CONSUMER_TTL_S", "inf", "reaper.consumer_ttl_s"),
        (
            "AGENTSTREAM_REAPER__MIN_IDLE_MS",
            "100000000000000000000",
            "reaper.min_idle_ms",
        ),
        ("AGENTSTREAM_REDIS__SSL_CA_CERTS", "/etc/ssl/ca.pem", "redis.ssl_ca_certs"),
        (
            "AGENTSTREAM_SUBSCRIPTIONS",
            '[{"stream": "s", "dead_letter_stream": "s"}]',
            "subscriptions",
        ),
    ],
)
def test_the_reported_inputs_exit_78_naming_the_field(
    tmp_path: Path,
    redis_url: str,
    stream_name: str,
    setting: str,
    value: str,
    field: str,
) -> None:
    e2e = E2E(tmp_path, redis_url, stream_name)
    try:
        status, worker = e2e.run(
            ["--config", str(e2e.write_config())], env={setting: value}
        )
        assert status == 78, worker.tail()
        assert f"configuration error: {field}" in worker.stderr(), worker.tail()
    finally:
        e2e.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    "overrides",
    [
        {
            "name_lease_s": 1.0,
            "reaper": {
                "min_idle_ms": 10,
                "consumer_ttl_s": 0.001,
                "error_ttl_s": 0.001,
                "interval_s": 0.01,
            },
        },
        {
            "name_lease_s": 86_400.0,
            "reaper": {
                "min_idle_ms": 7 * 86_400_000,
                "max_backoff_ms": 30 * 86_400_000,
                "consumer_ttl_s": 365 * 86_400.0,
                "error_ttl_s": 365 * 86_400.0,
            },
        },
    ],
    ids=["smallest", "largest"],
)
def test_accepted_extremes_run_a_worker(
    tmp_path: Path, redis_url: str, stream_name: str, overrides: dict[str, Any]
) -> None:
    """The bounds themselves: the worker starts, handles an event, stops cleanly."""
    e2e = E2E(tmp_path, redis_url, stream_name)
    try:
        worker = e2e.start(e2e.write_config(overrides))
        worker.wait_for_log("worker_started", 20)
        xadd_events(e2e.client, stream_name, "ok", [{"n": 1}])
        worker.wait_for_log(lambda r: "1" in e2e.recorder.handled(), 20)
        worker.terminate()
        assert worker.wait(20) == 0, worker.tail()
        assert "Traceback" not in worker.stdout() + worker.stderr()
    finally:
        e2e.close()
