"""Which Redis a REDIS_URL names (one server, a Sentinel group, a Cluster) and its client.

config.py validates REDIS_URL with parse() at start-up, and the store connects with the
same parse, so a URL that passes validation is one the store can use.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
           "rediss+cluster")
_DEFAULT_PORT = {"sentinel": 26379, "cluster": 6379}
# Connection options a cluster client takes from the URL's query (?ssl_ca_certs=...); its
# constructor also names `path` and `db`, only to refuse them.
_CLUSTER_OPTIONS = frozenset(inspect.signature(RedisCluster.__init__).parameters) - {
    "self", "path", "db"}

Client = aioredis.Redis | RedisCluster


@dataclass(frozen=True)
class Topology:
    """A parsed REDIS_URL: its kind, the hosts to ask first, and the connection options."""

    kind: Literal["single", "sentinel", "cluster"]
    url: str
    hosts: list[tuple[str, int]] = field(default_factory=list)  # sentinels or startup nodes
    service: str = ""                                              # the Sentinel master name
    options: dict[str, Any] = field(default_factory=dict)          # password, db, ssl, ...


def parse(url: str) -> Topology:
    """The topology `url` names; ValueError says what is wrong without password or host."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError("not a Redis URL scheme")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError("the host is neither a name nor a [bracketed] IPv6 address") from None
    # A password with "/" or "#" not percent-encoded ends the userinfo early: the rest of
    # it and "@host" become the path (or fragment), so the URL names another server (or
    # localhost) without the password, and logs and /readyz, which show the path, show it.
    # (A unix socket's path may hold "@" of its own: there only a cut host part is one.)
    cut = parts.netloc != "" and not parts.netloc.endswith("@") if scheme == "unix" else True
    if (cut and "@" in parts.path) or "@" in parts.fragment:
        raise ValueError("a password with '/' or '#' must be percent-encoded (%2F, %23)")
    base, _, kind = scheme.partition("+")
    if not kind:
        try:
            _ = parts.port
        except ValueError:
            raise ValueError("the port must be a number from 0 to 65535") from None
        _options(url)  # validation only: the client reads the URL itself
        return Topology("single", url)
    what = "sentinel" if kind == "sentinel" else "cluster node"
    netloc = parts.netloc.rpartition("@")
    hosts = [_host(h, _DEFAULT_PORT[kind], what) for h in netloc[2].split(",") if h]
    path = [p for p in parts.path.split("/") if p]
    # One server's URL, built from the userinfo, the path and the query, read by redis-py's
    # own parser: the password and TLS options mean the same as in redis:// and rediss://.
    first = f"{base}://{netloc[0]}{netloc[1]}127.0.0.1"
    if kind == "sentinel":
        if not hosts or not path:
            raise ValueError("needs host:port[,host:port]/service_name[/db]")
        if len(path) > 2 or (len(path) > 1 and not path[1].isdigit()):
            raise ValueError("the db after the service name must be a number")
        options = _options(f"{first}/{path[1] if len(path) > 1 else 0}?{parts.query}")
        return Topology("sentinel", url, hosts, path[0], options)
    if not hosts:
        raise ValueError("needs host:port[,host:port...]")
    if path not in ([], ["0"]):
        raise ValueError("a cluster has only db 0")
    options = _options(f"{first}?{parts.query}")
    if options.pop("db", 0) != 0:
        raise ValueError("a cluster has only db 0")
    unknown = sorted(set(options) - _CLUSTER_OPTIONS)
    if unknown:
        raise ValueError(f"a cluster client takes no option '{unknown[0]}'")
    return Topology("cluster", url, hosts, options=options)


def connect(topology: Topology, opts: dict[str, Any]) -> tuple[Client, Sentinel | None]:
    """The client (and, for Sentinel, the sentinels it asks) with extra options `opts`."""
    if topology.kind == "single":
        return aioredis.Redis.from_url(topology.url, **opts), None
    if topology.kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in topology.hosts]
        return RedisCluster(startup_nodes=nodes, **topology.options, **opts), None
    # The password in the URL is the master's; sentinels themselves are reached without one.
    timeouts: dict[str, Any] = {k: opts[k] for k in ("socket_timeout", "socket_connect_timeout")
                                if k in opts}
    sentinel = Sentinel(topology.hosts, sentinel_kwargs=timeouts)
    options = dict(topology.options)
    cls = _FollowingSSLConnection if options.pop("ssl", False) else _FollowingConnection
    master: aioredis.Redis = sentinel.master_for(topology.service, redis_class=aioredis.Redis,
                                                 connection_class=cls, **options, **opts)
    return master, sentinel


class _FollowingConnection(SentinelManagedConnection):
    """A connection to the Sentinel master that moves when the sentinels name another.

    redis-py asks the sentinels only when it opens a connection, and a failover that
    leaves the old master running (SENTINEL FAILOVER, a healed partition) closes none:
    the old master takes writes until the sentinels demote it, seconds later, while new
    connections go to the new one. The store looks the master up every probe interval
    (its pool keeps the answer); a connection whose master is no longer that one
    reconnects before its next command rather than write where no one else reads.
    """

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        master = self.connection_pool.master_address
        if master is not None and self.is_connected and (self.host, self.port) != master:
            await self.disconnect()
            # connect() asks the pool for the master; a send on a closed connection would
            # reconnect to the address it had.
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)


class _FollowingSSLConnection(_FollowingConnection, SSLConnection):
    """The same over TLS (rediss+sentinel://)."""


def describe(url: str) -> str:
    """scheme://host:port[,host:port]/path for logs and /readyz: no credentials, no query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _host(text: str, default_port: int, what: str) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError(f"each {what} needs host:port with a port from 0 to 65535") from None
    if not host:
        raise ValueError(f"each {what} needs host:port with a port from 0 to 65535")
    return host, default_port if port is None else port


def _options(url: str) -> dict[str, Any]:
    """redis-py's reading of a one-server URL, as keyword arguments of a client."""
    try:
        options: dict[str, Any] = dict(parse_url(url))
    except ValueError as exc:
        # redis-py's own words name only the option ("Invalid value for 'db' ...").
        why = str(exc)
        raise ValueError(why if why.startswith("Invalid value for '")
                         else "redis-py cannot read it") from None
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options
