"""What on-call sees: JSON log lines without secrets, moving metrics, health, `wxhook check`."""

import json
import subprocess
import time

import httpx
import pytest

from tests.support import (
    AES_KEY,
    SANDBOX_APP_ID,
    SANDBOX_SECRET,
    TOKEN,
    WXHOOK,
    free_port,
    redis_server,
    sandbox_process,
    server_env,
    server_process,
    started,
)
from wxhook.server.signature import sign
from wxhook.tools.simulate import decode_reply, push_xml, sign_push

pytestmark = pytest.mark.slow

SECRETS = (SANDBOX_SECRET, TOKEN, AES_KEY, "my-session-secret-value-xyz", "redispassw0rd")


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_push_log_lines_are_json_with_the_fields_and_no_secrets(tmp_path):
    log = tmp_path / "server.log"
    with sandbox_process() as api, server_process(
            api, log_path=log, SESSION_SECRET="my-session-secret-value-xyz") as url:
        for aes in (False, True):
            openid = f"oLogFollower000000000000000{int(aes)}"
            from wxhook.server.crypto import MessageCrypto
            crypto = MessageCrypto(TOKEN, [AES_KEY], SANDBOX_APP_ID) if aes else None
            push = sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid,
                             crypto=crypto)
            r = httpx.post(url + "/wechat", params=push.params, content=push.body)
            assert r.status_code == 200
        bad = httpx.post(url + "/wechat", params={**push.params, "signature": "0" * 40},
                         content=push.body)
        assert bad.status_code == 403
        httpx.get(url + "/readyz")
        time.sleep(0.3)
    text = log.read_text()
    lines = _lines(log)  # every line is JSON, uvicorn's own included
    assert any(rec.get("logger", "").startswith("uvicorn") for rec in lines)
    pushes = [rec for rec in lines if rec.get("event") == "push"]
    assert len(pushes) == 2
    for rec in pushes:
        for field in ("timestamp", "level", "request_id", "appid", "mode", "msg_type", "wx_event",
                      "openid", "handler", "reply_type", "latency_ms", "upstream", "dedup_hit",
                      "deadline_fallback", "outcome"):
            assert field in rec, field
        assert rec["openid"] != openid and rec["openid"].startswith("oLog")
    assert {r["mode"] for r in pushes} == {"plain", "safe"}
    assert any(r["upstream"] for r in pushes)
    assert any(rec.get("event") == "push_refused" and rec.get("reason") == "signature"
               for rec in lines)
    assert any(rec.get("event") == "startup" for rec in lines)
    assert any(rec.get("event") == "token_refreshed" for rec in lines)
    for secret in SECRETS:
        assert secret not in text, "a secret reached the log"
    token_like = [w for w in text.split('"') if w.startswith("sandbox-") and len(w) > 20]
    assert not token_like


def test_metrics_move_and_health_endpoints_answer(tmp_path):
    with sandbox_process() as api, server_process(api) as url:
        assert httpx.get(url + "/healthz").json() == {"status": "alive"}
        ready = httpx.get(url + "/readyz?verbose")
        assert ready.status_code == 200 and ready.json()["checks"]["token"]["ok"] is True

        def sample(name, **labels):
            for line in httpx.get(url + "/metrics").text.splitlines():
                if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        before = sample("wxhook_pushes_total", msg_type="event", outcome="replied")
        push = sign_push(push_xml("subscribe", openid="oMetrics00000000000000000001"),
                         token=TOKEN, openid="oMetrics00000000000000000001")
        for _ in range(2):
            httpx.post(url + "/wechat", params=push.params, content=push.body)
        httpx.post(url + "/wechat", params={**push.params, "signature": "0" * 40},
                   content=push.body)
        assert sample("wxhook_pushes_total", msg_type="event", outcome="replied") == before + 1
        assert sample("wxhook_dedup_hits_total") >= 1
        assert sample("wxhook_guard_failures_total", reason="signature") >= 1
        assert sample("wxhook_upstream_calls_total", api="user_info", errcode="0") >= 1
        assert sample("wxhook_token_refreshes_total", reason="cold", result="ok") == 1
        assert sample("wxhook_push_latency_seconds_count") >= 2
        assert sample("wxhook_ready") == 1


# -- readiness: this instance only; a fault every replica shares never fails it ---------------

def browser(app, host="127.0.0.1", **headers):
    """An in-process client at `host` (httpx's ASGI transport sets the socket peer)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 40000)),
                             base_url="http://testserver", headers=headers)


def gauge(app, name, **labels):
    return app.state.metrics.registry.get_sample_value(name, labels)


async def welcome(client, openid="oReadyFollower00000000000001"):
    push = sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid)
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200
    return decode_reply(r.content, crypto=None).get("Content")


async def test_ready_once_started_and_not_after_shutdown(make_app):
    app = make_app()
    async with browser(app) as client:
        before = await client.get("/readyz")  # start-up not finished: settings, rules, watcher
        assert (before.status_code, before.json()) == (503, {"ready": False})
        async with started(app):
            r = await client.get("/readyz")
            assert (r.status_code, r.json()) == (200, {"ready": True})
            assert gauge(app, "wxhook_ready") == 1
        after = await client.get("/readyz")
        assert (after.status_code, after.json()) == (503, {"ready": False})
        verbose = (await client.get("/readyz?verbose")).json()
        assert verbose["problems"] == ["stopping"] and verbose["ready"] is False


def _token_outage(kind):
    """A WeChat API whose token endpoints fail as `kind`; every other call answers ok."""
    def handle(request):
        if "token" not in request.url.path:
            return httpx.Response(200, json={"errcode": 0, "nickname": ""})
        if kind == "connect":
            raise httpx.ConnectError("refused", request=request)
        if kind == "http500":
            return httpx.Response(500, text="bad gateway")
        errcode = {"secret": 40125, "whitelist": 40164, "busy": -1, "quota": 45009}[kind]
        return httpx.Response(200, json={"errcode": errcode,
                                         "errmsg": f"invalid ip 198.51.100.23, kind {kind}"})
    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@pytest.mark.parametrize("kind", ["secret", "whitelist", "busy", "quota", "http500", "connect"])
async def test_a_token_outage_is_reported_and_counted_never_unready(make_app, kind):
    async with _token_outage(kind) as http:
        app = make_app(http=http)
        async with started(app), browser(app) as client:
            assert await welcome(client) == "Welcome!"  # the fallback greeting, in time
            for _ in range(3):
                r = await client.get("/readyz")
                assert (r.status_code, r.content) == (200, b'{"ready":true}')
            verbose = await client.get("/readyz", params={"verbose": "1"})
            assert verbose.status_code == 200
            body = verbose.json()
            assert body["ready"] is True and body["degraded"] == ["token"]
            assert body["checks"]["token"]["ok"] is False
            assert gauge(app, "wxhook_dependency_up", dependency="token", account="default") == 0
            metrics = (await client.get("/metrics")).text
            assert 'wxhook_dependency_up{account="default",dependency="token"} 0.0' in metrics
    if kind == "secret":
        assert body["checks"]["token"]["error"]["errcode"] == 40125
        assert "WECHAT_APP_SECRET" in body["checks"]["token"]["fix"]


async def test_a_token_that_works_again_clears_the_gauge(make_app):
    app = make_app()
    async with started(app), browser(app) as client:
        assert (await client.get("/readyz?verbose")).json()["degraded"] == []
        assert gauge(app, "wxhook_dependency_up", dependency="token", account="default") == 1


async def test_a_redis_outage_served_locally_is_reported_never_unready(make_settings, upstream,
                                                                       tmp_path):
    from wxhook.server.app import create_app
    from wxhook.server.metrics import Metrics
    from wxhook.server.store.redis import RedisStore

    with redis_server(tmp_path) as srv:
        url = f"redis://127.0.0.1:{srv.port}/0"
        store = RedisStore(url, probe_interval=0.05)
        app = create_app(make_settings(REDIS_URL=url), http=upstream, store=store,
                         metrics=Metrics())
        async with started(app), browser(app) as client:
            assert (await client.get("/readyz?verbose")).json()["degraded"] == []
            assert gauge(app, "wxhook_dependency_up", dependency="redis", account="") == 1
            srv.stop()
            assert (await welcome(client)).startswith("Welcome")  # served from memory
            r = await client.get("/readyz")
            assert (r.status_code, r.content) == (200, b'{"ready":true}')
            body = (await client.get("/readyz?verbose")).json()
            assert body["ready"] is True and "redis" in body["degraded"]
            assert body["checks"]["redis"]["ok"] is False
            assert "fallback_local_s" in body["checks"]["redis"]
            assert gauge(app, "wxhook_dependency_up", dependency="redis", account="") == 0


@pytest.mark.parametrize("host, headers", [
    ("10.0.0.7", {}), ("203.0.113.9", {}), ("192.168.1.2", {}), ("::2", {}),
    ("127.0.0.1", {"x-forwarded-for": "127.0.0.1"}),
    ("127.0.0.1", {"x-forwarded-for": "203.0.113.9, 127.0.0.1"}),
    ("127.0.0.1", {"x-real-ip": "127.0.0.1"}),
    ("127.0.0.1", {"forwarded": "for=127.0.0.1"}),
    ("127.0.0.1", {"x-forwarded-proto": "https"}),
    ("127.0.0.1", {"x-forwarded-host": "localhost"}),
    ("127.0.0.1", {"via": "1.1 proxy"}),
    ("::1", {"X-Forwarded-For": "::1"}),
])
async def test_the_verbose_view_refuses_other_hosts_and_anything_a_proxy_passed_on(
        make_app, host, headers):
    app = make_app()
    async with started(app), browser(app, host, **headers) as client:
        for query in ("verbose", "verbose=1", "verbose=true&x=1"):
            r = await client.get(f"/readyz?{query}")
            assert r.status_code == 403
            assert set(r.json()) == {"error"} and "loopback" in r.json()["error"]
        assert (await client.get("/readyz")).json() == {"ready": True}


async def test_no_verbose_view_for_a_forged_forwarded_for_through_the_trusted_proxy(make_app):
    from wxhook.server.serving import _BehindProxy

    app = make_app()
    async with started(app):
        for forged in ("127.0.0.1", "::1", "localhost"):
            async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=_BehindProxy(app, "127.0.0.1")),
                    base_url="http://testserver", headers={"x-forwarded-for": forged}) as client:
                assert (await client.get("/readyz?verbose")).status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_the_verbose_view_answers_this_host(make_app, host):
    app = make_app()
    async with started(app), browser(app, host) as client:
        r = await client.get("/readyz?verbose")
        assert r.status_code == 200 and r.json()["checks"]["token"]["ok"] is True


def test_the_probe_body_discloses_nothing_the_verbose_view_knows(tmp_path):
    rules = tmp_path / "secret-place-rules.yaml"
    rules.write_text("keywords: [{name: hours, equal: hours, replies: [open]}]\n")
    redis_port = free_port()
    with sandbox_process() as api, server_process(
            api, WXHOOK_RULES=str(rules), REDIS_URL=f"redis://127.0.0.1:{redis_port}/5") as url:
        httpx.post(api + "/_sandbox/config", json={"ip_whitelisted": False})
        verbose = httpx.get(url + "/readyz?verbose", timeout=10)
        text = verbose.text
        # What the operator view holds: the egress IP, Redis's address, the rules path, pid.
        assert verbose.status_code == 200 and verbose.json()["ready"] is True
        assert "1.2.3.4" in text and str(redis_port) in text and str(rules) in text
        assert '"pid"' in text
        for method in ("GET", "HEAD"):
            r = httpx.request(method, url + "/readyz", timeout=10)
            assert r.status_code == 200
            assert r.content == (b'{"ready":true}' if method == "GET" else b"")
        assert ('wxhook_dependency_up{account="default",dependency="token"} 0.0'
                in httpx.get(url + "/metrics").text)


def _check(env):
    full = {k: v for k, v in __import__("os").environ.items()
            if not k.startswith(("WECHAT_", "WXHOOK_"))}
    full.update(env)
    return subprocess.run([WXHOOK, "check"], env=full, capture_output=True, text=True, timeout=30,
                          cwd="/tmp")


def test_check_reports_ready_with_right_credentials():
    with sandbox_process() as api:
        res = _check(server_env(api))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ready to serve" in res.stdout and "callback IPs" in res.stdout
    assert SANDBOX_SECRET not in res.stdout + res.stderr


def test_check_fails_with_a_fix_for_wrong_secret_and_whitelist():
    with sandbox_process() as api:
        wrong = _check(server_env(api, WECHAT_APP_SECRET="wrong-secret"))
        httpx.post(api + "/_sandbox/config", json={"ip_whitelisted": False})
        ip = _check(server_env(api))
    assert wrong.returncode != 0 and "40125" in wrong.stdout and "fix:" in wrong.stdout
    assert "wrong-secret" not in wrong.stdout + wrong.stderr
    assert ip.returncode != 0 and "40164" in ip.stdout and "whitelist" in ip.stdout
    assert "outbound IP" in ip.stdout


def test_check_names_a_malformed_setting():
    res = _check({"WECHAT_APP_ID": "wx1", "WECHAT_APP_SECRET": "s", "WECHAT_TOKEN": "a"})
    assert res.returncode == 2 and "WECHAT_TOKEN" in res.stdout


def test_url_verification_against_a_real_server():
    with sandbox_process() as api, server_process(api) as url:
        ts, nonce = str(int(time.time())), "1514711492"
        r = httpx.get(url + "/wechat", params={"signature": sign(TOKEN, ts, nonce),
                                               "timestamp": ts, "nonce": nonce,
                                               "echostr": "4375120948345356249"})
        assert r.status_code == 200 and r.text == "4375120948345356249"
