"""Configuration fuzzing: random TOML files and environments never give a traceback.

``agentstream-worker --config FILE --check`` runs in-process
(``agentstream.cli.run_worker``) on documents Hypothesis builds from the real
settings' fields with right and wrong values, unknown keys, junk types, TOML
that does not parse and bytes that are not UTF-8, and with random
``AGENTSTREAM_*`` variables. Every run must end with exit 78 and one stderr
line naming the field (or the file), or with exit 3 and one line saying Redis
could not be reached: every ``redis.url`` points at a closed loopback port or a
missing socket, so no run ever talks to a real Redis. A few documents also go
through the real console script.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentstream.cli import EXIT_CONFIG, EXIT_STARTUP, run_worker
from agentstream.config import Settings, load_settings
from agentstream.errors import ConfigError

_E2E_DIR = str(Path(__file__).resolve().parent.parent / "e2e")
if _E2E_DIR not in sys.path:
    sys.path.insert(0, _E2E_DIR)

from worker_harness import to_toml

pytestmark = pytest.mark.fuzz

APP_MODULE = "fuzz_cfg_app"
SECRET = "cfg-fuzz-S3cr3t-pw"
WORKER = str(Path(sys.executable).parent / "agentstream-worker")

#: The top-level settings, and the sections' fields: what an error may name.
TOP_LEVEL = frozenset(Settings.model_fields)
_FIELD_RE = re.compile(r"^(?P<head>[A-Za-z_]\w*)(\[\d+\]|\.\w+)*: \S")


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released, by us)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class World:
    """The files and the closed port every generated configuration points at."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _closed_port()
        (directory / f"{APP_MODULE}.py").write_text(
            "from agentstream import App\napp = App()\nnothing = None\n",
            encoding="utf-8",
        )
        self.password_file = directory / "password"
        self.password_file.write_text(SECRET + "-file\n", encoding="utf-8")
        (directory / "empty-password").write_text("\n", encoding="utf-8")
        (directory / "latin1-password").write_bytes(b"caf\xe9\n")
        self.socket = directory / "no-such.sock"

    @property
    def safe_urls(self) -> list[str]:
        """URLs that fail fast and touch nothing: a closed port, a missing socket."""
        p = self.port
        return [
            f"redis://127.0.0.1:{p}/0",
            f"redis://127.0.0.1:{p}",
            f"redis://user:{SECRET}@127.0.0.1:{p}/3",
            f"redis://:{SECRET}@127.0.0.1:{p}/0?password={SECRET}",
            f"rediss://127.0.0.1:{p}/0",
            f"unix://{self.socket}",
            f"unix://{self.socket}?db=2",
        ]

    def is_safe(self, settings: Settings) -> bool:
        """Whether a loaded configuration can only reach nothing."""
        parts = urlsplit(settings.redis.url)
        if parts.scheme.lower() == "unix":
            return parts.path == str(self.socket)
        return parts.hostname == "127.0.0.1" and parts.port == self.port


_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)


def _text(min_size: int = 0, max_size: int = 8) -> st.SearchStrategy[str]:
    # Basic Multilingual Plane only: worker_harness.to_toml writes JSON escapes,
    # and TOML has no surrogate pairs for the characters beyond it.
    alphabet = st.characters(max_codepoint=0xFFFF, blacklist_categories=_SURROGATES)
    return st.text(alphabet, min_size=min_size, max_size=max_size)


def _junk() -> st.SearchStrategy[Any]:
    """Values of the wrong type, for any field."""
    return st.one_of(
        _text(max_size=10),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(),
        st.booleans(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(_text(max_size=5), st.integers(), max_size=2),
    )


def _either(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], valid: bool
) -> st.SearchStrategy[Any]:
    """``good`` only in a valid document, else ``good`` or ``bad``."""
    return good if valid else good | bad | _junk()


def _ints(low: int, high: int, valid: bool) -> st.SearchStrategy[Any]:
    return _either(st.integers(low, high), st.integers(-5, low - 1), valid)


def _floats(valid: bool) -> st.SearchStrategy[Any]:
    good = st.floats(min_value=0.5, max_value=100) | st.sampled_from([math.inf])
    return _either(good, st.sampled_from([0.0, -1.0, math.nan, -math.inf]), valid)


def _table(
    fields: dict[str, st.SearchStrategy[Any]], valid: bool
) -> st.SearchStrategy[dict[str, Any]]:
    """Some of ``fields``, plus now and then an unknown key."""
    extra = {} if valid else {"unknown_key": st.integers()}
    return st.fixed_dictionaries({}, optional={**fields, **extra})


def _documents(world: World, valid: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Documents whose values are all valid, or right and wrong mixed."""
    text = _text(min_size=1)
    password_files = _either(
        st.just(str(world.password_file)),
        st.sampled_from(
            [
                str(world.dir / "empty-password"),
                str(world.dir / "latin1-password"),
                str(world.dir / "missing-password"),
                str(world.dir),
            ]
        ),
        valid,
    )
    subscription = _table(
        {
            "stream": _either(text, st.just(""), valid),
            "group": _either(text, st.just(""), valid),
            "dead_letter_stream": _either(text, st.just(""), valid),
            "dead_letter_max_len": _ints(1, 10**6, valid),
        },
        valid,
    ).map(lambda sub: {"stream": "s", **sub} if valid else sub)
    secrets: st.SearchStrategy[dict[str, Any]] = (
        st.fixed_dictionaries({"password": st.just(SECRET)})
        | st.fixed_dictionaries({"password_file": password_files})
        | st.just({})
    )
    if not valid:
        secrets = st.fixed_dictionaries(
            {}, optional={"password": st.just(SECRET), "password_file": password_files}
        )
    redis = st.builds(
        lambda base, secret: {**base, **secret},
        st.fixed_dictionaries(
            # url always present: the default would be localhost:6379
            {"url": st.sampled_from(world.safe_urls)},
            optional={
                "username": _either(text, st.just(7), valid),
                "ssl_ca_certs": _text(),
                "ssl_cert_reqs": _either(
                    st.sampled_from(["required", "optional", "none"]),
                    st.just("no"),
                    valid,
                ),
                "ssl_check_hostname": _either(st.booleans(), st.just("yes"), valid),
                "socket_connect_timeout_s": _either(
                    st.floats(0.05, 1.0), st.sampled_from([0, -1]), valid
                ),
                "max_connections": _ints(1, 100, valid),
                **({} if valid else {"unknown_key": st.integers()}),
            },
        ),
        secrets,
    )
    top: dict[str, st.SearchStrategy[Any]] = {
        "processes": _ints(1, 4, valid),
        "consumers": _ints(1, 8, valid),
        "batch_size": _ints(1, 10_000, valid),
        "block_ms": _ints(1, 100_000, valid),
        "ack_interval_ms": _ints(1, 1000, valid),
        "handler_timeout_s": _floats(valid),
        "shutdown_timeout_s": _floats(valid),
        "sync_threads": _ints(1, 64, valid),
        "unhandled": _either(
            st.sampled_from(["ack", "dead_letter"]), st.just("drop"), valid
        ),
        "name_prefix": _either(text, st.just(""), valid),
        "name_lease_s": _floats(valid),
        "subscriptions": _either(
            st.lists(subscription, min_size=1, max_size=3), st.just([]), valid
        ),
        "reaper": _either(
            _table(
                {
                    "interval_s": _floats(valid),
                    "min_idle_ms": _ints(1, 10**6, valid),
                    "batch": _ints(1, 1000, valid),
                    "max_deliveries": _ints(1, 10, valid),
                    "max_backoff_ms": _ints(1, 10**7, valid),
                    "consumer_ttl_s": _floats(valid),
                    "error_ttl_s": _floats(valid),
                },
                valid,
            ),
            st.nothing(),
            valid,
        ),
        "metrics": _either(
            _table(
                {
                    "enabled": _either(st.booleans(), st.just(1), valid),
                    "host": _either(text, st.just(5), valid),
                    "port": _ints(0, 65_535, valid),
                },
                valid,
            ),
            st.nothing(),
            valid,
        ),
        "log": _either(
            _table(
                {
                    "level": _either(
                        st.sampled_from(["debug", "info", "warning", "error"]),
                        st.just("trace"),
                        valid,
                    ),
                    "format": _either(
                        st.sampled_from(["auto", "json", "console"]),
                        st.just("xml"),
                        valid,
                    ),
                },
                valid,
            ),
            st.nothing(),
            valid,
        ),
    }
    if not valid:
        top["unknown_top"] = st.integers()
    app = _either(
        st.just(f"{APP_MODULE}:app"),
        st.sampled_from(
            [
                f"{APP_MODULE}:nothing",
                f"{APP_MODULE}:missing",
                "fuzz_cfg_no_such_module:app",
                APP_MODULE,
                "1bad:app",
                "",
            ]
        ),
        valid,
    )
    return st.fixed_dictionaries({"app": app, "redis": redis}, optional=top)


_ENV_VALUE = st.text(
    alphabet=st.characters(
        blacklist_categories=_SURROGATES, blacklist_characters="\x00"
    ),
    max_size=12,
)


def _environments(world: World, valid: bool) -> st.SearchStrategy[dict[str, str]]:
    """AGENTSTREAM_* variables: valid values only, or junk mixed in."""

    def var(good: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return good if valid else good | _ENV_VALUE

    optional = {
        "AGENTSTREAM_PROCESSES": var(st.sampled_from(["1", "2"])),
        "AGENTSTREAM_BATCH_SIZE": var(st.sampled_from(["10", "10000"])),
        "AGENTSTREAM_UNHANDLED": var(st.sampled_from(["ack", "dead_letter"])),
        "AGENTSTREAM_REDIS__URL": st.sampled_from(world.safe_urls),
        "AGENTSTREAM_REDIS__SOCKET_CONNECT_TIMEOUT_S": var(st.just("0.2")),
        "AGENTSTREAM_REDIS__MAX_CONNECTIONS": var(st.just("3")),
        "AGENTSTREAM_REAPER__INTERVAL_S": var(st.just("1.5")),
        "AGENTSTREAM_LOG__LEVEL": var(st.sampled_from(["debug", "error"])),
        "AGENTSTREAM_METRICS": var(st.just('{"port": 1}')),
        "AGENTSTREAM_SUBSCRIPTIONS": var(st.just('[{"stream": "s"}]')),
    }
    if not valid:
        # a name that matches no setting is refused, whatever its value
        optional["AGENTSTREAM_NOT_A_SETTING"] = _ENV_VALUE
        # besides a password_file in the file, a conflict (and a secret to hide)
        optional["AGENTSTREAM_REDIS__PASSWORD"] = st.just(SECRET)
        optional["AGENTSTREAM_SUBSCRIPTIONS"] = _ENV_VALUE | st.sampled_from(
            ["[", '[{"x": 1}]', "{}", '[{"stream": ""}]']
        )
    return st.fixed_dictionaries({}, optional=optional)


def _raw_documents() -> st.SearchStrategy[bytes]:
    """Files that are not a TOML table: broken syntax, stray bytes."""
    return st.one_of(
        st.binary(max_size=60),
        st.text(max_size=60).map(str.encode),
        st.sampled_from(
            [
                b"app = ",
                b"[redis",
                b"[[subscriptions]]\nstream = 1 2",
                b"\xff\xfe",
                b"a = 1\na = 2",
            ]
        ),
    )


@pytest.fixture(name="world")
def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The working directory with the app, and no AGENTSTREAM_* variable set."""
    for name in list(os.environ):
        if name.upper().startswith("AGENTSTREAM"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    world = World(tmp_path)
    try:
        yield world
    finally:
        structlog.reset_defaults()  # run_worker configured it for capsys' stream


def _check_outcome(status: int, out: str, err: str, path: Path) -> None:
    """The contract of a --check run on a random configuration."""
    context = f"status {status}\nstdout:\n{out[-2000:]}\nstderr:\n{err}"
    assert "Traceback" not in out + err, context
    assert SECRET not in out + err, context
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, context
    line = lines[0]
    if status == EXIT_CONFIG:
        prefix = "agentstream-worker: configuration error: "
        assert line.startswith(prefix), context
        what = line.removeprefix(prefix)
        if what.startswith(str(path)):
            return  # the file itself: not TOML, not UTF-8
        if what.startswith("environment variable AGENTSTREAM_"):
            assert "matches no setting" in what, context
            return  # a variable no setting reads
        match = _FIELD_RE.match(what)
        assert match, context
        # a setting, or a key the file or the environment should not have
        assert match["head"] in TOP_LEVEL or what.endswith(": unknown key"), context
    else:
        assert status == EXIT_STARTUP, context
        assert line.startswith("agentstream-worker: redis check failed: "), context


def _run_check(world: World, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run --check in-process on ``path`` (if it can only reach nothing)."""
    try:
        loaded = load_settings(path)
    except ConfigError:
        pass
    else:
        assert world.is_safe(loaded), f"generated an unsafe URL: {loaded.redis.url}"
    capsys.readouterr()
    status = run_worker(["--config", str(path), "--check"])
    out, err = capsys.readouterr()
    event(f"exit {status}")
    _check_outcome(status, out, err, path)


_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(data=st.data())
def test_random_configurations_give_78_or_3_with_one_line(
    world: World, capsys: pytest.CaptureFixture[str], data: st.DataObject
) -> None:
    """Random TOML documents and AGENTSTREAM_* values end in exit 78 naming the field, or 3, in one line and never a traceback."""
    path = world.dir / "worker.toml"
    valid = data.draw(st.booleans(), label="valid values only")
    env = data.draw(_environments(world, valid), label="environment")
    if data.draw(st.integers(0, 9), label="raw") == 0:
        path.write_bytes(data.draw(_raw_documents(), label="raw document"))
        # it may parse, with no redis.url: keep the default's localhost away
        env.setdefault("AGENTSTREAM_REDIS__URL", world.safe_urls[0])
    else:
        document = data.draw(_documents(world, valid), label="document")
        path.write_text(to_toml(document), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        _run_check(world, path, capsys)


@pytest.fixture(name="safe_env")
def _safe_env(world: World) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith("AGENTSTREAM")
    }
    env.pop("PYTHONPATH", None)
    return env


def _document(world: World, **overrides: Any) -> str:
    base: dict[str, Any] = {
        "app": f"{APP_MODULE}:app",
        "redis": {"url": world.safe_urls[0], "socket_connect_timeout_s": 0.5},
    }
    base.update(overrides)
    return to_toml(base)


@pytest.mark.parametrize(
    ("content", "env", "status"),
    [
        ("valid", {}, EXIT_STARTUP),
        ("app = ", {}, EXIT_CONFIG),
        (b"\xff\xfe", {}, EXIT_CONFIG),
        ("unknown", {}, EXIT_CONFIG),
        ("valid", {"AGENTSTREAM_SUBSCRIPTIONS": "[{"}, EXIT_CONFIG),
        ("valid", {"AGENTSTREAM_REAPER__MIN_IDLE_MS": "soon"}, EXIT_CONFIG),
        ("password_file", {}, EXIT_CONFIG),
    ],
    ids=[
        "closed-port",
        "bad-toml",
        "not-utf8",
        "unknown-key",
        "bad-env-json",
        "bad-env-int",
        "missing-password-file",
    ],
)
def test_console_script_on_fuzzed_shapes(
    world: World,
    safe_env: dict[str, str],
    content: str | bytes,
    env: dict[str, str],
    status: int,
) -> None:
    """The real agentstream-worker keeps the same contract as the in-process runs: one line, the field, no traceback."""
    path = world.dir / "worker.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "valid":
        path.write_text(_document(world), encoding="utf-8")
    elif content == "unknown":
        path.write_text(_document(world, reaper={"min_idel_ms": 1}), encoding="utf-8")
    elif content == "password_file":
        doc = _document(world)
        doc = doc.replace("[redis]\n", f'[redis]\npassword_file = "{world.dir}/nope"\n')
        path.write_text(doc, encoding="utf-8")
    else:
        path.write_text(content, encoding="utf-8")
    proc = subprocess.run(
        [WORKER, "--config", str(path), "--check"],
        cwd=world.dir,
        env={**safe_env, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == status, proc.stderr
    _check_outcome(proc.returncode, proc.stdout, proc.stderr, path)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:99999/0",
        "redis://127.0.0.1:port/0",
        "redis://[::1/0",
        "redis://127.0.0.1:{port}/0?db=abc",
        "redis://127.0.0.1:{port}/0?socket_timeout=soon",
        "redis://127.0.0.1:{port}/0?no_such_option=1",
        "REDIS://127.0.0.1:{port}/0",
    ],
)
def test_malformed_urls_are_configuration_errors(
    world: World, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """A redis.url that cannot be used is a configuration error: exit 78, one line naming redis.url."""
    path = world.dir / "worker.toml"
    doc = _document(world).replace(world.safe_urls[0], url.format(port=world.port))
    path.write_text(doc, encoding="utf-8")
    try:
        status = run_worker(["--config", str(path), "--check"])
    except Exception as exc:  # noqa: BLE001 - what the bug looks like in-process
        pytest.fail(f"run_worker raised {type(exc).__name__}: {exc}")
    out, err = capsys.readouterr()
    assert status == EXIT_CONFIG, err
    _check_outcome(status, out, err, path)
    assert "redis.url" in err
