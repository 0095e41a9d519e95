"""Tests for agentstream.config: loading, validation, precedence, redaction."""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from agentstream.config import (
    RedisSettings,
    Settings,
    SubscriptionSettings,
    env_names,
    load_settings,
    redact_url,
    redacted,
)
from agentstream.errors import ConfigError
from agentstream.event_loop import backend_options

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
# The one intentional difference between config.example.toml and the defaults:
# the README's quick start runs the example app with that file.
EXAMPLE_APP = "examples.agent_app:app"
SECRET = "hunter2-do-not-print"

_TABLE_RE = re.compile(r"^(?:#\s*)?\[\[?([\w.]+)\]\]?$")
_KEY_RE = re.compile(r"^#?\s*(\w+)\s*=")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _defaults() -> Settings:
    return load_settings(None, env={})


def _section_model(annotation: object) -> type[pydantic.BaseModel] | None:
    """Return the model a field nests, directly or as list items."""
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType):  # an optional table
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    return None


def _model_keys(model: type[pydantic.BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        yield prefix + name
        section = _section_model(field.annotation)
        if section is not None:
            yield from _model_keys(section, f"{prefix}{name}.")


def _example_keys() -> set[str]:
    """Return the dotted keys the example sets or shows commented out."""
    keys: set[str] = set()
    table = ""
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        if header := _TABLE_RE.match(line.strip()):
            keys.add(header.group(1))
            table = header.group(1) + "."
        elif key := _KEY_RE.match(line.strip()):
            keys.add(table + key.group(1))
    return keys


class TestExampleFile:
    def test_lists_every_field(self) -> None:
        """config.example.toml shows every field of every model, and no other key."""
        assert _example_keys() == set(_model_keys(Settings))

    def test_values_are_the_defaults(self) -> None:
        """The example's uncommented values are the defaults, except for app."""
        example = load_settings(EXAMPLE, env={})

        assert example.app == EXAMPLE_APP
        assert example == _defaults().model_copy(update={"app": EXAMPLE_APP})


class TestLoadSettings:
    def test_no_file_means_defaults(self) -> None:
        """Without a file or environment, every field has its default."""
        settings = _defaults()

        assert settings.app is None
        assert settings.subscriptions == [SubscriptionSettings(stream="agent_output")]
        assert settings.redis == RedisSettings()

    def test_env_overrides_toml(self, tmp_path: Path) -> None:
        """Environment variables beat the file, nested with "__", per key."""
        path = _write(
            tmp_path,
            "consumers = 2\n[reaper]\nmin_idle_ms = 1000\nbatch = 7\n"
            '[redis]\nurl = "redis://file:6379/0"\n',
        )
        env = {
            "AGENTSTREAM_CONSUMERS": "8",
            "AGENTSTREAM_REAPER__MIN_IDLE_MS": "2000",
            "AGENTSTREAM_REDIS__MAX_CONNECTIONS": "3",
        }

        settings = load_settings(path, env=env)

        assert settings.consumers == 8
        assert settings.reaper.min_idle_ms == 2000
        assert settings.reaper.batch == 7
        assert settings.redis.url == "redis://file:6379/0"
        assert settings.redis.max_connections == 3

    def test_env_argument_replaces_os_environ(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """os.environ is read when env is None and ignored when env is given."""
        monkeypatch.setenv("AGENTSTREAM_CONSUMERS", "9")

        assert load_settings(None).consumers == 9
        assert load_settings(None, env={}).consumers == 4

    @pytest.mark.parametrize(
        ("name", "suggested"),
        [
            ("AGENTSTREAM_REDIS_URL", "AGENTSTREAM_REDIS__URL"),
            ("AGENTSTREAM_REAPER_MIN_IDLE_MS", "AGENTSTREAM_REAPER__MIN_IDLE_MS"),
            ("AGENTSTREAM_CONSUMER", "AGENTSTREAM_CONSUMERS"),
            ("agentstream_metrics_port", "AGENTSTREAM_METRICS__PORT"),
        ],
    )
    def test_env_name_that_matches_no_setting(self, name: str, suggested: str) -> None:
        """An AGENTSTREAM_ variable no setting reads is refused, naming the likely one."""
        with pytest.raises(ConfigError) as info:
            load_settings(None, env={name: "redis://elsewhere:6379/0"})

        message = str(info.value)
        assert f"environment variable {name} matches no setting" in message
        assert f"did you mean {suggested}?" in message
        assert "elsewhere" not in message  # never the value: it may be a secret

    def test_env_name_far_from_every_setting_gets_no_guess(self) -> None:
        """A variable like no setting is refused without a misleading suggestion."""
        with pytest.raises(ConfigError) as info:
            load_settings(None, env={"AGENTSTREAM_NOT_A_SETTING": "1"})

        assert "matches no setting" in str(info.value)
        assert "did you mean" not in str(info.value)

    def test_env_names_cover_every_setting(self) -> None:
        """Each name env_names() lists is read by load_settings, and only those."""
        names = env_names()
        assert "AGENTSTREAM_REDIS__PASSWORD_FILE" in names
        assert "AGENTSTREAM_SUBSCRIPTIONS" in names
        assert load_settings(None, env={"AGENTSTREAM_LOG__LEVEL": "debug"})
        assert load_settings(None, env={"OTHER_VAR": "x"}).consumers == 4

    def test_subscriptions_from_env_json(self) -> None:
        """A list-valued setting is read from the environment as JSON."""
        env = {"AGENTSTREAM_SUBSCRIPTIONS": '[{"stream": "a"}, {"stream": "b"}]'}

        settings = load_settings(None, env=env)

        assert [s.stream for s in settings.subscriptions] == ["a", "b"]

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config file that does not exist is an error, not a silent default."""
        with pytest.raises(ConfigError, match="not found"):
            load_settings(tmp_path / "absent.toml", env={})

    def test_directory_is_not_a_file(self, tmp_path: Path) -> None:
        """A directory given as the config file is an error."""
        with pytest.raises(ConfigError, match="not found"):
            load_settings(tmp_path, env={})

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A file that is not TOML is an error naming the file."""
        path = _write(tmp_path, "consumers = = 4\n")

        with pytest.raises(ConfigError, match="invalid TOML") as excinfo:
            load_settings(path, env={})

        assert str(path) in str(excinfo.value)

    def test_settings_are_frozen(self) -> None:
        """Loaded settings cannot be changed in place."""
        settings = _defaults()

        field = "consumers"

        with pytest.raises(pydantic.ValidationError, match="frozen"):
            setattr(settings, field, 2)


class TestValidation:
    @pytest.mark.parametrize(
        ("toml", "message"),
        [
            ("bogus = 1\n", "bogus: unknown key"),
            ("[redis]\nbogus = 1\n", "redis.bogus: unknown key"),
            ("[[subscriptions]]\nstream = 's'\nbogus = 1\n", "subscriptions[0].bogus"),
            ("[reaper]\nmin_idle_ms = 'soon'\n", "reaper.min_idle_ms: Input should"),
            ("[log]\nlevel = 'loud'\n", "log.level: Input should be"),
            (
                "[reaper]\nmin_idle_ms = 0\n",
                "reaper.min_idle_ms: Input should be greater than or equal to 10",
            ),
            ("batch_size = 10001\n", "batch_size: Input should be less than"),
            ("[metrics]\nport = 70000\n", "metrics.port: Input should be less"),
            ("[redis]\nurl = 'http://localhost'\n", "redis.url: must start with"),
            ("app = 'no_colon'\n", "app: must look like"),
            ("subscriptions = []\n", "subscriptions: List should have at least 1"),
            ("[[subscriptions]]\ngroup = 'g'\n", "subscriptions[0].stream: Field"),
            ("[[subscriptions]]\nstream = ''\n", "subscriptions[0].stream: String"),
            (
                "[reaper]\nmin_idle_ms = 5000\nmax_backoff_ms = 4000\n",
                "reaper.max_backoff_ms: must be greater than or equal to min_idle_ms",
            ),
            (
                "block_ms = 5000\nshutdown_timeout_s = 5\n",
                "block_ms: must be less than shutdown_timeout_s * 1000",
            ),
            ("concurrency = 0\n", "concurrency: Input should be greater than"),
            ("concurrency = 100001\n", "concurrency: Input should be less than"),
            (
                "[[subscriptions]]\nstream = 's'\norder_key = 'run_id'\n",
                "subscriptions[0].order_key: String should match",
            ),
            (
                "[[subscriptions]]\nstream = 's'\norder_key = 'data..run'\n",
                "subscriptions[0].order_key: String should match",
            ),
        ],
    )
    def test_error_names_dotted_field(
        self, tmp_path: Path, toml: str, message: str
    ) -> None:
        """An invalid value is one ConfigError line starting with the field path."""
        with pytest.raises(ConfigError) as excinfo:
            load_settings(_write(tmp_path, toml), env={})

        assert str(excinfo.value).startswith(message)
        assert "\n" not in str(excinfo.value)

    def test_env_error_names_dotted_field(self) -> None:
        """An invalid environment value is reported like one from the file."""
        env = {"AGENTSTREAM_REAPER__MIN_IDLE_MS": "-1"}

        with pytest.raises(ConfigError, match=r"^reaper\.min_idle_ms: "):
            load_settings(None, env=env)

    def test_unparsable_env_json(self) -> None:
        """A list setting that is not JSON in the environment names the field."""
        env = {"AGENTSTREAM_SUBSCRIPTIONS": "agent_output"}

        with pytest.raises(ConfigError, match="^subscriptions: "):
            load_settings(None, env=env)

    def test_uvloop_event_loop_needs_the_package(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """event_loop = "uvloop" with a uvloop that does not import (missing,
        or broken) is refused, naming the fix; auto falls back to asyncio's own
        loop."""
        monkeypatch.setitem(sys.modules, "uvloop", None)  # import raises ImportError
        env = {"AGENTSTREAM_EVENT_LOOP": "uvloop"}

        with pytest.raises(ConfigError, match=r"^event_loop: .*pip install uvloop"):
            load_settings(None, env=env)
        auto = load_settings(None, env={"AGENTSTREAM_EVENT_LOOP": "auto"})
        assert backend_options(auto.event_loop) == {"use_uvloop": False}
        assert backend_options("asyncio") == {}

    def test_duplicate_subscription(self, tmp_path: Path) -> None:
        """The same (stream, group) pair may be subscribed only once."""
        path = _write(
            tmp_path,
            "[[subscriptions]]\nstream = 'a'\n[[subscriptions]]\nstream = 'a'\n",
        )

        with pytest.raises(ConfigError, match="^subscriptions: entry 1 repeats"):
            load_settings(path, env={})

    def test_same_stream_other_group(self, tmp_path: Path) -> None:
        """One stream may be read by two different groups."""
        path = _write(
            tmp_path,
            "[[subscriptions]]\nstream = 'a'\n"
            "[[subscriptions]]\nstream = 'a'\ngroup = 'audit'\n",
        )

        assert len(load_settings(path, env={}).subscriptions) == 2

    def test_dead_letter_key(self) -> None:
        """The dead-letter stream defaults to "{stream}:dlq" and can be named."""
        assert SubscriptionSettings(stream="s").dead_letter_key == "s:dlq"
        named = SubscriptionSettings(stream="s", dead_letter_stream="failed")
        assert named.dead_letter_key == "failed"


class TestPassword:
    def test_password_file_is_read_and_stripped(self, tmp_path: Path) -> None:
        """The password file's content, stripped, becomes the password at load."""
        secret_file = tmp_path / "redis-password"
        secret_file.write_text(f"  {SECRET}\n", encoding="utf-8")
        path = _write(tmp_path, f"[redis]\npassword_file = '{secret_file}'\n")

        settings = load_settings(path, env={})
        secret_file.unlink()

        assert settings.redis.resolved_password() == SECRET

    def test_password_from_env(self) -> None:
        """A password given directly is returned by resolved_password()."""
        settings = load_settings(None, env={"AGENTSTREAM_REDIS__PASSWORD": SECRET})

        assert settings.redis.resolved_password() == SECRET
        assert _defaults().redis.resolved_password() is None

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (None, "cannot read file"),
            (b" \n", "file is empty"),
            (b"\xff" + SECRET.encode(), "file is not valid UTF-8"),
        ],
    )
    def test_bad_password_file(
        self, tmp_path: Path, content: bytes | None, message: str
    ) -> None:
        """A missing, empty or undecodable password file names redis.password_file."""
        secret_file = tmp_path / "redis-password"
        if content is not None:
            secret_file.write_bytes(content)
        env = {"AGENTSTREAM_REDIS__PASSWORD_FILE": str(secret_file)}

        with pytest.raises(ConfigError) as excinfo:
            load_settings(None, env=env)

        assert str(excinfo.value).startswith(f"redis.password_file: {message}")
        assert SECRET not in str(excinfo.value)

    def test_password_and_password_file(self, tmp_path: Path) -> None:
        """Setting both password and password_file is an error."""
        secret_file = tmp_path / "redis-password"
        secret_file.write_text(SECRET, encoding="utf-8")
        env = {
            "AGENTSTREAM_REDIS__PASSWORD": SECRET,
            "AGENTSTREAM_REDIS__PASSWORD_FILE": str(secret_file),
        }

        with pytest.raises(ConfigError, match=r"^redis\.password_file: set") as exc:
            load_settings(None, env=env)

        assert SECRET not in str(exc.value)

    @pytest.mark.parametrize(
        "toml",
        [
            f"[redis]\npassword = ['{SECRET}']\n",
            f"[redis]\npassword = '{SECRET}'\nbogus = '{SECRET}'\n",
            f"[redis]\nurl = 'http://user:{SECRET}@localhost'\n",
            f"[redis]\nurl = 'redis://user:{SECRET}@localhost'\nmax_connections = 0\n",
        ],
    )
    def test_secret_not_in_error(self, tmp_path: Path, toml: str) -> None:
        """A ConfigError never repeats the input, so never a password."""
        with pytest.raises(ConfigError) as excinfo:
            load_settings(_write(tmp_path, toml), env={})

        assert SECRET not in str(excinfo.value)


class TestRedaction:
    def test_redacted_masks_every_secret(self, tmp_path: Path) -> None:
        """redacted() is JSON-able and shows neither the password nor the URL's."""
        env = {
            "AGENTSTREAM_REDIS__URL": f"rediss://user:{SECRET}@redis:6380/0",
            "AGENTSTREAM_REDIS__PASSWORD": SECRET,
        }
        settings = load_settings(None, env=env)

        data = redacted(settings)

        assert SECRET not in json.dumps(data)
        assert data["redis"]["password"] == "***"
        assert data["redis"]["url"] == "rediss://user:***@redis:6380/0"
        assert data["reaper"] == settings.reaper.model_dump(mode="json")

    def test_redacted_without_password(self) -> None:
        """With no password set, redacted() shows it as null."""
        data = redacted(_defaults())

        assert data["redis"]["password"] is None
        assert data["redis"]["url"] == "redis://localhost:6379/0"

    def test_redacted_hides_password_file_content(self, tmp_path: Path) -> None:
        """redacted() shows the password file's path but not its content."""
        secret_file = tmp_path / "redis-password"
        secret_file.write_text(SECRET, encoding="utf-8")
        env = {"AGENTSTREAM_REDIS__PASSWORD_FILE": str(secret_file)}

        data = redacted(load_settings(None, env=env))

        assert SECRET not in json.dumps(data)
        assert data["redis"]["password_file"] == str(secret_file)

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("redis://localhost:6379/0", "redis://localhost:6379/0"),
            ("redis://user@localhost:6379/0", "redis://user@localhost:6379/0"),
            ("redis://user:pw@localhost:6379/0", "redis://user:***@localhost:6379/0"),
            ("redis://:pw@localhost", "redis://:***@localhost"),
            ("rediss://u:p@ss/w@rd@host:6380", "rediss://u:***@host:6380"),
            ("unix://:pw@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
            (
                "unix:///run/redis.sock?password=pw&db=1",
                "unix:///run/redis.sock?password=***&db=1",
            ),
            ("redis://host/0?db=1&Password=pw", "redis://host/0?db=1&Password=***"),
        ],
    )
    def test_redact_url(self, url: str, expected: str) -> None:
        """redact_url() masks a password in the user info or the query string only."""
        assert redact_url(url) == expected
