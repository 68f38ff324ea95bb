"""wxhook on a real Redis Cluster (redis+cluster://): where its keys live, the pipeline split
by node, two server processes sharing one token, and a master killed while pushes flow."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot
from structlog.testing import capture_logs

from tests.push_flow import Flow, counting_router, recovered, settled
from tests.redis_nodes import redis_cluster
from tests.support import SANDBOX_APP_ID, TOKEN, sandbox_process, server_process
from wxhook.server.metrics import Metrics
from wxhook.server.store.redis import RedisStore
from wxhook.tools.simulate import Push, push_xml, sign_push

pytestmark = pytest.mark.redis
# One event loop runs the instances, the sandbox and the pushes' sender: on a loaded machine
# a reply may wait on it longer than production's 0.3 s socket timeout, which would look
# like an outage. A dead server is still seen at once (its connections are refused).
SLOW = 1.0
NS = f"wxhook:{SANDBOX_APP_ID}:"


class KeyLog:
    """A Store that notes every key it is asked about, then asks the real one."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.shared = True
        self.keys: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if name in ("ping", "aclose", "status"):
            return method

        async def noted(key: str, *args: Any, **kwargs: Any) -> Any:
            self.keys.append(key)
            return await method(key, *args, **kwargs)
        return noted


def owners(url: str) -> Callable[[str], int]:
    """key -> the port of the master serving its slot, as the cluster says now."""
    first = url.split("//")[1].split(",", maxsplit=1)[0]
    with redis.Redis(port=int(first.split(":")[1])) as r:
        ranges = [(lo, hi, int(master[1])) for lo, hi, master, *_ in
                  r.execute_command("CLUSTER", "SLOTS")]
    return lambda key: next(port for lo, hi, port in ranges if lo <= key_slot(key.encode()) <= hi)


async def test_keys_of_one_operation_share_a_slot_and_pushes_spread(
        cluster_url: str, make_app: Callable[..., Any], make_push: Callable[..., Push]) -> None:
    store = KeyLog(RedisStore(cluster_url, timeout=SLOW))
    app = make_app(store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as c:
        async def post(push: Push) -> str:
            return (await c.post("/wechat", params=push.params, content=push.body)).text
        # One campaign's QR code: its EventKey has braces, which would be a hash tag.
        scans = await asyncio.gather(*(post(make_push("subscribe", openid=f"oQrScene{i:020d}",
                                                      event_key="qrscene_{spring}"))
                                       for i in range(60)))
        texts = await asyncio.gather(*(post(make_push("text", openid=f"oTexter{i:021d}",
                                                      text="help")) for i in range(60)))
        await settled(app)
    await store.store.aclose()
    assert store.store.down_since is None
    assert all("Welcome, Follower-" in body for body in scans)
    assert all("<xml>" in body for body in texts)
    where = owners(cluster_url)
    # The token and its refresh lock: one slot (a script may touch both; a lock guards it).
    token, lock = NS + "token", next(k for k in store.keys if k.endswith(":lock"))
    assert token in store.keys and key_slot(token.encode()) == key_slot(lock.encode())
    # One account's pushes spread over every master: its dedup claims, replies and nonces,
    # those of the pushes through one QR code too (their braces do not pick the slot).
    for part in ("dedup:e:oQrScene", "dedup:m:", "nonce:"):
        keys = {k for k in store.keys
                if k.startswith((NS + part, NS + part.replace(":e:", ":{e:")))}
        assert len(keys) >= 60, (part, len(keys))
        spread = collections.Counter(where(k) for k in keys)
        assert len(spread) == 3 and max(spread.values()) < 0.6 * len(keys), (part, spread)


async def test_one_loop_turn_is_one_pipeline_sent_to_each_node_once(
        cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.asyncio.cluster import ClusterNode

    batches: list[tuple[str, int]] = []
    send = ClusterNode.execute_pipeline

    async def counted(self: ClusterNode, commands: Any) -> Any:
        batches.append((self.name, len(commands)))
        return await send(self, commands)

    store = RedisStore(cluster_url)
    try:
        await store.ping()
        monkeypatch.setattr(ClusterNode, "execute_pipeline", counted)
        keys = [NS + f"turn{i}" for i in range(60)]
        won = await asyncio.gather(*(store.set(k, k.encode(), ttl=30, nx=True)
                                     for k in keys for _ in range(2)))
        assert won == [True, False] * 60
        assert await asyncio.gather(*(store.get(k) for k in keys)) == [k.encode() for k in keys]
        assert await asyncio.gather(*(store.replace_if(k, k.encode(), b"r", ttl=30)
                                      for k in keys)) == [True] * 60
    finally:
        await store.aclose()
    # Three turns, each one batch per master: 120 SETs, 60 GETs, 60 scripts.
    assert len(batches) == 9 and len({name for name, _ in batches}) == 3, batches
    assert sum(n for _, n in batches) == 240


def subscribe(openid: str) -> Push:
    """A signed plaintext subscribe push."""
    return sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid)


def lookups(stats: dict[str, Any]) -> int:
    """user/info calls (one or a batch) the sandbox answered."""
    return sum(n for path, n in stats["calls"].items() if "user/info" in path)


@pytest.mark.slow
async def test_two_server_processes_on_a_cluster_url(cluster_url: str) -> None:
    with sandbox_process(latency="0.03") as sb, \
            server_process(sb, REDIS_URL=cluster_url) as a, \
            server_process(sb, REDIS_URL=cluster_url) as b:
        async with httpx.AsyncClient(timeout=10) as c:
            async def post(base: str, push: Push) -> bytes:
                return (await c.post(base + "/wechat", params=push.params,
                                     content=push.body)).content
            openids = [f"oClusterProc{i:016d}" for i in range(30)]
            bodies = await asyncio.gather(*(post((a, b)[i % 2], subscribe(o))
                                            for i, o in enumerate(openids)))
            assert all(f"Welcome, Follower-{o[-6:]}!".encode() in body
                       for body, o in zip(bodies, openids, strict=True))
            before = (await c.get(sb + "/_sandbox/stats")).json()
            retried = subscribe("oClusterProcRetried000000001")
            both = await asyncio.gather(post(a, retried), post(b, retried), post(a, retried))
            after = (await c.get(sb + "/_sandbox/stats")).json()
            ready = (await c.get(a + "/readyz?verbose")).json()["checks"]["redis"]
    assert len(set(both)) == 1 and b"Follower-000001" in both[0]
    assert after["token_requests"] == 1
    # The push tried on both instances ran its handler once: one lookup upstream.
    assert lookups(after) == lookups(before) + 1
    assert ready["ok"] is True and ready["where"].startswith("redis+cluster://")


async def test_a_master_killed_while_pushes_flow(tmp_path: Path, sandbox: Any,
                                                 make_app: Callable[..., Any],
                                                 make_push: Callable[..., Push]) -> None:
    runs: collections.Counter[str] = collections.Counter()
    metrics = Metrics()
    with redis_cluster(tmp_path) as cluster:
        stores = [RedisStore(cluster.url, metrics=metrics, probe_interval=0.2, timeout=SLOW)
                  for _ in range(3)]
        apps = [make_app(store=s, router=counting_router(runs)) for s in stores]
        flow = Flow(apps[:2], make_push, tag="kill")
        try:
            # Healthy: one token for both instances; a retry on the other one replays.
            await flow.one(to=(0,), subscribe=True)
            await flow.one(to=(1,), subscribe=True)
            await flow.one(to=(0, 1), subscribe=True)
            await flow.one(to=(1, 0))
            assert sandbox.token_requests == 1
            with capture_logs() as logs:
                flow.start()
                # Planned (CLUSTER FAILOVER): the slots move with redirects, no outage.
                await asyncio.sleep(0.3)
                victim = await asyncio.to_thread(cluster.hand_over,
                                                 cluster.master_of(NS + "token"))
                await asyncio.sleep(0.3)
                assert metrics.store_fallbacks._value.get() == 0
                # Unplanned: the token's master (the replica just promoted) is killed.
                cluster.kill(victim)
                await asyncio.to_thread(cluster.wait_promoted, victim)
                await recovered(stores[:2])
                await asyncio.sleep(0.5)
                await flow.stop()
            events = [e["event"] for e in logs]
            assert "redis_unreachable" in events and "redis_recovered" in events, events
            assert metrics.store_fallbacks._value.get() > 0  # the outage was served locally
            # Shared again: a retry on the other instance replays the first try's reply.
            await flow.one(to=(0, 1))
            await flow.one(to=(1, 0), subscribe=True)
            assert flow.faults(runs) == []
            assert len(flow.sent) > 40
            # The token outlived its master (the replica had it): a third instance, new
            # since the failover, greets with it rather than fetching one of its own.
            third = Flow([apps[2]], make_push, tag="third")
            await third.one(subscribe=True)
            await third.aclose()
            assert third.faults(runs) == []
            assert sandbox.token_requests == 1
        finally:
            await flow.aclose()
            for s in stores:
                await s.aclose()


async def test_a_master_lost_for_good_is_an_outage_served_locally(tmp_path: Path) -> None:
    # No replica to promote: once the nodes agree the master is gone, the cluster refuses
    # every key (CLUSTERDOWN), those of the masters still running too. That is an outage
    # like an unreachable server: answered from memory, never an error for the push.
    with redis_cluster(tmp_path, replicas=0) as cluster:
        store = RedisStore(cluster.url, timeout=SLOW)
        try:
            victim = cluster.master_of(NS + "token")
            alive = next(f"{NS}k{i}" for i in range(100) if cluster.master_of(f"{NS}k{i}")
                         is not victim)
            assert await store.set(alive, b"before") is True
            cluster.kill(victim)
            await asyncio.to_thread(cluster.wait_down)
            with capture_logs() as logs:
                assert await store.set(alive, b"during") is True
                assert await store.get(alive) == b"during"
            assert store.down_since is not None
            assert [e["error"] for e in logs] == ["ClusterDownError: The cluster is down"]
            await store.ping()  # reached before: degraded, not unready
        finally:
            await store.aclose()

