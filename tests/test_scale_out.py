"""Real `wxhook serve` processes sharing one Redis: one token, one answer per push."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.tools.simulate import Push, push_xml, sign_push
from tests.support import (
    SANDBOX_APP_ID,
    TOKEN,
    WXHOOK,
    free_port,
    isolated_redis,
    process,
    redis_server,
    sandbox_process,
    server_env,
    server_process,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def isolated_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis of these tests' own (see tests.support.isolated_redis)."""
    with isolated_redis(tmp_path) as url:
        yield url


def subscribe(openid: str) -> Push:
    """A signed plaintext subscribe push, as WeChat sends it."""
    return sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid)


async def send_all(targets: list[tuple[str, Push]]) -> list[tuple[int, bytes, float]]:
    """POST every push at once; (status, body, seconds) in order."""
    async with httpx.AsyncClient(timeout=10) as c:
        async def one(base: str, push: Push) -> tuple[int, bytes, float]:
            t = time.monotonic()
            r = await c.post(base + "/wechat", params=push.params, content=push.body)
            return r.status_code, r.content, time.monotonic() - t
        return await asyncio.gather(*(one(b, p) for b, p in targets))


async def get_json(url: str) -> dict[str, Any]:
    """GET a JSON document (the sandbox's counters, /readyz)."""
    async with httpx.AsyncClient(timeout=10) as c:
        data: dict[str, Any] = (await c.get(url)).json()
        return data


async def stats(sandbox: str) -> dict[str, Any]:
    """The sandbox's counters."""
    return await get_json(sandbox + "/_sandbox/stats")


async def pushes_total(base: str) -> float:
    """wxhook_pushes_total over every label set, as one scrape of /metrics shows it."""
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(base + "/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("wxhook_pushes_total{"))


def lookups(st: dict[str, Any]) -> int:
    """user/info calls, single or batched: each is one lookup upstream."""
    calls = st["calls"]
    assert isinstance(calls, dict)
    return sum(n for path, n in calls.items() if "user/info" in path)


async def test_two_instances_one_token_and_greetings(isolated_redis_url: str) -> None:
    url = isolated_redis_url
    with sandbox_process(latency="0.03") as sb, \
            server_process(sb, REDIS_URL=url) as a, \
            server_process(sb, REDIS_URL=url) as b:
        openids = [f"oScaleOutFollower{i:011d}" for i in range(60)]
        results = await send_all([((a, b)[i % 2], subscribe(o)) for i, o in enumerate(openids)])
        for (status, body, _), openid in zip(results, openids, strict=True):
            assert status == 200
            assert f"Welcome, Follower-{openid[-6:]}!" in body.decode(), body
        assert (await stats(sb))["token_requests"] == 1


async def test_push_on_both_instances_is_answered_once(isolated_redis_url: str) -> None:
    url = isolated_redis_url
    with sandbox_process(latency="0.05") as sb, \
            server_process(sb, REDIS_URL=url) as a, \
            server_process(sb, REDIS_URL=url) as b:
        # WeChat's retries, here landing on both instances while the first try runs.
        push = subscribe("oScaleOutRetried000000000001")
        results = await send_all([(a, push), (b, push), (a, push)])
        bodies = {body for _, body, _ in results}
        assert len(bodies) == 1 and b"Welcome, Follower-000001!" in bodies.pop()
        assert lookups(await stats(sb)) == 1
        # ... and one after another, as when the first answer was lost on the way back.
        push = subscribe("oScaleOutRetried000000000002")
        seq = [(await send_all([(base, push)]))[0][1] for base in (b, a, b)]
        assert len(set(seq)) == 1 and b"Welcome, Follower-000002!" in seq[0]
        assert lookups(await stats(sb)) == 2


async def test_an_instance_killed_mid_push_loses_no_reply(isolated_redis_url: str) -> None:
    # Instance A claims a push and dies (SIGKILL) while its user/info lookup hangs; WeChat's
    # retry reaches B at once, while A's claim still looks held. B must take the push over
    # and greet the follower in time, not wait out its deadline and answer "success".
    url = isolated_redis_url
    with sandbox_process() as sb, server_process(sb, REDIS_URL=url) as b:
        port = free_port()
        with process([WXHOOK, "serve", "--port", str(port)], env=server_env(sb, REDIS_URL=url),
                     ready_url=f"http://127.0.0.1:{port}/healthz") as proc_a:
            async with httpx.AsyncClient(timeout=10) as c:
                await c.post(sb + "/_sandbox/faults",
                             json={"path": "/cgi-bin/user/info", "latency": 6, "times": 1})
                push = subscribe("oKilledMidLookup000000000001")
                first = asyncio.ensure_future(c.post(f"http://127.0.0.1:{port}/wechat",
                                                     params=push.params, content=push.body))
                end = time.monotonic() + 5
                while lookups(await stats(sb)) == 0 and time.monotonic() < end:
                    await asyncio.sleep(0.02)
                assert lookups(await stats(sb)) == 1  # A is waiting for user/info
                os.killpg(proc_a.pid, signal.SIGKILL)
                with pytest.raises(httpx.TransportError):
                    await first
        (status, body, took), = await send_all([(b, push)])
        assert status == 200 and b"Welcome, Follower-000001!" in body, body
        assert took < 4.5  # inside WeChat's 5 s window, though A died mid-lookup
        # ... and B's answer is the push's answer from now on.
        (_, again, _), = await send_all([(b, push)])
        assert again == body and lookups(await stats(sb)) == 2


async def test_a_live_holder_slower_than_its_lease_keeps_its_push(
        isolated_redis_url: str) -> None:
    # The first try's lookup takes 2.6 s, longer than the claim's 2-s lease: the holder renews
    # it, so the retry on B waits and replays A's reply instead of running the handler.
    url = isolated_redis_url
    with sandbox_process() as sb, \
            server_process(sb, REDIS_URL=url) as a, \
            server_process(sb, REDIS_URL=url) as b:
        async with httpx.AsyncClient(timeout=10) as c:
            await c.post(sb + "/_sandbox/faults",
                         json={"path": "/cgi-bin/user/info", "latency": 2.6, "times": 1})
        push = subscribe("oSlowLiveHolder0000000000001")
        first = asyncio.ensure_future(send_all([(a, push)]))
        await asyncio.sleep(0.5)
        (_, retried, _), = await send_all([(b, push)])
        (_, answered, _), = await first
        assert b"Welcome, Follower-000001!" in answered and retried == answered
        assert lookups(await stats(sb)) == 1


async def test_fresh_single_instance_cold_burst() -> None:
    with sandbox_process(latency="0.03") as sb, server_process(sb) as a:
        results = await send_all([(a, subscribe(f"oColdBurstFollower{i:010d}"))
                                  for i in range(40)])
        assert all(s == 200 and b"Welcome, Follower-" in body for s, body, _ in results)
        assert (await stats(sb))["token_requests"] == 1


async def test_workers_share_token_and_metrics(isolated_redis_url: str, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_4194001.db").write_bytes(b"stale junk from a previous run")
    with sandbox_process(latency="0.03") as sb, \
            server_process(sb, workers=2, REDIS_URL=isolated_redis_url,
                           PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as a:
        assert not (metrics_dir / "counter_4194001.db").exists()  # cleared by the parent
        results = await send_all([(a, subscribe(f"oWorkersFollower{i:012d}")) for i in range(40)])
        assert all(b"Welcome, Follower-" in body for _, body, _ in results)
        assert (await stats(sb))["token_requests"] == 1
        for _ in range(6):  # whichever worker answers the scrape sees every worker's counts
            assert await pushes_total(a) == 40
        pids = {int(Path(p).stem.rpartition("_")[2])
                for p in glob.glob(str(metrics_dir / "counter_*.db"))}
        assert len(pids) == 2
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)  # the supervisor replaces it and retires its files
        end = time.monotonic() + 10
        while glob.glob(str(metrics_dir / f"*_{victim}.db")) and time.monotonic() < end:
            await asyncio.sleep(0.1)
        assert not glob.glob(str(metrics_dir / f"*_{victim}.db"))  # every type of file
        assert (metrics_dir / "counter_retired.db").exists()  # its counts stay counted
        assert (metrics_dir / "histogram_retired.db").exists()
        assert await pushes_total(a) == 40
        async with httpx.AsyncClient(timeout=10) as c:
            text = (await c.get(a + "/metrics")).text
        assert "wxhook_push_latency_seconds_count 40.0" in text.splitlines()


async def test_redis_stopped_and_restarted_mid_run(tmp_path: Path) -> None:
    # Our own redis-server: the shared one at 6379 is never stopped.
    log = tmp_path / "server.log"
    with redis_server(tmp_path) as srv, sandbox_process() as sb, \
            server_process(sb, REDIS_URL=f"redis://127.0.0.1:{srv.port}/0", log_path=log) as a, \
            redis.Redis(port=srv.port) as direct:
        first = await send_all([(a, subscribe(f"oOutageFollower{i:013d}")) for i in range(10)])
        assert all(b"Welcome, Follower-" in body for _, body, _ in first)
        srv.stop()
        during = await send_all([(a, subscribe(f"oOutageFollowerB{i:012d}")) for i in range(30)])
        assert all(s == 200 and b"Welcome, Follower-" in body for s, body, _ in during)
        assert max(t for _, _, t in during) < 2.0  # well inside WeChat's 5 s
        ready = (await get_json(a + "/readyz"))["checks"]["redis"]
        assert ready["ok"] is True and "fallback_local_s" in ready
        srv.start()
        end = time.monotonic() + 8
        while time.monotonic() < end:
            stamp = int(time.time() * 1000) % 10**12
            await send_all([(a, subscribe(f"oOutageFollowerC{stamp:012d}"))])
            if direct.keys(f"wxhook:{SANDBOX_APP_ID}:dedup:*"):
                break  # sharing resumed: pushes are claimed in Redis again
            await asyncio.sleep(0.2)
        assert direct.keys(f"wxhook:{SANDBOX_APP_ID}:dedup:*")
        assert "fallback_local_s" not in (await get_json(a + "/readyz"))["checks"]["redis"]
    text = log.read_text()
    assert text.count('"redis_unreachable"') == 1, text[-3000:]
    assert text.count('"redis_recovered"') == 1
