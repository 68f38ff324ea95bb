"""Shared state on Redis (redis-py asyncio), with a local fallback while Redis is away.

WeChat gives a push 5 s. A Redis outage must not cost followers their replies, so every
operation that cannot reach Redis is served by an in-process MemoryStore instead: sharing
is lost for the outage (a retry landing on another instance may run its handler again,
each process may fetch its own token), answering is not. A circuit keeps the outage cheap:
after the first failure no push touches Redis until a background probe sees it back.

One server, a Sentinel group or a Cluster (service/store/topology.py). A master that dies
is an outage like any other until the probe reaches its successor; a Sentinel master that
is replaced while still running is followed by asking the sentinels (_follow_master).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.client import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

from wxhook.server.logs import get_logger
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.store.pipeline import UNREACHABLE, AutoPipeline
from wxhook.server.store.topology import Client, connect, describe, parse

T = TypeVar("T")
PROBE_KEY = "wxhook:probe"  # written by the recovery probe when writes were refused

# Compare-and-delete in one step: the token's compare-and-expire on 40001 and the lock's
# release by fencing value must not remove a value a peer wrote in between.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Compare-and-set in one step: a dedup claim is renewed, or replaced by its reply, only by
# the holder whose fencing value it still holds (not after another instance took it over).
_REPLACE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1
end
return 0
"""


class StoreUnavailable(Exception):
    """Redis cannot be reached; the message says where and why (never the password)."""


class RedisStore:
    """The Store protocol on Redis; falls back to process memory while Redis is down."""

    shared = True

    def __init__(self, url: str, *, metrics: Metrics | None = None, timeout: float = 0.3,
                 probe_interval: float = 1.0) -> None:
        # Short socket timeouts: a push cannot afford redis-py's default 5 s, nor its
        # default retries with exponential backoff. One immediate retry, on connection errors
        # only, lets a pooled socket of a restarted server reconnect without tripping; a
        # timeout is not retried, so a hung Redis costs one timeout, once per outage.
        opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                "retry": Retry(NoBackoff(), 1, (RedisConnectionError,)),
                                "health_check_interval": 0}
        self.topology = parse(url)
        self._redis, self._sentinel = connect(self.topology, opts)
        self._delete_if = self._redis.register_script(_DELETE_IF)  # EVALSHA, reloads on NOSCRIPT
        # On a cluster the pipeline is split by node and sent to each node at once
        # (redis-py's ClusterPipeline); every key of ours is alone in its command.
        self._batch = AutoPipeline(self._redis)
        self.where = describe(url)
        self.metrics = metrics
        self.probe_interval = probe_interval
        self.log = get_logger("wxhook.store")
        self.local = MemoryStore()
        self.down_since: float | None = None   # monotonic start of the current outage
        self.fallback_ops = 0                   # operations served locally, this outage
        self.reached = False                    # Redis answered at least once
        self._probe: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None  # Sentinel: follows the master
        self._closed = False
        self._writes_refused = False  # the current outage is writes refused, not silence

    # -- the Store protocol ----------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        async def remote(_: Client) -> bytes | None:
            value = await self._batch.submit(lambda p: p.get(key))
            return value.encode() if isinstance(value, str) else value  # decode_responses is off

        return await self._call(remote, lambda m: m.get(key))

    async def set(self, key: str, value: bytes, *, ttl: float | None = None,
                  nx: bool = False) -> bool:
        # Milliseconds: the token lock's TTL is a float and must not round down to 0.
        px = None if ttl is None else max(1, int(ttl * 1000))

        async def remote(_: Client) -> bool:
            return bool(await self._batch.submit(lambda p: p.set(key, value, px=px, nx=nx)))

        return await self._call(remote, lambda m: m.set(key, value, ttl=ttl, nx=nx))

    async def delete(self, key: str) -> None:
        async def remote(r: Client) -> None:
            await r.delete(key)

        await self._call(remote, lambda m: m.delete(key))

    async def delete_if(self, key: str, expected: bytes) -> bool:
        async def remote(_: Client) -> bool:
            return bool(await self._delete_if(keys=[key], args=[expected]))

        return await self._call(remote, lambda m: m.delete_if(key, expected))

    async def replace_if(self, key: str, expected: bytes, value: bytes, *, ttl: float) -> bool:
        px = max(1, int(ttl * 1000))

        async def remote(_: Client) -> bool:
            # EVAL rather than EVALSHA: it rides the pipeline (every push settles its claim),
            # and the script is compiled once by Redis, whatever the text costs to send.
            return bool(await self._batch.submit(
                lambda p: p.eval(_REPLACE_IF, 1, key, expected, value, px)))

        return await self._call(remote, lambda m: m.replace_if(key, expected, value, ttl=ttl))

    async def hgetall(self, key: str) -> dict[str, str]:
        async def remote(r: Client) -> dict[str, str]:
            raw = await r.hgetall(key)
            return {_text(k): _text(v) for k, v in raw.items()}

        return await self._call(remote, lambda m: m.hgetall(key))

    async def hset(self, key: str, mapping: dict[str, str]) -> None:
        async def remote(r: Client) -> None:
            fields: dict[Any, Any] = dict(mapping)  # redis-py's Mapping key type is invariant
            await r.hset(key, mapping=fields)

        await self._call(remote, lambda m: m.hset(key, mapping))

    async def ping(self) -> None:
        """Raise when Redis has never been reached; an outage after that is served locally.

        /readyz calls this. Failing readiness on a mid-run outage would pull every instance
        out of the load balancer at once, and the fallback exists so pushes keep being
        answered; status() reports the degradation instead.
        """
        try:
            await self._ping()
        except UNREACHABLE as exc:
            if self.down_since is None:
                self._trip(exc)
            if not self.reached:
                raise StoreUnavailable(f"Redis at {self.where}: {exc}") from exc
            return
        self.reached = True
        self._recover()

    def status(self) -> dict[str, object]:
        """For /readyz: where Redis is and whether we are serving from local memory."""
        out: dict[str, object] = {"where": self.where}
        if self.down_since is not None:
            out["fallback_local_s"] = round(time.monotonic() - self.down_since, 1)
        return out

    async def aclose(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self._batch.drain()
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()
        await self.local.aclose()

    # -- the circuit -----------------------------------------------------------------------

    async def _call(self, remote: Callable[[Client], Awaitable[T]],
                    local: Callable[[MemoryStore], Awaitable[T]]) -> T:
        if self._watch is None and self._sentinel is not None and not self._closed:
            self._watch = asyncio.get_running_loop().create_task(self._follow_master())
        if self.down_since is None:
            try:
                result = await remote(self._redis)
            except UNREACHABLE as exc:
                self._trip(exc)
            except ResponseError as exc:
                if not _refuses_writes(exc):
                    raise  # this command's own error (WRONGTYPE, say): not an outage
                self._trip(exc)
            else:
                self.reached = True
                return result
        self.fallback_ops += 1
        if self.metrics is not None:
            self.metrics.store_fallbacks.inc()
        return await local(self.local)

    def _trip(self, exc: BaseException) -> None:
        if self.down_since is not None:
            return  # concurrent failures of one outage: log and probe once
        if self._closed:
            # An operation that failed while aclose() ran: a probe started now would outlive
            # the store, and reconnect to a Redis that came back.
            return
        self.down_since = time.monotonic()
        self._writes_refused = isinstance(exc, ResponseError)  # READONLY, OOM, MISCONF
        self.fallback_ops = 0
        self.log.error("redis_unreachable", where=self.where, error=f"{type(exc).__name__}: {exc}",
                       action="serving from process memory; sharing across instances is off "
                              "until Redis answers again", probe_every_s=self.probe_interval)
        self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    def _recover(self) -> None:
        if self.down_since is None:
            return
        self.log.warning("redis_recovered", where=self.where,
                         outage_s=round(time.monotonic() - self.down_since, 2),
                         fallback_ops=self.fallback_ops)
        self.down_since = None

    async def _probe_loop(self) -> None:
        # Pushes never wait on a dead Redis: only this loop does, once per interval.
        while self.down_since is not None:
            await asyncio.sleep(self.probe_interval)
            try:
                if isinstance(self._redis, Redis):
                    # Drop the sockets of the old server (Sentinel: ask for the master anew).
                    # A cluster client refreshes its map of nodes itself after an error.
                    await self._redis.connection_pool.disconnect()
                await self._ping()
                if self._writes_refused:
                    # PING passes on a server that refuses writes (a replica, full, unable
                    # to persist): only a write says the outage is over.
                    ttl = max(1, int(self.probe_interval * 2000))
                    await self._redis.set(PROBE_KEY, b"1", px=ttl)
            except (*UNREACHABLE, ResponseError):
                continue
            self._recover()
        self._probe = None

    async def _ping(self) -> None:
        if isinstance(self._redis, RedisCluster):
            # The masters: every slot is served. (A replica that is down serves none.)
            await self._redis.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self._redis.ping()

    async def _follow_master(self) -> None:
        """Sentinel: ask the sentinels for the master every probe_interval.

        A failover that leaves the old master running raises no error here, so without
        asking, this instance would go on writing to it while instances that connect later
        use the new one: two halves that share neither claims nor the token. The pool
        keeps the answer, and a connection to any other address reconnects before its
        next command (topology.py).
        """
        pool = self._redis.connection_pool if isinstance(self._redis, Redis) else None
        if not isinstance(pool, SentinelConnectionPool):
            return
        known = pool.master_address
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                # (It also closes the idle connections when the address changed.)
                now = await pool.get_master_address()  # type: ignore[no-untyped-call]
            except UNREACHABLE:
                continue  # no sentinel answers: keep the master we have
            if known is not None and now != known:
                self.log.warning("redis_master_switched", where=self.where,
                                 master=f"{now[0]}:{now[1]}")
            known = now


def _refuses_writes(exc: ResponseError) -> bool:
    """Whether Redis refuses every write, as a demoted master does (READONLY): full under
    maxmemory with noeviction (OOM), or a failed snapshot under stop-writes-on-bgsave-error,
    its default (MISCONF). Raised, it would fail every token refresh and OAuth callback."""
    # redis-py has no class of its own for MISCONF: the reply keeps its code.
    return isinstance(exc, OutOfMemoryError) or str(exc).startswith("MISCONF ")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
