"""What on-call sees: JSON log lines without secrets, moving metrics, health, `wxhook check`."""

import json
import subprocess
import time

import httpx
import pytest

from service.signature import sign
from service.tools.simulate import push_xml, sign_push
from tests.support import (
    AES_KEY,
    SANDBOX_APP_ID,
    SANDBOX_SECRET,
    TOKEN,
    WXHOOK,
    sandbox_process,
    server_env,
    server_process,
)

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
            from service.crypto import MessageCrypto
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
        ready = httpx.get(url + "/readyz")
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


def test_readyz_names_the_problem_with_a_wrong_secret():
    with sandbox_process() as api, server_process(api, WECHAT_APP_SECRET="wrong-secret") as url:
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503
        token = r.json()["checks"]["token"]
        assert token["ok"] is False and token["error"]["errcode"] == 40125
        assert "WECHAT_APP_SECRET" in token["fix"]


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
