"""A shared set of sync and async Redis connections for many transports."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry as aioretry
import redis.retry
from redis.backoff import ExponentialWithJitterBackoff

from agentstream.config import RedisSettings

if TYPE_CHECKING:
    from agentstream.transport.core import CallObserver

__all__ = ["RedisConnectionPool", "pool_from_settings"]

# redis-py's default read timeout (5 s) would cut off an XREADGROUP that blocks
# longer; transports keep every blocking call below this value instead.
DEFAULT_SOCKET_TIMEOUT_S = 30.0

# A couple of quick retries hide a stale pooled connection (Redis restarted);
# longer outages surface as errors that callers back off from themselves. A
# timeout is not retried: with a network cut, each retry would wait the whole
# socket timeout again before anyone noticed.
_RETRIES = 2


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=0.5, base=0.05)


class RedisConnectionPool:
    """One shared set of sync and async Redis connections.

    Give it to several ``RedisStreamTransport`` instances as ``pool=`` so they share
    connections. Closing a transport never closes a shared pool; close the pool
    itself when done.

    Args:
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        max_connections: the most connections of each kind (sync, async).
        decode_responses: return ``str`` instead of ``bytes`` from the clients.
        **connection_kwargs: more options for redis-py's connection pool, such as
            ``username``, ``password``, ``ssl_ca_certs`` or ``socket_timeout``.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        max_connections: int = 20,
        decode_responses: bool = True,
        **connection_kwargs: Any,
    ) -> None:
        self._redis_url = redis_url
        self._max_connections = max_connections
        self._decode_responses = decode_responses
        self._kwargs: dict[str, Any] = {
            "socket_timeout": DEFAULT_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": 5.0,
            "health_check_interval": 0,
            **connection_kwargs,
        }
        self._sync_pool = redis.ConnectionPool.from_url(
            redis_url,
            max_connections=max_connections,
            decode_responses=decode_responses,
            retry=redis.retry.Retry(
                _backoff(), _RETRIES, supported_errors=(redis.ConnectionError,)
            ),
            **self._kwargs,
        )
        self._sync_client: redis.Redis | None = None
        #: Told the outcome of every async command of the transports on this pool.
        self.observer: CallObserver | None = None
        self._async_client: aioredis.Redis | None = None
        self._raw_async_client: aioredis.Redis | None = None

    @property
    def redis_url(self) -> str:
        """The URL the pool connects to."""
        return self._redis_url

    @property
    def max_connections(self) -> int:
        """The most connections of each kind."""
        return self._max_connections

    @property
    def sync_pool(self) -> redis.ConnectionPool:
        """The underlying redis-py connection pool of the sync client."""
        return self._sync_pool

    @property
    def secrets(self) -> list[str]:
        """Passwords this pool connects with, to keep out of error messages."""
        password = urlsplit(self._redis_url).password
        found = [unquote(password)] if password else []
        if self._kwargs.get("password"):
            found.append(str(self._kwargs["password"]))
        return found

    @property
    def socket_timeout_s(self) -> float | None:
        """The read timeout of every connection, in seconds (None: no timeout)."""
        value = self._kwargs.get("socket_timeout")
        return None if value is None else float(value)

    def get_sync_client(self) -> redis.Redis:
        """Return the pool's sync client (the same one on every call)."""
        if self._sync_client is None:
            self._sync_client = redis.Redis(connection_pool=self._sync_pool)
        return self._sync_client

    def get_async_client(self) -> aioredis.Redis:
        """Return the pool's async client (the same one on every call)."""
        if self._async_client is None:
            self._async_client = self._new_async_client(self._decode_responses)
        return self._async_client

    def get_raw_async_client(self) -> aioredis.Redis:
        """Return an async client that returns undecoded ``bytes``.

        The worker reads through it so that one entry holding bytes that are not
        UTF-8 is reported on its own instead of failing a whole batch.
        """
        if not self._decode_responses:
            return self.get_async_client()
        if self._raw_async_client is None:
            self._raw_async_client = self._new_async_client(False)
        return self._raw_async_client

    def _new_async_client(self, decode_responses: bool) -> aioredis.Redis:
        pool = aioredis.ConnectionPool.from_url(
            self._redis_url,
            max_connections=self._max_connections,
            decode_responses=decode_responses,
            retry=aioretry.Retry(
                _backoff(), _RETRIES, supported_errors=(redis.ConnectionError,)
            ),
            **self._kwargs,
        )
        return aioredis.Redis.from_pool(pool)

    def close(self) -> None:
        """Close the sync connections."""
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None
        self._sync_pool.disconnect()

    async def aclose(self) -> None:
        """Close the async connections (and the sync ones)."""
        for client in (self._async_client, self._raw_async_client):
            if client is not None:
                await client.aclose()
        self._async_client = self._raw_async_client = None
        self.close()


def pool_from_settings(
    settings: RedisSettings, *, socket_timeout_s: float, max_connections: int
) -> RedisConnectionPool:
    """Build a pool from ``[redis]`` settings (credentials, TLS, timeouts)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": settings.socket_connect_timeout_s,
    }
    if not settings.url.startswith("unix://"):  # Unix sockets take no keepalive
        kwargs["socket_keepalive"] = True
    if settings.username is not None:
        kwargs["username"] = settings.username
    password = settings.resolved_password()
    if password is not None:
        kwargs["password"] = password
    if settings.url.startswith("rediss://"):
        kwargs.update(
            ssl_ca_certs=settings.ssl_ca_certs,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
            ssl_cert_reqs=settings.ssl_cert_reqs,
            ssl_check_hostname=settings.ssl_check_hostname,
        )
    return RedisConnectionPool(settings.url, max_connections=max_connections, **kwargs)
