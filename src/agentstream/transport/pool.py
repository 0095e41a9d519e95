"""A shared set of sync and async Redis connections for many transports.

One server, a Redis Cluster (redis-py's ``RedisCluster``: MOVED/ASK
redirections, topology refresh and failed nodes are its business) or a
Sentinel-managed primary (redis-py's ``Sentinel``: each new connection asks the
Sentinels where the primary is, and a demoted primary's READONLY reply drops
the connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.retry as aioretry
import redis.asyncio.sentinel as aiosentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from agentstream.config import RedisSettings, host_port
from agentstream.errors import TransportError

__all__ = [
    "CallObserver",
    "RedisConnectionPool",
    "closed_transport",
    "pool_from_settings",
    "split_hosts",
]


class CallObserver(Protocol):
    """Told the outcome of every command a stream transport sends through ``acall``.

    Set one on the pool (``RedisConnectionPool.observer``) to share one view of
    the server among every transport of a process.
    """

    def answered(self) -> None:
        """Redis answered (a reply, or an error that is not a refusal)."""

    def failed(self, exc: TransportError) -> None:
        """Redis could not be reached (``ConnectionError``) or refused (``Refused``)."""


#: A sync client of any topology.
SyncClient = redis.Redis | redis.cluster.RedisCluster
#: An async client of any topology.
AsyncClient = aioredis.Redis | aiocluster.RedisCluster

# redis-py's default read timeout (5 s) would cut off an XREADGROUP that blocks
# longer; transports keep every blocking call below this value instead.
DEFAULT_SOCKET_TIMEOUT_S = 30.0

# A couple of quick retries hide a stale pooled connection (Redis restarted);
# longer outages surface as errors that callers back off from themselves. A
# timeout is not retried: with a network cut, each retry would wait the whole
# socket timeout again before anyone noticed.
_RETRIES = 2


def _hiredis_packing(
    base: type[aioredis.connection.AbstractConnection],
) -> type[aioredis.connection.AbstractConnection]:
    """``base`` packing commands with hiredis, as redis-py's sync client does.

    redis-py's async connections pack in Python, one ``bytes.join`` per
    argument: the worker's pipelined XACK and HDEL of a whole batch of ids cost
    more there than the read itself. Argument checks are redis-py's sync ones
    (``HiredisRespSerializer``): str, bytes, int and float; others raise
    ``redis.DataError``.
    """
    if not HIREDIS_AVAILABLE:
        return base
    import hiredis

    serializer = HiredisRespSerializer()
    pack = hiredis.pack_command
    # A command name's words ("CONFIG GET" is two), as the serializer splits them.
    words: dict[str, tuple[bytes, ...]] = {}

    class HiredisPacking(base):  # type: ignore[valid-type,misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            # The serializer's own checks cost more than packing an XACK of a
            # batch's ids: try hiredis first, and let the serializer convert
            # (bytearray) or refuse (DataError) what hiredis does not take.
            name = args[0]
            if type(name) is str:
                head = words.get(name)
                if head is None:
                    head = tuple(name.encode().split())
                    if len(words) < 1024:
                        words[name] = head
                try:
                    return [pack(head + args[1:])]
                except TypeError:
                    pass
            return serializer.pack(*args)  # type: ignore[no-any-return]

    HiredisPacking.__name__ = HiredisPacking.__qualname__ = f"Hiredis{base.__name__}"
    return HiredisPacking


def closed_transport(exc: BaseException) -> bool:
    """Whether ``exc`` is uvloop's refusal to write on a closed transport.

    When the server resets a connection (``CLIENT KILL``, a restart), uvloop
    closes the transport, and a write redis-py makes before it notices raises
    ``RuntimeError("unable to perform operation on <TCPTransport closed=True
    ...>; the handler is closed")``. asyncio's own loop reports the same event
    as ``ConnectionResetError``, which redis-py turns into its
    ``ConnectionError``.
    """
    return isinstance(exc, RuntimeError) and "unable to perform operation on" in str(
        exc
    )


def _hung_up_as_connection_error(
    base: type[aioredis.connection.AbstractConnection],
) -> type[aioredis.connection.AbstractConnection]:
    """``base`` raising ``redis.ConnectionError`` for a write on a connection the
    server reset (see `closed_transport`), as on asyncio's own loop: redis-py's
    ``Retry`` then reconnects, and callers see a connection error."""

    class HungUpAsConnectionError(base):  # type: ignore[valid-type,misc]
        async def send_packed_command(
            self, command: Any, check_health: bool = True
        ) -> None:
            try:
                await super().send_packed_command(command, check_health)
            except RuntimeError as exc:
                if not closed_transport(exc):
                    raise
                # redis-py dropped the connection before raising.
                msg = f"Error while writing to the socket: {exc}"
                raise redis.ConnectionError(msg) from None

    HungUpAsConnectionError.__name__ = HungUpAsConnectionError.__qualname__ = (
        base.__name__
    )
    return HungUpAsConnectionError


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=0.5, base=0.05)


def split_hosts(url: str) -> tuple[str, str | None, str | None, list[str], str]:
    """Split a URL that may list several hosts (``redis://u:p@a:1,b:2/path``).

    Returns:
        ``(scheme, username, password, ["host:port", ...], path)``, credentials
        unquoted, ``path`` without its leading slash.
    """
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    return scheme, username, password, hosts.split(","), path


class RedisConnectionPool:
    """One shared set of sync and async Redis connections.

    Give it to several ``RedisStreamTransport`` instances as ``pool=`` so they share
    connections. Closing a transport never closes a shared pool; close the pool
    itself when done.

    Args:
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL; with
            ``cluster``, its hosts (``redis://a:7000,b:7000``) are seed nodes;
            ``redis+sentinel://[user:pass@]s1:26379,s2:26379/service[/db]``
            names Sentinels and the service they watch.
        max_connections: the most connections of each kind (sync, async), per
            node on a cluster.
        decode_responses: return ``str`` instead of ``bytes`` from the clients.
            Bytes that are not UTF-8 (a producer in another language) decode with
            U+FFFD replacement characters (redis-py ``encoding_errors="replace"``),
            so one such entry never fails a read.
        cluster: the URL's hosts are seed nodes of a Redis Cluster.
        sentinels: ``(host, port)`` of Sentinels to ask for the primary of
            ``service_name`` (instead of the URL's host).
        service_name: the name the Sentinels monitor the primary under.
        sentinel_kwargs: connection options for the Sentinels themselves
            (``username``, ``password``).
        wait_replicas: replicas that must confirm each publish (WAIT); 0: none.
        wait_timeout_ms: longest WAIT, in ms.
        **connection_kwargs: more options for redis-py's connections, such as
            ``username``, ``password``, ``ssl_ca_certs`` or ``socket_timeout``.

    Raises:
        ValueError: ``protocol`` (an argument or in the URL) other than 2:
            agentstream speaks RESP2, and parses its replies as such.
    """

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379",
        max_connections: int = 20,
        decode_responses: bool = True,
        *,
        cluster: bool = False,
        sentinels: Sequence[tuple[str, int]] = (),
        service_name: str | None = None,
        sentinel_kwargs: dict[str, Any] | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        **connection_kwargs: Any,
    ) -> None:
        protocol = connection_kwargs.get("protocol")
        if protocol is None:
            protocol = parse_qs(urlsplit(redis_url).query).get("protocol", [None])[0]
        if protocol not in (None, 2, "2"):
            msg = f"protocol={protocol}: agentstream speaks RESP2 (protocol=2) only"
            raise ValueError(msg)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._redis_url = redis_url
        self._max_connections = max_connections
        self._decode_responses = decode_responses
        self._kwargs: dict[str, Any] = {
            "socket_timeout": DEFAULT_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": 5.0,
            "health_check_interval": 0,
            "encoding_errors": "replace",
            **connection_kwargs,
        }
        scheme, user, password, hosts, path = split_hosts(redis_url)
        self._sentinels = list(sentinels)
        self._service = service_name
        self._sentinel_kwargs = dict(sentinel_kwargs or {})
        if scheme == "redis+sentinel":
            self._sentinels = [host_port(h) for h in hosts]
            self._service, _, db = path.partition("/")
            for name, value in (("username", user), ("password", password)):
                if value is not None:
                    self._kwargs.setdefault(name, value)
                    self._sentinel_kwargs.setdefault(name, value)
            if db:
                self._kwargs["db"] = int(db)
        self.topology: Literal["single", "cluster", "sentinel"] = (
            "cluster" if cluster else "sentinel" if self._sentinels else "single"
        )
        if self.topology == "cluster":
            self._seeds = [host_port(h) for h in hosts]
            for name, value in (("username", user), ("password", password)):
                if value is not None:
                    self._kwargs.setdefault(name, value)
            if scheme == "rediss":
                self._kwargs["ssl"] = True
        self._sync_pool: redis.ConnectionPool | None = None
        if self.topology == "single":
            self._sync_pool = redis.ConnectionPool.from_url(
                redis_url,
                max_connections=max_connections,
                decode_responses=decode_responses,
                retry=redis.retry.Retry(
                    _backoff(), _RETRIES, supported_errors=(redis.ConnectionError,)
                ),
                **self._kwargs,
            )
        self._sync_client: SyncClient | None = None
        #: Told the outcome of every async command of the transports on this pool.
        self.observer: CallObserver | None = None
        self._async_client: AsyncClient | None = None
        self._raw_async_client: AsyncClient | None = None
        self._node_clients: dict[tuple[str, int], aioredis.Redis] = {}

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
        """The underlying redis-py connection pool of the sync client.

        Raises:
            RuntimeError: on a cluster or behind Sentinel (no single pool).
        """
        if self._sync_pool is None:
            raise RuntimeError(f"a {self.topology} pool has no single sync pool")
        return self._sync_pool

    @property
    def cluster(self) -> bool:
        """Whether this pool speaks to a Redis Cluster."""
        return self.topology == "cluster"

    @property
    def location(self) -> str:
        """Where the pool connects, without credentials."""
        if self.topology == "sentinel":
            where = ",".join(f"{h}:{p}" for h, p in self._sentinels)
            return f"sentinel {self._service}@{where}"
        if self.topology == "cluster":
            return "cluster " + ",".join(f"{h}:{p}" for h, p in self._seeds)
        parts = urlsplit(self._redis_url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"

    @property
    def secrets(self) -> list[str]:
        """Passwords this pool connects with, to keep out of error messages."""
        password = split_hosts(self._redis_url)[2]
        found = [password] if password else []
        found.extend(
            str(kwargs["password"])
            for kwargs in (self._kwargs, self._sentinel_kwargs)
            if kwargs.get("password")
        )
        return found

    @property
    def socket_timeout_s(self) -> float | None:
        """The read timeout of every connection, in seconds (None: no timeout)."""
        value = self._kwargs.get("socket_timeout")
        return None if value is None else float(value)

    def get_sync_client(self) -> SyncClient:
        """Return the pool's sync client (the same one on every call)."""
        if self._sync_client is None:
            self._sync_client = self._new_sync_client()
        return self._sync_client

    def _new_sync_client(self) -> SyncClient:
        if self.topology == "cluster":
            return redis.cluster.RedisCluster(
                startup_nodes=[
                    redis.cluster.ClusterNode(h, p)  # type: ignore[no-untyped-call]
                    for h, p in self._seeds
                ],
                decode_responses=self._decode_responses,
                max_connections=self._max_connections,
                **self._kwargs,
            )
        if self.topology == "sentinel":
            sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                self._sentinels,
                sentinel_kwargs=self._sentinel_options(),
                **self._kwargs,
            )
            client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
                str(self._service),
                decode_responses=self._decode_responses,
                max_connections=self._max_connections,
                retry=redis.retry.Retry(
                    _backoff(), _RETRIES, supported_errors=(redis.ConnectionError,)
                ),
            )
            return client
        return redis.Redis(connection_pool=self.sync_pool)

    def _sentinel_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self._kwargs["socket_connect_timeout"],
            "socket_connect_timeout": self._kwargs["socket_connect_timeout"],
            **self._sentinel_kwargs,
        }

    def get_async_client(self) -> AsyncClient:
        """Return the pool's async client (the same one on every call)."""
        if self._async_client is None:
            self._async_client = self._new_async_client(self._decode_responses)
        return self._async_client

    def get_raw_async_client(self) -> AsyncClient:
        """Return an async client that returns undecoded ``bytes``.

        The worker reads through it so that one entry holding bytes that are not
        UTF-8 is reported on its own instead of failing a whole batch.
        """
        if not self._decode_responses:
            return self.get_async_client()
        if self._raw_async_client is None:
            self._raw_async_client = self._new_async_client(False)
        return self._raw_async_client

    def _new_async_client(self, decode_responses: bool) -> AsyncClient:
        if self.topology == "cluster":
            return aiocluster.RedisCluster(
                startup_nodes=[aiocluster.ClusterNode(h, p) for h, p in self._seeds],
                decode_responses=decode_responses,
                max_connections=self._max_connections,
                **self._kwargs,
            )
        if self.topology == "sentinel":
            sentinel = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
                self._sentinels,
                sentinel_kwargs=self._sentinel_options(),
                **self._kwargs,
            )
            aclient: aioredis.Redis = sentinel.master_for(
                str(self._service),
                decode_responses=decode_responses,
                max_connections=self._max_connections,
                retry=aioretry.Retry(
                    _backoff(), _RETRIES, supported_errors=(redis.ConnectionError,)
                ),
            )
            sentinel_pool = aclient.connection_pool
            sentinel_pool.connection_class = _hung_up_as_connection_error(
                sentinel_pool.connection_class
            )
            return aclient
        pool = aioredis.ConnectionPool.from_url(
            self._redis_url,
            max_connections=self._max_connections,
            decode_responses=decode_responses,
            retry=aioretry.Retry(
                _backoff(), _RETRIES, supported_errors=(redis.ConnectionError,)
            ),
            **self._kwargs,
        )
        pool.connection_class = _hiredis_packing(
            _hung_up_as_connection_error(pool.connection_class)
        )
        return aioredis.Redis.from_pool(pool)

    async def anode_client(self, key: str) -> aioredis.Redis:
        """A decoding client on the cluster node that serves ``key``'s slot now.

        WAIT counts the replicas that have every write sent *on its own
        connection* before it, so a write that WAIT must cover goes through
        this client in one pipeline with the WAIT (redis-py's cluster client
        would send WAIT to every primary, on other connections).
        """
        cluster = self.get_async_client()
        assert isinstance(cluster, aiocluster.RedisCluster)
        await cluster.initialize()  # once: the slot map is read on first use
        node = cluster.get_node_from_key(key)
        if node is None:
            raise redis.ConnectionError(f"no cluster node serves the slot of {key!r}")
        address = (str(node.host), int(node.port))
        client = self._node_clients.get(address)
        if client is None:
            client = aioredis.Redis(
                host=address[0],
                port=address[1],
                decode_responses=True,
                max_connections=self._max_connections,
                **self._kwargs,
            )
            self._node_clients[address] = client
        return client

    def refresh_topology(self) -> None:
        """Ask the cluster for its slot map again, on the sync client."""
        cluster = self.get_sync_client()
        if isinstance(cluster, redis.cluster.RedisCluster):
            cluster.nodes_manager.initialize()

    async def arefresh_topology(self) -> None:
        """Ask the cluster for its slot map again (after a MOVED seen by hand)."""
        cluster = self.get_async_client()
        if isinstance(cluster, aiocluster.RedisCluster):
            await cluster.nodes_manager.initialize()

    def close(self) -> None:
        """Close the sync connections."""
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None
        if self._sync_pool is not None:
            self._sync_pool.disconnect()

    async def aclose(self) -> None:
        """Close the async connections (and the sync ones)."""
        clients = [self._async_client, self._raw_async_client]
        for client in [*clients, *self._node_clients.values()]:
            if client is not None:
                await client.aclose()
        self._async_client = self._raw_async_client = None
        self._node_clients.clear()
        self.close()


def pool_from_settings(
    settings: RedisSettings, *, socket_timeout_s: float, max_connections: int
) -> RedisConnectionPool:
    """Build a pool from ``[redis]`` settings (credentials, TLS, timeouts)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": settings.socket_connect_timeout_s,
    }
    topology: dict[str, Any] = {
        "cluster": settings.is_cluster,
        "wait_replicas": settings.wait_replicas,
        "wait_timeout_ms": settings.wait_timeout_ms,
    }
    if settings.sentinel is not None:
        sentinel_kwargs: dict[str, Any] = {}
        if settings.sentinel.username is not None:
            sentinel_kwargs["username"] = settings.sentinel.username
        if settings.sentinel.password is not None:
            secret = settings.sentinel.password.get_secret_value()
            sentinel_kwargs["password"] = secret
        topology.update(
            sentinels=settings.sentinel.nodes(),
            service_name=settings.sentinel.service_name,
            sentinel_kwargs=sentinel_kwargs,
        )
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
    return RedisConnectionPool(
        settings.url, max_connections=max_connections, **topology, **kwargs
    )
