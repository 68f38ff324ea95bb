"""RedisStore against real redis-servers: the Store contract, atomicity, fallback, auth, TLS."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from structlog.testing import capture_logs

from tests.support import ROOT, free_port, isolated_redis, redis_server, started, until
from wxhook.replies import SUCCESS
from wxhook.server.app import create_app
from wxhook.server.config import Settings
from wxhook.server.dedup import Dedup
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.store.redis import RedisStore, StoreUnavailable
from wxhook.server.tokens import TokenManager

pytestmark = pytest.mark.redis
NS = "wxhook:wxtest:"
LOCK = "{" + NS + "token}:lock"  # in the token's cluster slot


@pytest.fixture
def isolated_redis_url(tmp_path: Path) -> Iterator[str]:
    """See isolated_redis()."""
    with isolated_redis(tmp_path) as url:
        yield url


@pytest.fixture
async def store(isolated_redis_url: str) -> Any:
    s = RedisStore(isolated_redis_url, metrics=Metrics())
    yield s
    await s.aclose()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def any_store(request: pytest.FixtureRequest) -> Any:
    """The same contract for both implementations, and for Redis as one server and as a
    cluster (every key of the contract in a slot of its own)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("isolated_redis_url" if request.param == "redis"
                                  else "cluster_url")
    s = RedisStore(url)
    yield s
    await s.aclose()


async def test_store_contract(any_store: Any) -> None:
    s = any_store
    assert await s.get(NS + "a") is None
    assert await s.set(NS + "a", b"1", ttl=30) is True
    assert await s.set(NS + "a", b"2", ttl=30, nx=True) is False
    assert await s.get(NS + "a") == b"1"
    assert await s.set(NS + "a", b"3") is True
    assert await s.get(NS + "a") == b"3"
    assert await s.delete_if(NS + "a", b"other") is False
    assert await s.get(NS + "a") == b"3"
    assert await s.delete_if(NS + "a", b"3") is True
    assert await s.get(NS + "a") is None
    await s.set(NS + "b", b"\x00pending\xff", ttl=0.15)
    assert await s.get(NS + "b") == b"\x00pending\xff"
    await asyncio.sleep(0.3)
    assert await s.get(NS + "b") is None  # sub-second TTLs keep their precision
    await s.set(NS + "c", b"x")
    await s.delete(NS + "c")
    assert await s.get(NS + "c") is None
    assert await s.hgetall(NS + "h") == {}
    await s.hset(NS + "h", {"nickname": "刺猬宝宝", "headimgurl": "u"})
    await s.hset(NS + "h", {"nickname": "新"})
    assert await s.hgetall(NS + "h") == {"nickname": "新", "headimgurl": "u"}
    # compare-and-set: renews or replaces only while the key holds the expected value
    await s.set(NS + "d", b"\x00claim:a", ttl=0.2)
    assert await s.replace_if(NS + "d", b"\x00claim:b", b"theirs", ttl=30) is False
    assert await s.replace_if(NS + "d", b"\x00claim:a", b"\x00claim:a", ttl=0.4) is True
    await asyncio.sleep(0.25)
    assert await s.get(NS + "d") == b"\x00claim:a"  # renewed past its first TTL
    assert await s.replace_if(NS + "d", b"\x00claim:a", b"reply \xe5", ttl=30) is True
    assert await s.get(NS + "d") == b"reply \xe5"
    assert await s.replace_if(NS + "gone", b"x", b"y", ttl=30) is False
    assert await s.get(NS + "gone") is None
    await s.ping()


async def test_commands_of_one_loop_turn_share_one_pipeline(store: RedisStore) -> None:
    flushes = 0
    flush = store._batch._flush

    async def counted() -> None:
        nonlocal flushes
        flushes += 1
        await flush()

    store._batch._flush = counted  # type: ignore[method-assign]
    keys = [NS + f"turn{i}" for i in range(40)]
    # 40 claims, each key twice: the first of each pair wins, as if sent one by one.
    won = await asyncio.gather(*(store.set(k, b"v" + k.encode(), ttl=30, nx=True)
                                 for k in keys for _ in range(2)))
    assert won == [True, False] * 40
    assert await asyncio.gather(*(store.get(k) for k in keys)) == [b"v" + k.encode()
                                                                   for k in keys]
    assert flushes == 2  # one pipeline for the 80 SETs, one for the 40 GETs


async def test_one_failing_command_fails_alone(store: RedisStore,
                                               isolated_redis_url: str) -> None:
    direct = redis.Redis.from_url(isolated_redis_url)
    try:
        direct.hset(NS + "a-hash", mapping={"f": "v"})  # GET on a hash: WRONGTYPE
        results = await asyncio.gather(store.get(NS + "a-hash"), store.set(NS + "ok", b"1"),
                                       store.get(NS + "ok"), return_exceptions=True)
        assert isinstance(results[0], redis.ResponseError) and "WRONGTYPE" in str(results[0])
        assert results[1:] == [True, b"1"]
        assert store.down_since is None  # a wrong command is not an outage
    finally:
        direct.close()


async def test_a_pipeline_cancelled_before_it_ran_still_answers_its_callers(
        store: RedisStore) -> None:
    await store.set(NS + "k", b"v")
    waiting = [asyncio.ensure_future(store.set(NS + "x", b"1")),
               asyncio.ensure_future(store.get(NS + "k"))]
    await asyncio.sleep(0)  # both queued; the sender has not run
    store._batch._sender.cancel()  # type: ignore[union-attr]
    _, pending = await asyncio.wait(waiting, timeout=5)
    assert not pending  # answered from the local fallback, not left hanging
    assert waiting[0].result() is True and store.down_since is not None


async def test_a_caller_that_gives_up_costs_the_others_nothing(store: RedisStore) -> None:
    gone = asyncio.ensure_future(store.set(NS + "gone", b"1"))
    kept = asyncio.ensure_future(store.set(NS + "kept", b"2"))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept is True and await store.get(NS + "kept") == b"2"
    assert gone.cancelled()


async def test_closing_under_a_pipeline_leaves_no_connection_open(store: RedisStore) -> None:
    # A pipeline that connects after the client closed would keep its socket open (an
    # unclosed socket at shutdown, or in the test that happens to collect it).
    pending = [asyncio.ensure_future(store.get(NS + "k")) for _ in range(3)]
    await asyncio.sleep(0)  # queued: their pipeline has not connected yet
    await store.aclose()
    assert await asyncio.gather(*pending) == [None] * 3
    pool = store._redis.connection_pool
    connections = [*pool._available_connections, *pool._in_use_connections]
    assert connections and not any(c.is_connected for c in connections)


@pytest.mark.parametrize("scheme", ["redis", "redis+sentinel"])
async def test_operations_failing_under_close_start_no_task_to_outlive_it(scheme: str) -> None:
    s = RedisStore(f"{scheme}://127.0.0.1:{free_port()}/wx", probe_interval=0.05)
    pending = [asyncio.ensure_future(s.get(NS + "k")) for _ in range(3)]
    await asyncio.sleep(0)  # queued; their pipeline fails while the store closes
    await s.aclose()
    assert await asyncio.gather(*pending) == [None] * 3  # still answered, locally
    # Nothing left pinging (and reconnecting to a Redis that comes back) after aclose(),
    # nor started by an operation that comes after it.
    late = RedisStore(f"{scheme}://127.0.0.1:{free_port()}/wx", probe_interval=0.05)
    await late.aclose()
    assert await late.get(NS + "k") is None
    for store in (s, late):
        assert all(t is None or t.done() for t in (store._probe, store._watch))


async def test_two_instances_share_and_claim_once(isolated_redis_url: str,
                                                  store: RedisStore) -> None:
    other = RedisStore(isolated_redis_url)
    try:
        assert store.shared and other.shared
        wins = await asyncio.gather(*(s.set(NS + "claim", b"me", ttl=5, nx=True)
                                      for s in [store, other] * 20))
        assert sum(wins) == 1
        await store.hset(NS + "profile:o1", {"nickname": "A"})
        assert await other.hgetall(NS + "profile:o1") == {"nickname": "A"}
    finally:
        await other.aclose()


async def test_token_single_refresh_across_managers(isolated_redis_url: str) -> None:
    stores = [RedisStore(isolated_redis_url) for _ in range(3)]
    calls = 0

    async def fetch() -> tuple[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return f"TOKEN{calls}", 7200

    managers = [TokenManager(s, fetch, namespace=NS, metrics=Metrics()) for s in stores]
    try:
        tokens = await asyncio.gather(*(m.get() for m in managers * 10))
        assert set(tokens) == {"TOKEN1"} and calls == 1
        await managers[0].invalidate("TOKEN1")      # 40001: expire it everywhere
        assert await managers[0].get() == "TOKEN2" and calls == 2
        # A late 40001 for the old token, on another instance, must not expire the new one.
        await managers[2].invalidate("TOKEN1")
        assert (await stores[2].get(NS + "token") or b"").startswith(b"TOKEN2|")
        assert await managers[2].get() == "TOKEN2" and calls == 2
    finally:
        for s in stores:
            await s.aclose()


@pytest.fixture
def dead_lock_holder(isolated_redis_url: str) -> None:
    """A real process takes the refresh lock exactly as TokenManager does, then is SIGKILLed."""
    code = ("import redis,sys,time; r=redis.Redis.from_url(sys.argv[1]);"
            f"assert r.set('{LOCK}', b'dead-holder', px=1500, nx=True);"
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, isolated_redis_url],
                              stdout=subprocess.PIPE, cwd=ROOT)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()


async def test_killed_lock_holder_blocks_only_for_its_ttl(dead_lock_holder: None,
                                                         store: RedisStore) -> None:
    calls = 0

    async def fetch() -> tuple[str, int]:
        nonlocal calls
        calls += 1
        return "AFTER", 7200

    tm = TokenManager(store, fetch, namespace=NS, metrics=Metrics(), lock_ttl=1.5)
    started = time.monotonic()
    assert await tm.get(deadline=time.monotonic() + 5) == "AFTER"
    waited = time.monotonic() - started
    assert calls == 1 and 0.5 < waited < 2.0, waited
    assert await store.get(LOCK) is None  # released by fence after the refresh


async def test_dedup_across_instances_replays_bytes(isolated_redis_url: str) -> None:
    a, b = RedisStore(isolated_redis_url), RedisStore(isolated_redis_url)
    runs = 0
    reply = b"<xml>reply \xe5\x88\xba</xml>"

    async def one_try(d: Dedup, key: str, deadline: float) -> tuple[bytes, bool]:
        nonlocal runs
        if not await d.claim(key):
            return await d.replay(key, deadline), True
        runs += 1
        await asyncio.sleep(0.3)
        await d.settle(key, reply)
        return reply, False

    try:
        da, db = Dedup(a, namespace=NS), Dedup(b, namespace=NS)
        deadline = time.monotonic() + 4
        results = await asyncio.gather(one_try(da, "k1", deadline), one_try(db, "k1", deadline),
                                       one_try(db, "k1", deadline))
        assert runs == 1
        assert {r for r, _ in results} == {reply}
        assert sorted(retry for _, retry in results) == [False, True, True]
        # A retry whose own deadline comes first answers "success" rather than miss it.
        first = asyncio.ensure_future(one_try(da, "k2", time.monotonic() + 4))
        await asyncio.sleep(0.05)
        # "success", not the reply: it stopped waiting before the first try settled.
        assert await one_try(db, "k2", time.monotonic() + 0.1) == (SUCCESS, True)
        assert (await first)[0] == reply and runs == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_password(tmp_path: Path) -> None:
    with redis_server(tmp_path, "--requirepass", "s3cret/pw") as srv:
        good = RedisStore(f"redis://:s3cret%2Fpw@127.0.0.1:{srv.port}/0")
        bad = RedisStore(f"redis://:wrong@127.0.0.1:{srv.port}/0", metrics=Metrics())
        try:
            await good.ping()
            assert await good.set(NS + "k", b"v") and await good.get(NS + "k") == b"v"
            with pytest.raises(StoreUnavailable) as err:
                await bad.ping()
            assert "wrong" not in str(err.value) and str(srv.port) in str(err.value)
            assert await bad.set(NS + "k", b"local") and await bad.get(NS + "k") == b"local"
            assert await good.get(NS + "k") == b"v"  # the wrong-password store wrote nothing
        finally:
            await good.aclose()
            await bad.aclose()


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (key, cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return key, crt


async def test_tls(tmp_path: Path, tls_cert: tuple[Path, Path]) -> None:
    key, crt = tls_cert
    with redis_server(tmp_path, "--tls-port", "--tls-cert-file", str(crt), "--tls-key-file",
                      str(key), "--tls-ca-cert-file", str(crt),
                      "--tls-auth-clients", "no") as srv:
        s = RedisStore(f"rediss://127.0.0.1:{srv.port}/0?ssl_ca_certs={crt}")
        try:
            await s.ping()
            assert await s.set(NS + "tls", b"ok") and await s.get(NS + "tls") == b"ok"
            assert s.status()["where"] == f"rediss://127.0.0.1:{srv.port}/0"
        finally:
            await s.aclose()


async def test_outage_falls_back_then_resumes(tmp_path: Path) -> None:
    with redis_server(tmp_path) as srv:
        metrics = Metrics()
        s = RedisStore(f"redis://127.0.0.1:{srv.port}/0", metrics=metrics, probe_interval=0.3)
        direct = redis.Redis(port=srv.port)
        try:
            await s.set(NS + "before", b"1")
            with capture_logs() as logs:
                srv.stop()
                slowest = 0.0
                for i in range(50):  # pushes go on: every operation answers, and fast
                    t = time.monotonic()
                    assert await s.set(NS + f"during{i}", b"x", ttl=30, nx=True) is True
                    assert await s.get(NS + f"during{i}") == b"x"
                    slowest = max(slowest, time.monotonic() - t)
                assert slowest < 0.7, slowest
                assert metrics.store_fallbacks._value.get() == 100
                await s.ping()  # no raise: reached before, so degraded, not unready
                assert "fallback_local_s" in s.status()
                srv.start()
                end = time.monotonic() + 5
                while s.down_since is not None and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                assert s.down_since is None
                await s.set(NS + "after", b"2")
                assert await s.get(NS + "after") == b"2"
                await s.delete_if(NS + "after", b"2")  # script cache died with the server
                assert direct.get(NS + "after") is None
                await s.set(NS + "after", b"3")
                assert direct.get(NS + "after") == b"3"
            events = [e["event"] for e in logs]
            assert events.count("redis_unreachable") == 1, events
            assert events.count("redis_recovered") == 1, events
        finally:
            direct.close()
            await s.aclose()


async def test_a_server_refusing_writes_as_a_replica_is_an_outage(tmp_path: Path) -> None:
    # A master demoted to replica (a failover behind a DNS name or a proxy) answers writes
    # with READONLY: served from memory like an unreachable server, never a failed push.
    with redis_server(tmp_path) as master, \
            redis_server(tmp_path, "--replicaof", "127.0.0.1", str(master.port)) as replica:
        s = RedisStore(f"redis://127.0.0.1:{replica.port}/0")
        try:
            assert await s.set(NS + "k", b"v", ttl=30) is True
            assert s.down_since is not None and await s.get(NS + "k") == b"v"
        finally:
            await s.aclose()


@pytest.mark.parametrize("how", ["oom", "misconf"])
async def test_a_server_refusing_every_write_is_an_outage(tmp_path: Path, how: str) -> None:
    # Like READONLY: full under noeviction (OOM) or unable to persist under
    # stop-writes-on-bgsave-error, its default (MISCONF), the server refuses every write.
    # Raised, that failed every token refresh (its lock is a SET) and every OAuth callback.
    gone = tmp_path / "gone"  # a snapshot into a directory that no longer exists fails
    gone.mkdir()
    args = ("--save", "3600 1", "--dir", str(gone)) if how == "misconf" else ()
    with redis_server(tmp_path, *args) as srv, redis.Redis(port=srv.port) as direct:
        if how == "oom":
            direct.config_set("maxmemory-policy", "noeviction")
            direct.config_set("maxmemory", 1)  # below what it uses already
        else:
            gone.rmdir()
            direct.bgsave()
            until(lambda: direct.info("persistence")["rdb_last_bgsave_status"] == "err")
        with pytest.raises(redis.ResponseError, match=r"maxmemory|MISCONF"):
            direct.set(NS + "k", b"v")  # the server does refuse
        s = RedisStore(f"redis://127.0.0.1:{srv.port}/0", probe_interval=0.05)
        try:
            async def fetch() -> tuple[str, int]:
                return "TOKEN", 7200

            tokens = TokenManager(s, fetch, namespace=NS, metrics=Metrics())
            with capture_logs() as logs:
                assert await tokens.get() == "TOKEN"
                assert s.down_since is not None
                assert await s.set(NS + "k", b"v", ttl=30, nx=True) is True
                assert await s.get(NS + "k") == b"v"
                # PING answers on such a server: the probe writes, so the outage holds
                # (no recovered/unreachable pair a probe) until writes are taken again.
                await asyncio.sleep(0.5)
                assert s.down_since is not None
                if how == "oom":
                    direct.config_set("maxmemory", 0)
                else:
                    direct.config_set("stop-writes-on-bgsave-error", "no")
                for _ in range(100):
                    if s.down_since is None:
                        break
                    await asyncio.sleep(0.05)
                assert s.down_since is None
            events = [line["event"] for line in logs]
            assert events.count("redis_unreachable") == events.count("redis_recovered") == 1
        finally:
            await s.aclose()


async def test_unreachable_at_start_fails_readiness(
        make_settings: Callable[..., Settings], upstream: httpx.AsyncClient) -> None:
    # Pushes are served from memory; every replica would see the same outage, so failing
    # readiness would take them all out of the Service at once.
    url = f"redis://127.0.0.1:{free_port()}/0"
    s = RedisStore(url)
    app = create_app(make_settings(REDIS_URL=url), http=upstream, store=s, metrics=Metrics())
    async with started(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               base_url="http://t") as c:
        r = await c.get("/readyz")
        assert (r.status_code, r.json()) == (200, {"ready": True})
        verbose = (await c.get("/readyz?verbose")).json()
    check = verbose["checks"]["redis"]
    assert verbose["degraded"] == ["redis"]
    assert check["ok"] is False and "Connect" in check["error"] + check["reason"]
    assert url.split("//")[1].split("/", maxsplit=1)[0] in check["reason"]
    assert app.state.metrics.registry.get_sample_value(
        "wxhook_dependency_up", {"dependency": "redis", "account": ""}) == 0


async def test_sentinel_url(tmp_path: Path) -> None:
    with redis_server(tmp_path) as master:
        conf = tmp_path / "sentinel.conf"
        conf.write_text(f"sentinel monitor wx 127.0.0.1 {master.port} 1\n")
        with redis_server(tmp_path, str(conf), "--sentinel") as sentinel:
            s = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel.port}/wx/0")
            try:
                await s.ping()
                await s.set(NS + "via-sentinel", b"1")
                with redis.Redis(port=master.port) as direct:
                    assert direct.get(NS + "via-sentinel") == b"1"
            finally:
                await s.aclose()


@pytest.mark.parametrize(("url", "where"), [
    # A sentinel without a port is on 26379 (it used to stop the store from starting).
    ("redis+sentinel://:p@s1,[::1]:26380/wx/2", "redis+sentinel://s1,[::1]:26380/wx/2"),
    ("rediss+sentinel://:p@s1:26379/wx?ssl_ca_certs=/ca.pem", "rediss+sentinel://s1:26379/wx"),
    ("redis+cluster://:p@h1:7000,h2,[::1]:7002", "redis+cluster://h1:7000,h2,[::1]:7002"),
    ("rediss+cluster://u:p@h1:7000/0?ssl_cert_reqs=none", "rediss+cluster://h1:7000/0"),
])
async def test_every_accepted_url_builds_its_client_without_connecting(
        url: str, where: str, make_settings: Callable[..., Settings]) -> None:
    make_settings(REDIS_URL=url)  # accepted at start-up, so the store must take it too
    s = RedisStore(url)
    try:
        assert s.where == where  # no credentials, no query
    finally:
        await s.aclose()
