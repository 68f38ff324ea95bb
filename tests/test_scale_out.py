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

from tests.support import (
    AES_KEY,
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
from wxhook.server.crypto import MessageCrypto
from wxhook.server.signature import sign
from wxhook.server.xmldoc import parse_fields
from wxhook.tools.simulate import Push, decode_reply, push_xml, sign_push

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

        def pids(kind: str = "counter") -> set[int]:
            return {int(Path(p).stem.rpartition("_")[2])
                    for p in glob.glob(str(metrics_dir / f"{kind}_[0-9]*.db"))}
        end = time.monotonic() + 20  # healthz answered from one worker; the other may still start
        while len(pids()) < 2 and time.monotonic() < end:
            await asyncio.sleep(0.1)
        assert len(pids()) == 2
        # A worker that answered pushes (the kernel may have handed all 40 to one): only its
        # latencies make a histogram file whose counts must survive it.
        victim = min(pids("histogram"))
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
        assert 'wxhook_push_latency_seconds_count{account="default"} 40.0' in text.splitlines()


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
        # Served from memory: reported, never unready (every replica sees the same outage).
        ready = await get_json(a + "/readyz?verbose")
        assert ready["ready"] is True and ready["degraded"] == ["redis"]
        assert "fallback_local_s" in ready["checks"]["redis"]
        srv.start()
        end = time.monotonic() + 8
        while time.monotonic() < end:
            stamp = int(time.time() * 1000) % 10**12
            await send_all([(a, subscribe(f"oOutageFollowerC{stamp:012d}"))])
            if direct.keys(f"wxhook:{SANDBOX_APP_ID}:dedup:*"):
                break  # sharing resumed: pushes are claimed in Redis again
            await asyncio.sleep(0.2)
        assert direct.keys(f"wxhook:{SANDBOX_APP_ID}:dedup:*")
        assert "fallback_local_s" not in (await get_json(a + "/readyz?verbose"))["checks"]["redis"]
    text = log.read_text()
    assert text.count('"redis_unreachable"') == 1, text[-3000:]
    assert text.count('"redis_recovered"') == 1


async def outcomes(base: str) -> dict[str, float]:
    """wxhook_pushes_total by outcome (replied, deduped, rejected, ...)."""
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(base + "/metrics")).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("wxhook_pushes_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            found[outcome] = found.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


async def sent_once(sandbox: str) -> list[Any]:
    """The customer-service messages the sandbox took, once the first has come."""
    end = time.monotonic() + 10
    while not (await stats(sandbox))["sent"] and time.monotonic() < end:
        await asyncio.sleep(0.05)
    sent: list[Any] = (await stats(sandbox))["sent"]
    return sent


ALL_RULE = "keywords:\n  - {name: all, equal: [all], mode: reply_all, replies: [one, two]}\n"


async def test_a_push_replayed_in_other_shapes_runs_once_across_instances(
        isolated_redis_url: str, tmp_path: Path) -> None:
    # A compatible-mode push captured on its way to A, sent again to B with its encryption
    # stripped (and unwrapped), and a verification's query sent to B as a push: one
    # passive reply and one follow-up in all (issue 19, items 1 and 2).
    rules = tmp_path / "rules.yaml"
    rules.write_text(ALL_RULE, encoding="utf-8")
    openid = "oReplayedShapes0000000000001"
    crypto = MessageCrypto(TOKEN, [AES_KEY], SANDBOX_APP_ID)
    xml = push_xml("text", openid=openid, text="all")
    sealed = sign_push(xml, token=TOKEN, openid=openid, crypto=crypto)
    encrypt = parse_fields(sealed.body)["Encrypt"]
    push = Push(sealed.params, xml.replace(b"</xml>", f"<Encrypt><![CDATA[{encrypt}]]>"
                                                      "</Encrypt></xml>".encode()))
    stripped = {k: v for k, v in push.params.items() if k not in ("encrypt_type", "msg_signature")}
    with sandbox_process() as sb, \
            server_process(sb, REDIS_URL=isolated_redis_url, WXHOOK_RULES=str(rules)) as a, \
            server_process(sb, REDIS_URL=isolated_redis_url, WXHOOK_RULES=str(rules)) as b:
        async with httpx.AsyncClient(timeout=10) as c:
            first = await c.post(a + "/wechat", params=push.params, content=push.body)
            assert first.status_code == 200
            assert decode_reply(first.content, crypto=crypto)["Content"] == "one"
            for body in (push.body, xml):
                r = await c.post(b + "/wechat", params=stripped, content=body)
                assert r.status_code == 403 and r.content.startswith(b"replay"), r.text
            retry = await c.post(b + "/wechat", params=push.params, content=push.body)
            assert retry.content == first.content  # WeChat's own retry: the same bytes
            ts, nonce = str(int(time.time())), "1514711492"
            q = {"signature": sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}
            got = await c.get(a + "/wechat", params={**q, "echostr": "4375120948345356249"})
            assert got.status_code == 200 and got.content == b"4375120948345356249"
            r = await c.post(b + "/wechat", params={**q, "openid": openid},
                             content=push_xml("text", openid=openid, text="all"))
            assert r.status_code == 403 and r.content.startswith(b"replay"), r.text
        counted = [await outcomes(a), await outcomes(b)]
        assert sum(o.get("replied", 0) for o in counted) == 1
        assert sum(o.get("deduped", 0) for o in counted) == 1
        assert await sent_once(sb) == [
            {"touser": openid, "msgtype": "text", "text": {"content": "two"}}]


async def test_a_signature_cut_anew_admits_nothing_on_a_real_server() -> None:
    # The pair a real push was signed for, cut anew ("0120" and T as "012" and "0" + T),
    # and the same second spelled as int() would read it: 400, and the server goes on.
    with sandbox_process() as sb, server_process(sb) as a:
        openid = "oCutAnew00000000000000000001"
        ts = str(int(time.time()))
        real = sign_push(push_xml("text", openid=openid, text="hello"), token=TOKEN,
                         openid=openid, timestamp=int(ts), nonce="0120")
        async with httpx.AsyncClient(timeout=10) as c:
            assert (await c.post(a + "/wechat", params=real.params,
                                 content=real.body)).status_code == 200
            for t, n in [("0" + ts, "012"), ("+" + ts, "0120"), (ts + " ", "0120"),
                         (ts[:4] + "_" + ts[4:], "0120"), (" " + ts, "0120")]:
                params = {**real.params, "signature": sign(TOKEN, t, n), "timestamp": t,
                          "nonce": n}
                r = await c.post(a + "/wechat", params=params,
                                 content=push_xml("text", openid=openid, text="help"))
                assert r.status_code == 400 and r.content.startswith(b"timestamp"), (t, r.text)
            good = subscribe("oCutAnew00000000000000000002")
            r = await c.post(a + "/wechat", params=good.params, content=good.body)
            assert r.status_code == 200 and b"Welcome, Follower-000002!" in r.content
