"""Settings models and the one function that loads them."""

from __future__ import annotations

import difflib
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
from .event_loop import uvloop_import_error

__all__ = [
    "LogSettings",
    "MetricsSettings",
    "ReaperSettings",
    "RedisSettings",
    "Retention",
    "RetentionSettings",
    "SentinelSettings",
    "Settings",
    "SubscriptionSettings",
    "WebSettings",
    "env_names",
    "load_settings",
    "redact_url",
    "redacted",
]

# inf and nan pass "gt=0" and then crash or loop the code that uses them.
_SECTION = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
_DAY_S = 86_400.0
_TLS_FIELDS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")
_APP_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MASK = "***"


def _field_error(field: str, message: str) -> PydanticCustomError:
    # A model validator's error is located at the model; ctx["field"] lets
    # load_settings() still name the field (see _describe).
    return PydanticCustomError("invalid_setting", message, {"field": field})


class SentinelSettings(BaseModel):
    """Where the Sentinels are and which primary they watch.

    Attributes:
        addresses: the Sentinels as ``"host:port"``, at least one.
        service_name: the name the Sentinels monitor the primary under.
        username: ACL user on the Sentinels, if they require one.
        password: password of the Sentinels (the data nodes use ``[redis]``'s).
    """

    model_config = _SECTION

    addresses: list[str] = Field(min_length=1)
    service_name: str = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None

    @field_validator("addresses")
    @classmethod
    def _check_addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            host_port(address)
        return addresses

    def nodes(self) -> list[tuple[str, int]]:
        """The Sentinels as ``(host, port)`` pairs."""
        return [host_port(a) for a in self.addresses]


def host_port(address: str) -> tuple[str, int]:
    """Split ``"host:port"``; raises ValueError naming the address."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


class RedisSettings(BaseModel):
    """How to reach Redis: one server, a Redis Cluster, or a Sentinel-managed primary.

    Attributes:
        url: ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL. Several
            ``host:port`` seeds separated by commas (``redis://a:7000,b:7000``)
            mean a Redis Cluster; ``redis+sentinel://[user:pass@]s1:26379,
            s2:26379/service[/db]`` means Sentinel (credentials go to the
            Sentinels and the primary alike).
        cluster: the URL's host is one seed node of a Redis Cluster.
        sentinel: the Sentinels to ask for the primary (instead of ``url``'s host).
        wait_replicas: replicas that must have each published event before
            ``publish`` returns (WAIT); 0 returns as soon as the primary has it.
        wait_timeout_ms: longest WAIT, in ms; fewer replicas in time is an error.
        username: ACL user name, if not given in the URL.
        password: the password; prefer ``password_file`` outside development.
        password_file: a file whose stripped content is the password, read at load.
        ssl_ca_certs: CA bundle for verifying the server (``rediss://`` only).
        ssl_certfile: client certificate for mutual TLS.
        ssl_keyfile: private key of ``ssl_certfile``.
        ssl_cert_reqs: whether the server certificate must verify.
        ssl_check_hostname: whether the certificate must match the host name.
        socket_connect_timeout_s: how long to wait for a connection, in seconds.
        max_connections: size of the connection pool of each process (per
            node on a cluster).
    """

    model_config = _SECTION

    url: str = "redis://localhost:6379/0"
    cluster: bool = False
    sentinel: SentinelSettings | None = None
    wait_replicas: int = Field(default=0, ge=0)
    wait_timeout_ms: int = Field(default=1000, gt=0)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    ssl_check_hostname: bool = True
    socket_connect_timeout_s: float = Field(default=5.0, gt=0, le=300)
    max_connections: int = Field(default=64, ge=1, le=100_000)

    _file_password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if not url.startswith(_REDIS_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss://, unix:// or redis+sentinel://"
            )
        scheme, _, rest = url.partition("://")
        netloc = rest.split("/", 1)[0].rpartition("@")[2]
        if "," in netloc or scheme == "redis+sentinel":
            # Several hosts: urlsplit cannot read the port of "a:1,b:2".
            if any(c in rest for c in "?#"):
                raise ValueError("must not carry ?options; use the [redis] settings")
            for address in netloc.split(","):
                try:
                    host_port(address)
                except ValueError as exc:
                    raise ValueError(f"has a bad seed address: {exc}") from None
            path = rest.split("/", 1)[1] if "/" in rest else ""
            if scheme == "redis+sentinel" and not path.split("/")[0]:
                raise ValueError("redis+sentinel:// needs /service_name after hosts")
            return url
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
    def _check_tls(self) -> Self:
        # redis-py would ignore them on a plain connection: no TLS, no word.
        if self.url.startswith("rediss://"):
            return self
        for name in _TLS_FIELDS:
            if getattr(self, name) != type(self).model_fields[name].default:
                msg = "applies to TLS only: use a rediss:// url or remove it"
                raise _field_error(name, msg)
        return self

    @model_validator(mode="after")
    def _check_topology(self) -> Self:
        url_sentinel = self.url.startswith("redis+sentinel://")
        if self.is_cluster and (self.sentinel is not None or url_sentinel):
            raise _field_error("cluster", "choose Redis Cluster or Sentinel, not both")
        if self.sentinel is not None and url_sentinel:
            raise _field_error("sentinel", "set [redis.sentinel] or a URL, not both")
        if self.is_cluster:
            if self.url.startswith("unix://"):
                raise _field_error("url", "Redis Cluster needs TCP seed nodes")
            db = self.url.partition("://")[2].partition("/")[2]
            if db not in ("", "0"):
                raise _field_error("url", "Redis Cluster has database 0 only")
        return self

    @property
    def is_cluster(self) -> bool:
        """Whether this is a Redis Cluster (``cluster = true`` or several seeds)."""
        if self.url.startswith("redis+sentinel://"):
            return False
        netloc = self.url.partition("://")[2].split("/", 1)[0].rpartition("@")[2]
        return self.cluster or "," in netloc

    @property
    def topology(self) -> Literal["single", "cluster", "sentinel"]:
        """How the servers are reached."""
        if self.is_cluster:
            return "cluster"
        if self.sentinel is not None or self.url.startswith("redis+sentinel://"):
            return "sentinel"
        return "single"

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


#: What may remove a stream's entries: ``"length"`` (publishers trim by length,
#: handled or not: the seed's behaviour) or ``"processed"`` (only entries every
#: consumer group acknowledged, plus a hard cap that counts what it drops).
Retention = Literal["length", "processed"]


class RetentionSettings(BaseModel):
    """How the entries of a subscribed stream leave it.

    Attributes:
        mode: ``"length"`` (the default): the worker removes nothing; publishers
            trim the stream to about their ``max_len`` whether or not its
            entries were handled. ``"processed"``: an entry leaves only once
            every consumer group of the stream acknowledged it; the worker
            deletes such entries on acknowledgement (Redis 8.2+) and trims
            every ``interval_s`` on any server.
        max_len: the hard cap of ``"processed"`` mode, in entries: a longer
            stream (a group stuck or gone) loses its oldest entries anyway,
            and each one some group had not acknowledged is counted. 0: no cap.
        interval_s: pause between two trims in ``"processed"`` mode, in seconds.
    """

    model_config = _SECTION

    mode: Retention = "length"
    max_len: int = Field(default=1_000_000, ge=0)
    interval_s: float = Field(default=5.0, gt=0)


#: ``data.`` or ``metadata.`` followed by one or more dot-separated keys.
_ORDER_KEY_PATTERN = r"^(data|metadata)(\.[^.]+)+$"


class SubscriptionSettings(BaseModel):
    """One stream the worker reads as a member of a consumer group.

    Attributes:
        stream: the stream key.
        group: the consumer group, created at start if missing.
        dead_letter_stream: where failed events go; ``"{stream}:dlq"`` if unset.
        dead_letter_max_len: approximate cap on the dead-letter stream, in entries.
        partitions: stream keys the logical stream is split into,
            ``stream:{0}`` ... ``stream:{P-1}``; 1 is the plain ``stream``.
        ordered: each partition is handled by at most one worker process of
            the whole fleet at a time (a lease in Redis), in stream order (per
            ``order_key`` when set, else the whole partition in line).
        retention: see `RetentionSettings`.
        order_key: a dotted path into the event (``"data.run_id"``,
            ``"metadata.conversation_id"``); within one worker process, events
            with the same key start in stream order and never overlap. Unset:
            no per-key order (``App(order_key=...)`` may still give one).
    """

    model_config = _SECTION

    stream: str = Field(min_length=1)
    group: str = Field(default="agents", min_length=1)
    dead_letter_stream: str | None = Field(default=None, min_length=1)
    dead_letter_max_len: int = Field(default=100_000, ge=1, le=2**63 - 1)
    partitions: int = Field(default=1, ge=1, le=1024)
    ordered: bool = False
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
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
        error_ttl_s: the error-records hash expires this long after the last
            error written, in seconds (each record also goes with its entry's
            acknowledgement).
    """

    model_config = _SECTION

    # Bounds: what Redis takes (ms as 64-bit integers, TTLs of at least 1 ms)
    # and what a sweep or a lease can do in a day's terms.
    interval_s: float = Field(default=5.0, ge=0.01, le=3600)
    min_idle_ms: int = Field(default=60_000, ge=10, le=7 * 86_400_000)
    batch: int = Field(default=100, gt=0, le=10_000)
    max_deliveries: int = Field(default=5, ge=1, le=1_000_000)
    max_backoff_ms: int = Field(default=3_600_000, gt=0, le=30 * 86_400_000)
    consumer_ttl_s: float = Field(default=3600.0, ge=0.001, le=365 * _DAY_S)
    error_ttl_s: float = Field(default=86400.0, ge=0.001, le=365 * _DAY_S)

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


class WebSettings(BaseModel):
    """The web console (``agentstream web``).

    Attributes:
        host: the address to bind. Without ``token_file`` or
            ``basic_auth_file`` only a loopback address is accepted.
        port: the TCP port to bind (0 picks a free one).
        token_file: a file holding a bearer token; requests must send
            ``Authorization: Bearer <token>`` (or sign in with it once).
        basic_auth_file: a file of ``user:password`` lines for HTTP basic auth.
        read_only: hide every action and refuse it (403).
        page_size: entries per page of a list.
        refresh_s: how often the overview refreshes itself, in seconds.
    """

    model_config = _SECTION

    host: str = "127.0.0.1"
    port: int = Field(default=9465, ge=0, le=65535)
    token_file: Path | None = None
    basic_auth_file: Path | None = None
    read_only: bool = False
    page_size: int = Field(default=50, ge=1, le=1000)
    refresh_s: float = Field(default=5.0, ge=1)


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
        event_loop: the asyncio event loop of worker processes: ``auto``
            (uvloop when installed, else the stdlib's), ``uvloop`` (refused
            when not installed) or ``asyncio``.
        name_prefix: prefix of consumer names; the host name if unset.
        name_lease_s: lifetime of the lease a worker holds on its consumer
            names; a second worker with the same names takes ``{base}.1``.
        partition_lease_s: lifetime of a worker's lease on a partition of an
            ordered subscription; a dead worker's partitions move after it.
        subscriptions: the (stream, group) pairs to consume.
        redis: see `RedisSettings`.
        reaper: see `ReaperSettings`.
        metrics: see `MetricsSettings`.
        log: see `LogSettings`.
        web: see `WebSettings`.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        env_prefix="AGENTSTREAM_",
        env_nested_delimiter="__",
    )

    app: str | None = None
    processes: int = Field(default=1, ge=1, le=256)
    consumers: int = Field(default=4, ge=1, le=1000)
    concurrency: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    block_ms: int = Field(default=2000, ge=1, le=86_400_000)
    ack_interval_ms: int = Field(default=50, ge=1, le=60_000)
    handler_timeout_s: float = Field(default=300.0, ge=0.001, le=7 * _DAY_S)
    shutdown_timeout_s: float = Field(default=30.0, ge=0.001, le=_DAY_S)
    sync_threads: int = Field(default=40, ge=1, le=10_000)
    unhandled: Literal["ack", "dead_letter"] = "ack"
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    name_prefix: str | None = Field(default=None, min_length=1)
    # Renewed every third of it: under a second, one slow round trip loses it.
    name_lease_s: float = Field(default=30.0, ge=1, le=_DAY_S)
    partition_lease_s: float = Field(default=10.0, ge=1, le=_DAY_S)
    subscriptions: list[SubscriptionSettings] = Field(
        default_factory=lambda: [SubscriptionSettings(stream="agent_output")],
        min_length=1,
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    reaper: ReaperSettings = Field(default_factory=ReaperSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    web: WebSettings = Field(default_factory=WebSettings)

    @field_validator("app")
    @classmethod
    def _check_app(cls, app: str | None) -> str | None:
        if app is not None and not _APP_RE.match(app):
            raise ValueError('must look like "package.module:attribute"')
        return app

    @field_validator("event_loop")
    @classmethod
    def _check_event_loop(cls, choice: str) -> str:
        if choice == "uvloop":
            reason = uvloop_import_error()
            if reason is not None:
                raise ValueError(
                    f"uvloop cannot be imported ({reason}): pip install uvloop, "
                    "or choose auto or asyncio"
                )
        return choice

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
        # A dead letter written to a subscribed stream is read again, fails
        # again, and is written again, without end; its length cap would trim
        # the events other groups have not read.
        streams = {sub.stream: index for index, sub in enumerate(subs)}
        for index, sub in enumerate(subs):
            other = streams.get(sub.dead_letter_key)
            if other is not None:
                where = "its own" if other == index else f"entry {other}'s"
                msg = (
                    f"entry {index}: dead_letter_stream {sub.dead_letter_key!r} "
                    f"is {where} stream; dead letters need a stream of their own"
                )
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
    _check_env_names(os.environ if env is None else env)
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


_ENV_PREFIX = "AGENTSTREAM_"
#: AGENTSTREAM_ variables that are not settings: the folder a multi-process
#: parent gives its children for their status files, and the test kit's server.
_OTHER_ENV = frozenset({"AGENTSTREAM_STATUS_DIR", "AGENTSTREAM_REDIS_SERVER"})


def env_names() -> list[str]:
    """Every environment variable name a setting reads, e.g. ``AGENTSTREAM_REDIS__URL``.

    Returns:
        The names in upper case: one per top-level setting, and one per field
        of each section (``__`` between the section and the field).
    """
    names = []
    for name, field in Settings.model_fields.items():
        names.append(f"{_ENV_PREFIX}{name.upper()}")
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names += [
                f"{_ENV_PREFIX}{name.upper()}__{sub.upper()}"
                for sub in section.model_fields
            ]
    return names


def _check_env_names(env: Mapping[str, str]) -> None:
    # pydantic-settings ignores an AGENTSTREAM_ variable that names no field
    # (AGENTSTREAM_REDIS_URL, one underscore), leaving the default in force.
    known = env_names()
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or upper in known or upper in _OTHER_ENV:
            continue
        # Compared without the prefix, which every name shares.
        tails = [k.removeprefix(_ENV_PREFIX) for k in known]
        tail = upper.removeprefix(_ENV_PREFIX)
        close = difflib.get_close_matches(tail, tails, n=1, cutoff=0.6)
        hint = f"; did you mean {_ENV_PREFIX}{close[0]}?" if close else ""
        raise ConfigError(
            f"environment variable {name} matches no setting{hint} "
            "(AGENTSTREAM_ prefix, '__' between a section and its key)"
        )


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
    sentinel = settings.redis.sentinel
    if sentinel is not None and sentinel.password is not None:
        redis["sentinel"]["password"] = _MASK
    return data
