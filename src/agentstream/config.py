"""Settings models and the one function that loads them."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

__all__ = [
    "LogSettings",
    "MetricsSettings",
    "ReaperSettings",
    "RedisSettings",
    "Settings",
    "SubscriptionSettings",
    "load_settings",
    "redact_url",
    "redacted",
]

_SECTION = ConfigDict(frozen=True, extra="forbid")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_APP_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MASK = "***"


def _field_error(field: str, message: str) -> PydanticCustomError:
    # A model validator's error is located at the model; ctx["field"] lets
    # load_settings() still name the field (see _describe).
    return PydanticCustomError("invalid_setting", message, {"field": field})


class RedisSettings(BaseModel):
    """How to reach Redis.

    Attributes:
        url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL.
        username: ACL user name, if not given in the URL.
        password: the password; prefer ``password_file`` outside development.
        password_file: a file whose stripped content is the password, read at load.
        ssl_ca_certs: CA bundle for verifying the server (``rediss://`` only).
        ssl_certfile: client certificate for mutual TLS.
        ssl_keyfile: private key of ``ssl_certfile``.
        ssl_cert_reqs: whether the server certificate must verify.
        ssl_check_hostname: whether the certificate must match the host name.
        socket_connect_timeout_s: how long to wait for a connection, in seconds.
        max_connections: size of the connection pool of each process.
    """

    model_config = _SECTION

    url: str = "redis://localhost:6379/0"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True
    socket_connect_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=64, ge=1)

    _file_password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url.startswith(_REDIS_SCHEMES):
            raise ValueError("must start with redis://, rediss:// or unix://")
        try:
            parts = urlsplit(url)
            port = parts.port  # raises for a port that is not 0..65535
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if parts.query or parts.fragment:
            # redis-py would let ?ssl_cert_reqs=none and friends override the
            # [redis] settings, certificate checks included.
            raise ValueError("must not carry ?options; use the [redis] settings")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// needs a socket path")
        else:
            if not parts.hostname or port == 0:
                raise ValueError("needs a host name and a port above 0")
            db = parts.path.lstrip("/")
            if db and not db.isdigit():
                raise ValueError("the database after the host must be a number")
        return url

    @model_validator(mode="after")
    def _read_password_file(self) -> Self:
        if self.password_file is None:
            return self
        if self.password is not None:
            msg = "set password or password_file, not both"
            raise _field_error("password_file", msg)
        try:
            content = self.password_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            # str(exc) would quote bytes of the secret
            raise _field_error("password_file", "file is not valid UTF-8") from exc
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise _field_error("password_file", f"cannot read file: {reason}") from exc
        if not content:
            raise _field_error("password_file", "file is empty")
        self._file_password = SecretStr(content)
        return self

    def resolved_password(self) -> str | None:
        """Return the password, from ``password`` or the ``password_file`` content.

        Returns:
            The password in clear text, or ``None`` when neither is set.
        """
        secret = self.password if self.password is not None else self._file_password
        return None if secret is None else secret.get_secret_value()


#: ``data.`` or ``metadata.`` followed by one or more dot-separated keys.
_ORDER_KEY_PATTERN = r"^(data|metadata)(\.[^.]+)+$"


class SubscriptionSettings(BaseModel):
    """One stream the worker reads as a member of a consumer group.

    Attributes:
        stream: the stream key.
        group: the consumer group, created at start if missing.
        dead_letter_stream: where failed events go; ``"{stream}:dlq"`` if unset.
        dead_letter_max_len: approximate cap on the dead-letter stream, in entries.
        order_key: a dotted path into the event (``"data.run_id"``,
            ``"metadata.conversation_id"``); within one worker process, events
            with the same key start in stream order and never overlap. Unset:
            no per-key order (``App(order_key=...)`` may still give one).
    """

    model_config = _SECTION

    stream: str = Field(min_length=1)
    group: str = Field(default="agents", min_length=1)
    dead_letter_stream: str | None = Field(default=None, min_length=1)
    dead_letter_max_len: int = Field(default=100_000, ge=1)
    order_key: str | None = Field(default=None, pattern=_ORDER_KEY_PATTERN)

    @property
    def dead_letter_key(self) -> str:
        """The dead-letter stream key: ``dead_letter_stream`` or ``"{stream}:dlq"``."""
        return self.dead_letter_stream or f"{self.stream}:dlq"


class ReaperSettings(BaseModel):
    """How stale pending entries are reclaimed or dead-lettered.

    Attributes:
        interval_s: pause between two reaper passes, in seconds.
        min_idle_ms: idle time after which a pending entry is stale, in ms.
        batch: pending entries examined per pass and stream.
        max_deliveries: deliveries after which an entry is dead-lettered.
        max_backoff_ms: cap on the redelivery backoff, in ms (>= ``min_idle_ms``).
        consumer_ttl_s: idle time after which a consumer with no pending
            entries is deleted from its group, in seconds.
        error_ttl_s: how long the last error of an entry is kept, in seconds.
    """

    model_config = _SECTION

    interval_s: float = Field(default=5.0, gt=0)
    min_idle_ms: int = Field(default=60_000, gt=0)
    batch: int = Field(default=100, gt=0)
    max_deliveries: int = Field(default=5, ge=1)
    max_backoff_ms: int = Field(default=3_600_000, gt=0)
    consumer_ttl_s: float = Field(default=3600.0, gt=0)
    error_ttl_s: float = Field(default=86400.0, gt=0)

    @model_validator(mode="after")
    def _check_backoff(self) -> Self:
        if self.max_backoff_ms < self.min_idle_ms:
            msg = "must be greater than or equal to min_idle_ms"
            raise _field_error("max_backoff_ms", msg)
        return self


class MetricsSettings(BaseModel):
    """The Prometheus exposition server, which also serves the health probes.

    Attributes:
        enabled: whether to serve ``/metrics``, ``/healthz`` and ``/readyz``.
        host: the address to bind.
        port: the TCP port to bind; 0 picks a free one.
    """

    model_config = _SECTION

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class LogSettings(BaseModel):
    """What is logged and how it is rendered.

    Attributes:
        level: the lowest level written.
        format: ``json`` lines, the ``console`` renderer, or ``auto``: console
            on a terminal, JSON otherwise.
    """

    model_config = _SECTION

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """The whole worker configuration; build it with `load_settings`.

    Attributes:
        app: the handler registry as ``"package.module:attr"``.
        processes: worker processes on this machine.
        consumers: group consumers per process and subscription: readers,
            each with its own Redis connection (``concurrency`` sets how many
            handler calls run at once).
        concurrency: the most handler calls in flight at once in one process,
            over every consumer and subscription.
        batch_size: entries per XREADGROUP call.
        block_ms: how long XREADGROUP blocks, in ms; keep it well under
            ``shutdown_timeout_s``.
        ack_interval_ms: how long acks are gathered before one XACK, in ms.
        handler_timeout_s: time allowed to one handler call, in seconds.
        shutdown_timeout_s: grace period to finish in-flight events, in seconds.
        sync_threads: threads available to synchronous handlers, per process;
            a hard cap, held by a call until it returns (even past its timeout).
        unhandled: what to do with events no handler matches.
        name_prefix: prefix of consumer names; the host name if unset.
        name_lease_s: lifetime of the lease a worker holds on its consumer
            names; a second worker with the same names takes ``{base}.1``.
        subscriptions: the (stream, group) pairs to consume.
        redis: see `RedisSettings`.
        reaper: see `ReaperSettings`.
        metrics: see `MetricsSettings`.
        log: see `LogSettings`.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="AGENTSTREAM_",
        env_nested_delimiter="__",
    )

    app: str | None = None
    processes: int = Field(default=1, ge=1)
    consumers: int = Field(default=4, ge=1)
    concurrency: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    block_ms: int = Field(default=2000, ge=1)
    ack_interval_ms: int = Field(default=50, ge=1)
    handler_timeout_s: float = Field(default=300.0, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    sync_threads: int = Field(default=40, ge=1)
    unhandled: Literal["ack", "dead_letter"] = "ack"
    name_prefix: str | None = Field(default=None, min_length=1)
    name_lease_s: float = Field(default=30.0, gt=0)
    subscriptions: list[SubscriptionSettings] = Field(
        default_factory=lambda: [SubscriptionSettings(stream="agent_output")],
        min_length=1,
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    reaper: ReaperSettings = Field(default_factory=ReaperSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @field_validator("app")
    @classmethod
    def _check_app(cls, app: str | None) -> str | None:
        if app is not None and not _APP_RE.match(app):
            raise ValueError('must look like "package.module:attribute"')
        return app

    @field_validator("subscriptions")
    @classmethod
    def _check_unique(
        cls, subs: list[SubscriptionSettings]
    ) -> list[SubscriptionSettings]:
        seen: dict[tuple[str, str], int] = {}
        for index, sub in enumerate(subs):
            first = seen.setdefault((sub.stream, sub.group), index)
            if first != index:
                msg = f"entry {index} repeats the stream and group of entry {first}"
                raise ValueError(msg)
        return subs

    @model_validator(mode="after")
    def _check_block(self) -> Self:
        if self.block_ms >= self.shutdown_timeout_s * 1000:
            msg = "must be less than shutdown_timeout_s * 1000"
            raise _field_error("block_ms", msg)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Rank the sources, highest first: init kwargs, environment, TOML file."""
        request = _REQUEST.get()
        if request is None:
            return init_settings, env_settings
        path, env = request
        if env is not None:
            env_settings = _MappingEnvSource(settings_cls, env)
        if path is None:
            return init_settings, env_settings
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of os.environ."""

    def __init__(
        self, settings_cls: type[BaseSettings], env: Mapping[str, str]
    ) -> None:
        self._mapping = env  # read by _load_env_vars, which super() calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self.case_sensitive:
            return dict(self._mapping)
        return {name.lower(): value for name, value in self._mapping.items()}


# settings_customise_sources() is a classmethod Settings() calls with no say in
# its arguments, so load_settings() hands it the file and environment this way.
_REQUEST: ContextVar[tuple[Path | None, Mapping[str, str] | None] | None]
_REQUEST = ContextVar("agentstream_settings_request", default=None)


def load_settings(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load the settings: defaults, then the TOML file, then the environment.

    Args:
        path: the TOML file; ``None`` for defaults and environment only.
        env: the environment variables to read instead of ``os.environ``.

    Returns:
        The validated, frozen settings.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML, or a value is
            invalid; the one-line message names the field and no secret.
    """
    file = None if path is None else Path(path)
    if file is not None and not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    token = _REQUEST.set((file, env))
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: invalid TOML: not UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except SettingsError as exc:
        # pydantic-settings names the field but not the value
        field = re.search(r'field "([^"]+)"', str(exc))
        name = field.group(1) if field else "environment"
        raise ConfigError(f"{name}: cannot parse the environment value") from None
    finally:
        _REQUEST.reset(token)


def _describe(exc: ValidationError) -> str:
    # Never echo the input: it may be a password.
    error = exc.errors(include_url=False, include_input=False)[0]
    loc: list[str | int] = list(error["loc"])
    field = error.get("ctx", {}).get("field")
    if isinstance(field, str):
        loc.append(field)
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"{path.lstrip('.')}: {message}" if path else message


# Greedy up to the last "@": a password may hold unescaped "@" or "/", and
# masking too much beats leaking the rest of a password.
_USERINFO_RE = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^:/?#@]*:).*@")
_QUERY_PASSWORD_RE = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Mask the password of a URL, in its user info or a ``password=`` query.

    Args:
        url: a URL such as ``redis://user:secret@host:6379/0``.

    Returns:
        The URL with the password replaced by ``***``.
    """
    url = _USERINFO_RE.sub(rf"\g<head>{_MASK}@", url)
    return _QUERY_PASSWORD_RE.sub(rf"\g<1>{_MASK}", url)


def redacted(settings: Settings) -> dict[str, Any]:
    """Return the settings as JSON-able data with every secret masked.

    Args:
        settings: the settings to show, as for ``--check``.

    Returns:
        A dict like ``settings.model_dump(mode="json")``; passwords read ``***``.
    """
    data = settings.model_dump(mode="json")
    redis = data["redis"]
    redis["url"] = redact_url(settings.redis.url)
    if settings.redis.password is not None:
        redis["password"] = _MASK
    return data
