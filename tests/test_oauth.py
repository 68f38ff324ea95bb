"""OAuth2 web authorization: the login redirect, state checks, the callback's failures, /me."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from structlog.testing import capture_logs

from tests.conftest import OPENID
from tests.support import dirty_json
from wxhook.server.oauth import REFRESH_TTL, SESSION_COOKIE
from wxhook.server.oauth_state import DEFAULT_NEXT, safe_next
from wxhook.server.store.memory import MemoryStore
from wxhook.tools.sandbox import Fault
from wxhook.tools.simulate import decode_reply

OTHER = "oOAuthTestFollower0000000001"   # a follower whose name only sns/userinfo knows


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """A fresh browser (its own cookie jar) for `app`."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://testserver")


async def start(client: httpx.AsyncClient, next_path: str = "/hello",
                **params: str) -> httpx.URL:
    """GET /oauth/login; the authorize URL it redirects to."""
    r = await client.get("/oauth/login", params={"next": next_path, **params})
    assert r.status_code == 302, r.text
    return httpx.URL(r.headers["location"])


async def authorize(upstream: httpx.AsyncClient, url: httpx.URL, *,
                    openid: str | None = None) -> httpx.URL:
    """What WeChat does in the browser: the follower agrees, WeChat redirects back."""
    params = dict(url.params) | ({"openid": openid} if openid else {})
    r = await upstream.get("http://sandbox/connect/oauth2/authorize", params=params)
    assert r.status_code == 302, r.text
    return httpx.URL(r.headers["location"])


async def sign_in(client: httpx.AsyncClient, upstream: httpx.AsyncClient,
                  next_path: str = "/hello", *, openid: str | None = None,
                  **params: str) -> tuple[httpx.Response, httpx.URL]:
    """The whole flow; the callback's response and the callback URL."""
    back = await authorize(upstream, await start(client, next_path, **params), openid=openid)
    r = await client.get(back.path, params=dict(back.params))
    return r, back


# -- /oauth/login ------------------------------------------------------------------------

async def test_login_redirects_to_authorize_in_wechat_order(make_app, make_settings):
    app = make_app(settings=make_settings(WECHAT_OAUTH_BASE="https://open.weixin.qq.com",
                                          PUBLIC_BASE_URL="https://wx.example.com"))
    async with client_for(app) as client:
        r = await client.get("/oauth/login", params={"next": "/hello"})
    assert r.status_code == 302
    loc = r.headers["location"]
    assert loc.startswith("https://open.weixin.qq.com/connect/oauth2/authorize?appid=")
    assert loc.endswith("&connect_redirect=1#wechat_redirect")
    query = urlsplit(loc).query
    assert [k for k, _ in parse_qsl(query)] == [
        "appid", "redirect_uri", "response_type", "scope", "state", "connect_redirect"]
    params = dict(parse_qsl(query))
    assert params["appid"] == app.state.settings.app_id
    assert params["response_type"] == "code"
    assert params["scope"] == "snsapi_userinfo"
    assert "redirect_uri=https%3A%2F%2Fwx.example.com%2Foauth%2Fcallback&" in query
    assert re.fullmatch(r"[A-Za-z0-9]{1,128}", params["state"])
    cookie = r.headers["set-cookie"]
    for attr in ("HttpOnly", "SameSite=lax", "Secure", "Max-Age=600", "Path=/oauth/;"):
        assert attr.lower() in cookie.lower()
    assert params["state"] not in cookie.split(";")[0].split("=", 1)[1]  # signed, not bare


async def test_login_scope_and_plain_http_cookie(client):
    loc = await start(client, scope="snsapi_base")
    assert loc.params["scope"] == "snsapi_base"
    assert (loc.scheme, loc.host, loc.path) == ("http", "sandbox", "/connect/oauth2/authorize")
    r = await client.get("/oauth/login", params={"next": "/x"})
    assert "secure" not in r.headers["set-cookie"].lower()  # http origin: a dev setup
    states = {(await start(client)).params["state"] for _ in range(5)}
    assert len(states) == 5


async def test_login_with_unknown_scope_is_a_page(client):
    r = await client.get("/oauth/login", params={"next": "/x", "scope": "snsapi_all"})
    assert r.status_code == 400
    assert "text/html" in r.headers["content-type"]


# -- the happy path ----------------------------------------------------------------------

async def test_flow_signs_in_and_me_greets_by_name(client, upstream, app, sandbox):
    r, _ = await sign_in(client, upstream, "/hello?x=1")
    assert r.status_code == 303
    assert r.headers["location"] == "/hello?x=1"
    cookie = r.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "httponly" in cookie.lower()
    me = await client.get("/me")
    assert me.status_code == 200
    assert "Hello, 刺猬宝宝" in me.text
    assert 'name="viewport"' in me.text
    assert "https://thirdwx.qlogo.cn/mmopen/demo/132" in me.text
    saved = await app.state.profiles.repo.get(OPENID)
    assert saved["nickname"] == "刺猬宝宝" and saved["scope"] == "snsapi_userinfo"
    assert saved["refresh_token"] and saved["unionid"] and saved["updated_at"]
    assert sandbox.calls["/sns/userinfo"] == 1


async def test_base_scope_skips_userinfo(client, upstream, sandbox):
    r, _ = await sign_in(client, upstream, "/me", scope="snsapi_base")
    assert r.status_code == 303
    assert sandbox.calls["/sns/userinfo"] == 0
    me = await client.get("/me")
    assert "Hello!" in me.text and "scope=snsapi_userinfo" in me.text


async def test_me_without_session_offers_login(client):
    r = await client.get("/me")
    assert r.status_code == 200
    assert "/oauth/login?next=%2Fme" in r.text
    assert 'content="width=device-width' in r.text
    client.cookies.set(SESSION_COOKIE, "forged.value")
    assert "/oauth/login?next=%2Fme" in (await client.get("/me")).text


async def test_me_escapes_what_wechat_returns(client, upstream, sandbox):
    sandbox.users[OPENID] = {"nickname": '<script>alert(1)</script>"&',
                             "headimgurl": "javascript:alert(1)"}
    await sign_in(client, upstream)
    me = await client.get("/me")
    assert "<script>alert" not in me.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;" in me.text
    assert "javascript:" not in me.text


async def test_login_forgets_cached_lookup(client, upstream, app, monkeypatch):
    forgotten: list[str] = []
    monkeypatch.setattr(app.state.profiles, "forget", forgotten.append)
    await sign_in(client, upstream)
    assert forgotten == [OPENID]


async def test_greeting_uses_oauth_nickname_when_user_info_is_empty(
        client, upstream, sandbox, make_push):
    sandbox.empty_nicknames = True
    sandbox.users[OTHER] = {"nickname": "小明 🦔"}
    push = make_push("subscribe", openid=OTHER, create_time=int(time.time()) - 5)
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert "Welcome!" in r.text  # user/info is empty and nobody signed in yet
    r, _ = await sign_in(client, upstream, openid=OTHER)
    assert r.status_code == 303
    push = make_push("subscribe", openid=OTHER)
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200
    assert "Welcome, 小明 🦔!" in r.text


async def test_refresh_token_is_never_logged(client, upstream, app):
    with capture_logs() as logs:
        await sign_in(client, upstream)
    saved = await app.state.profiles.repo.get(OPENID)
    assert any(e["event"] == "oauth_login" for e in logs)
    assert saved["refresh_token"] not in repr(logs)
    assert saved["access_token"] not in repr(logs)
    assert app.state.settings.session_secret.get_secret_value() not in repr(logs)
    assert OPENID not in repr(logs)  # masked


# -- state: forged, reused, expired, other browser ---------------------------------------

async def test_forged_state_is_refused(client, upstream, sandbox):
    code = sandbox.mint_oauth_code(OPENID)
    r = await client.get("/oauth/callback", params={"code": code, "state": "forged123"})
    assert r.status_code == 403
    assert "text/html" in r.headers["content-type"]
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert sandbox.calls["/sns/oauth2/access_token"] == 0  # refused before spending the code
    for state in ("", "a" * 129, "abc-def", "ab%2Fcd"):
        r = await client.get("/oauth/callback", params={"code": code, "state": state})
        assert r.status_code == 400


async def test_state_from_another_browser_is_refused(app, upstream, sandbox):
    async with client_for(app) as attacker, client_for(app) as victim:
        back = await authorize(upstream, await start(attacker))
        r = await victim.get(back.path, params=dict(back.params))  # login CSRF
        assert r.status_code == 403
        assert (await victim.get("/me")).text.count("Sign in with WeChat") >= 1


async def test_tampered_state_cookie_is_refused(client, upstream):
    back = await authorize(upstream, await start(client))
    for cookie in client.cookies.jar:
        cookie.value = cookie.value[:-2] + ("AA" if cookie.value[-2:] != "AA" else "BB")
    r = await client.get(back.path, params=dict(back.params))
    assert r.status_code in (400, 403)
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")


async def test_expired_state_is_refused(client, upstream, app):
    back = await authorize(upstream, await start(client))
    app.state.oauth.clock = lambda: time.time() + 601
    r = await client.get(back.path, params=dict(back.params))
    assert r.status_code == 400
    assert "expired" in r.text.lower() or "took too long" in r.text


async def test_same_code_again_from_same_browser_goes_to_next(client, upstream, sandbox):
    r, back = await sign_in(client, upstream, "/hello")
    assert r.status_code == 303
    again = await client.get(back.path, params=dict(back.params))
    assert again.status_code == 303 and again.headers["location"] == "/hello"
    assert sandbox.calls["/sns/oauth2/access_token"] == 1  # no second exchange (40163)


async def test_same_state_again_with_state_cookie_still_present(client, upstream, app, sandbox):
    back = await authorize(upstream, await start(client, "/a"))
    state_cookies = {c.name: c.value for c in client.cookies.jar if c.name != SESSION_COOKIE}
    r = await client.get(back.path, params=dict(back.params))
    assert r.status_code == 303
    async with client_for(app) as same_browser_before_first_answer:
        for name, value in state_cookies.items():
            same_browser_before_first_answer.cookies.set(name, value, domain="testserver.local",
                                                         path="/oauth/callback")
        again = await same_browser_before_first_answer.get(back.path, params=dict(back.params))
        assert again.status_code == 303 and again.headers["location"] == "/a"
        assert SESSION_COOKIE in again.headers["set-cookie"]


async def test_replayed_state_is_refused_elsewhere_and_with_another_code(
        client, upstream, app, sandbox):
    r, back = await sign_in(client, upstream)
    assert r.status_code == 303
    async with client_for(app) as other:
        r = await other.get(back.path, params=dict(back.params))
        assert r.status_code == 400
    other_code = sandbox.mint_oauth_code(OPENID)
    r = await client.get(back.path, params={"code": other_code, "state": back.params["state"]})
    assert r.status_code == 400


async def test_wechat_calling_the_redirect_twice_at_once(client, upstream, sandbox):
    back = await authorize(upstream, await start(client, "/twice"))
    sandbox.latency = 0.1  # the second call arrives while the first is still exchanging
    first, second = await asyncio.gather(client.get(back.path, params=dict(back.params)),
                                         client.get(back.path, params=dict(back.params)))
    assert (first.status_code, second.status_code) == (303, 303)
    assert first.headers["location"] == second.headers["location"] == "/twice"
    assert sandbox.calls["/sns/oauth2/access_token"] == 1


async def test_state_is_single_use_across_instances(make_app, upstream, sandbox):
    shared = MemoryStore()
    app1, app2 = make_app(store=shared), make_app(store=shared)
    async with client_for(app1) as browser:
        back = await authorize(upstream, await start(browser))
        cookies = [(c.name, c.value) for c in browser.cookies.jar]
        r = await browser.get(back.path, params=dict(back.params))
        assert r.status_code == 303
    async with client_for(app2) as thief:
        for name, value in cookies:  # even with the stolen state cookie, a new code fails
            thief.cookies.set(name, value, domain="testserver.local", path="/oauth/callback")
        code = sandbox.mint_oauth_code(OPENID)
        r = await thief.get(back.path, params={"code": code, "state": back.params["state"]})
        assert r.status_code == 400


# -- failures are friendly pages ---------------------------------------------------------

def assert_friendly(r: httpx.Response, *, status: int | tuple[int, ...]) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.status_code < 500
    assert "text/html" in r.headers["content-type"]
    assert "/oauth/login?next=" in r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")


async def test_follower_refused(client):
    loc = await start(client, "/hello")
    r = await client.get("/oauth/callback", params={"state": loc.params["state"]})
    assert_friendly(r, status=200)
    assert "/oauth/login?next=%2Fhello" in r.text


@pytest.mark.parametrize("errcode", [40029, 40163, 42003])
async def test_bad_codes(client, upstream, sandbox, errcode):
    back = await authorize(upstream, await start(client))
    sandbox.add_fault(Fault(path="/sns/oauth2/access_token", errcode=errcode))
    assert_friendly(await client.get(back.path, params=dict(back.params)), status=400)


async def test_unknown_and_used_codes_from_the_real_sandbox(client, upstream, sandbox):
    loc = await start(client)
    r = await client.get("/oauth/callback", params={"code": "nope", "state": loc.params["state"]})
    assert_friendly(r, status=400)  # 40029
    used = sandbox.mint_oauth_code(OPENID)
    await upstream.get("http://sandbox/sns/oauth2/access_token", params={
        "appid": sandbox.appid, "secret": sandbox.secret, "code": used,
        "grant_type": "authorization_code"})
    loc = await start(client)
    r = await client.get("/oauth/callback", params={"code": used, "state": loc.params["state"]})
    assert_friendly(r, status=400)  # 40163


async def test_scope_mismatch(client, upstream, sandbox):
    back = await authorize(upstream, await start(client))
    sandbox.add_fault(Fault(path="/sns/userinfo", errcode=48001))
    r = await client.get(back.path, params=dict(back.params))
    assert_friendly(r, status=403)
    assert "scope=snsapi_userinfo" in r.text


@pytest.mark.parametrize("fault", [Fault(path="/sns/oauth2/access_token", http_status=502),
                                   Fault(path="/sns/userinfo", http_status=503),
                                   Fault(path="/sns/oauth2/access_token", errcode=-1),
                                   Fault(path="/sns/oauth2/access_token", latency=0.5)])
async def test_upstream_down(make_app, make_settings, upstream, sandbox, fault):
    app = make_app(settings=make_settings(WXHOOK_HTTP_TIMEOUT="0.2"))
    async with client_for(app) as client:
        back = await authorize(upstream, await start(client))
        sandbox.add_fault(fault)
        assert_friendly(await client.get(back.path, params=dict(back.params)), status=200)


async def test_unexpected_error_is_still_a_page(client, upstream, app, monkeypatch):
    async def broken(openid: str, profile: dict[str, str]) -> None:
        raise OSError("disk full")
    monkeypatch.setattr(app.state.profiles.repo, "put", broken)
    back = await authorize(upstream, await start(client))
    with capture_logs():
        assert_friendly(await client.get(back.path, params=dict(back.params)), status=200)


# -- next: never an open redirect --------------------------------------------------------

@pytest.mark.parametrize("raw", [
    None, "", "https://evil.example/x", "http://evil.example", "//evil.example/x",
    "/\\evil.example", "\\\\evil.example", "/%2F%2Fevil.example", "%2F%2Fevil.example",
    "/%252F%252Fevil.example", "/%5Cevil.example", "/\t/evil.example", "/\n/evil.example",
    " /x", "javascript:alert(1)", "evil.example", "hello", "///evil.example",
    "/%0d%0aSet-Cookie:x=1", "/\u3000/evil", "/oauth/login?next=/x", "/x" + "y" * 3000,
    "/%25252525252F", "https:/evil.example", "/\x7f"])
def test_safe_next_rejects(raw):
    assert safe_next(raw) == DEFAULT_NEXT


@pytest.mark.parametrize("raw", ["/me", "/hello", "/a/b?x=1&y=%20#frag", "/文章", "/a%20b"])
def test_safe_next_keeps_local_paths(raw):
    assert safe_next(raw) == raw


async def test_evil_next_ends_on_our_page(client, upstream):
    r, _ = await sign_in(client, upstream, "https://evil.example/steal")
    assert r.status_code == 303
    assert r.headers["location"] == DEFAULT_NEXT
    r, _ = await sign_in(client, upstream, "//evil.example/steal")
    assert r.headers["location"] == DEFAULT_NEXT


# -- refresh -----------------------------------------------------------------------------

async def signed_in_app(make_app: Callable[..., FastAPI], upstream: httpx.AsyncClient,
                        openid: str = OPENID) -> FastAPI:
    app = make_app()
    async with client_for(app) as client:
        r, _ = await sign_in(client, upstream, openid=openid)
        assert r.status_code == 303
    return app


async def test_refresh_profile_with_a_live_web_token(make_app, upstream, sandbox):
    app = await signed_in_app(make_app, upstream)
    sandbox.users[OPENID] = {"nickname": "新名字"}
    profile = await app.state.oauth.refresh_profile(OPENID)
    assert profile is not None and profile["nickname"] == "新名字"
    assert sandbox.calls["/sns/auth"] == 1
    assert sandbox.calls["/sns/oauth2/refresh_token"] == 0


async def test_refresh_profile_after_the_web_token_expired(make_app, upstream, sandbox):
    app = await signed_in_app(make_app, upstream)
    before = await app.state.profiles.repo.get(OPENID)
    sandbox.users[OPENID] = {"nickname": "三小时后"}
    app.state.oauth.clock = lambda: time.time() + 3 * 3600
    profile = await app.state.oauth.refresh_profile(OPENID)
    assert profile is not None and profile["nickname"] == "三小时后"
    assert sandbox.calls["/sns/oauth2/refresh_token"] == 1
    assert profile["access_token"] != before["access_token"]
    assert profile["refresh_token"] == before["refresh_token"]


async def test_refresh_profile_needs_a_new_login(make_app, upstream, sandbox):
    app = await signed_in_app(make_app, upstream)
    oauth: Any = app.state.oauth
    assert await oauth.refresh_profile("oNobodySignedIn0000000000001") is None
    app.state.oauth.clock = lambda: time.time() + 3 * 3600
    sandbox.reset()  # WeChat no longer knows the refresh token: 40030
    assert await oauth.refresh_profile(OPENID) is None
    assert (await app.state.profiles.repo.get(OPENID))["refresh_token"] == ""
    assert (await app.state.profiles.repo.get(OPENID))["nickname"] == "刺猬宝宝"  # kept


async def test_refresh_token_dies_after_30_days(make_app, upstream, sandbox):
    app = await signed_in_app(make_app, upstream)
    app.state.oauth.clock = lambda: time.time() + REFRESH_TTL + 1
    assert await app.state.oauth.refresh_profile(OPENID) is None
    assert sandbox.calls["/sns/oauth2/refresh_token"] == 0


async def test_refresh_profile_upstream_down_raises(make_app, upstream, sandbox):
    from wxhook.errors import WeChatAPIError

    app = await signed_in_app(make_app, upstream)
    app.state.oauth.clock = lambda: time.time() + 3 * 3600
    sandbox.add_fault(Fault(path="/sns/oauth2/refresh_token", http_status=503))
    with pytest.raises(WeChatAPIError):
        await app.state.oauth.refresh_profile(OPENID)
    assert (await app.state.profiles.repo.get(OPENID))["refresh_token"]  # kept for next time



# -- limits on callbacks that spend a code exchange -----------------------------------------

def browser_behind_proxy(app: FastAPI, address: str) -> httpx.AsyncClient:
    """A follower at `address`, reaching the app through nginx on the same host."""
    from wxhook.server.serving import _BehindProxy

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_BehindProxy(app, "127.0.0.1")),
                             base_url="http://testserver",
                             headers={"x-forwarded-for": address})


async def fresh_callback(client: httpx.AsyncClient) -> httpx.Response:
    """What an attacker can repeat at will: a new signed state, any code."""
    state = (await start(client)).params["state"]
    return await client.get("/oauth/callback", params={"code": "anything", "state": state})


async def test_callbacks_are_limited_per_client_address(make_app, make_settings, sandbox,
                                                        upstream):
    app = make_app(settings=make_settings(WXHOOK_OAUTH_LIMIT_PER_CLIENT="3"))
    exchanges = "/sns/oauth2/access_token"
    async with browser_behind_proxy(app, "203.0.113.9") as attacker, \
            browser_behind_proxy(app, "198.51.100.7") as follower:
        for _ in range(3):
            assert_friendly(await fresh_callback(attacker), status=400)  # 40029 from WeChat
        assert sandbox.calls[exchanges] == 3
        with capture_logs() as logs:
            for _ in range(5):
                r = await fresh_callback(attacker)
                assert_friendly(r, status=429)
                assert "Too many sign-ins" in r.text and r.headers["retry-after"] == "60"
        assert sandbox.calls[exchanges] == 3          # the limited ones never reached WeChat
        assert [e["client"] for e in logs if e["event"] == "oauth_rate_limited"] \
            == ["203.0.113.9"] * 5
        r, _ = await sign_in(follower, upstream)  # someone else: unaffected
        assert r.status_code == 303, r.text
        assert sandbox.calls[exchanges] == 4


async def test_callbacks_are_limited_overall(make_app, make_settings, sandbox):
    app = make_app(settings=make_settings(WXHOOK_OAUTH_LIMIT_PER_CLIENT="100",
                                          WXHOOK_OAUTH_LIMIT_TOTAL="4"))
    for i in range(4):
        async with browser_behind_proxy(app, f"203.0.113.{i + 1}") as client:
            assert_friendly(await fresh_callback(client), status=400)
    async with browser_behind_proxy(app, "198.51.100.7") as client:
        assert_friendly(await fresh_callback(client), status=429)
    assert sandbox.calls["/sns/oauth2/access_token"] == 4


async def test_forged_callbacks_cost_no_budget(make_app, make_settings, sandbox):
    # Without a signed state nothing is exchanged, so nothing is counted either.
    app = make_app(settings=make_settings(WXHOOK_OAUTH_LIMIT_PER_CLIENT="2"))
    async with browser_behind_proxy(app, "203.0.113.9") as client:
        for _ in range(10):
            r = await client.get("/oauth/callback", params={"code": "c", "state": "forged123"})
            assert r.status_code == 403
        assert_friendly(await fresh_callback(client), status=400)


@pytest.mark.parametrize("aes", [False, True], ids=["plain", "safe"])
async def test_an_oauth_nickname_xml_cannot_carry_is_stored_clean(
        make_app, make_push, sandbox_app, sandbox, crypto, aes):
    # sns/userinfo answers a nickname cut inside an emoji (a lone surrogate), a control.
    sandbox.empty_nicknames = True
    sandbox.users[OTHER] = {"nickname": "DIRTY-NAME"}
    async with dirty_json(sandbox_app, {"DIRTY-NAME": rb'"Ann\ud83d\u0001e\udc00"'}) as http:
        app = make_app(http=http)
        async with client_for(app) as client:
            r, _ = await sign_in(client, http, openid=OTHER)
            assert r.status_code == 303
            assert (await app.state.oauth.repo.get(OTHER) or {})["nickname"] == "Anne"
            push = make_push("subscribe", openid=OTHER, aes=aes)
            r = await client.post("/wechat", params=push.params, content=push.body)
            f = decode_reply(r.content, crypto=crypto if aes else None)
            assert f["Content"] == "Welcome, Anne!" and f["ToUserName"] == OTHER


# -- log lines an unauthenticated callback can cause: bounded --------------------------------

class StoppedClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def left_out(app: FastAPI, event: str) -> float:
    return app.state.metrics.registry.get_sample_value(
        "wxhook_log_lines_suppressed_total", {"event": event}) or 0.0


@pytest.mark.parametrize("path", ["no_matching_cookie", "reused"])
async def test_a_callback_flood_writes_a_bounded_number_of_lines(make_app, upstream, path):
    app = make_app()
    clock = app.state.oauth.refusals.clock = StoppedClock()  # one second, however long it takes
    async with client_for(app) as follower:
        r, back = await sign_in(follower, upstream)
        assert r.status_code == 303
    n = 300
    async with client_for(app) as attacker:  # no cookies at all
        with capture_logs() as logs:
            for _ in range(n):
                state = secrets.token_hex(16) if path == "no_matching_cookie" \
                    else back.params["state"]
                r = await attacker.get("/oauth/callback", params={"state": state, "code": "x"})
                assert r.status_code == (403 if path == "no_matching_cookie" else 400)
            clock.now += 1
            await attacker.get("/oauth/callback", params={"state": back.params["state"]
                                                          if path == "reused" else "abc",
                                                          "code": "x"})
    rejected = [e for e in logs if e["event"] == "oauth_state_rejected"]
    assert [e["reason"] for e in rejected] == [path] * 11
    (summary,) = [e for e in logs if e["event"] == "log_lines_suppressed"]
    assert summary["suppressed"] == n - 10 and summary["key"] == path
    assert left_out(app, "oauth_state_rejected") == n - 10


async def test_a_failing_callback_logs_its_traceback_a_bounded_number_of_times(
        make_app, make_settings, upstream, monkeypatch):
    app = make_app(settings=make_settings(WXHOOK_OAUTH_LIMIT_PER_CLIENT="100",
                                          WXHOOK_OAUTH_LIMIT_TOTAL="100"))
    app.state.oauth.refusals.clock = StoppedClock()

    async def store_down(*args: Any, **kw: Any) -> None:
        raise ConnectionError("the store is gone")

    async with client_for(app) as browser:
        back = await authorize(upstream, await start(browser))
        monkeypatch.setattr(app.state.oauth.store, "set", store_down)
        with capture_logs() as logs:
            for _ in range(40):
                r = await browser.get(back.path, params=dict(back.params))
                assert r.status_code == 200 and "Something went wrong" in r.text
    failed = [e for e in logs if e["event"] == "oauth_callback_failed"]
    assert len(failed) == 10 and all(e.get("exc_info") for e in failed)
    assert left_out(app, "oauth_callback_failed") == 30


# -- the state cookie: one, bounded, however many logins a browser starts ---------------------

def cookie_header(client: httpx.AsyncClient, path: str = "/oauth/callback") -> str:
    """The Cookie header this browser sends with a request to `path`."""
    return client.build_request("GET", path).headers.get("cookie", "")


def longest(kind: str, seed: int) -> str:
    """A `next` of exactly 512 bytes as stored, its own for each seed: links that differ
    leave the cookie's compression nothing to share, the cookie's worst case."""
    import random
    import string
    from urllib.parse import quote

    from wxhook.server.oauth_state import MAX_NEXT_BYTES, next_size

    rng = random.Random(seed)
    cjk = [chr(rng.randrange(0x4E00, 0x9FA6)) for _ in range(170)]
    if kind == "ascii":
        return "/" + "".join(rng.choices(string.ascii_letters + string.digits, k=511))
    if kind == "cjk":
        return "/" + "".join(cjk) + "a"
    if kind == "escaped":
        return "/p?q=" + "".join(quote(ch) for ch in cjk[:56]) + "abc"
    link = '/"'  # half of it quotes, each taking two bytes in the cookie
    while (room := MAX_NEXT_BYTES - next_size(link)) > 0:
        link += rng.choice(['"'] * 52 + list(string.ascii_letters)) if room > 1 else "a"
    return link


@pytest.mark.parametrize("kind", ["ascii", "cjk", "escaped", "quotes"])
async def test_many_logins_in_one_browser_keep_one_bounded_state_cookie(
        client, upstream, sandbox, kind):
    from wxhook.server.oauth_state import COOKIE, LOGINS_KEPT, MAX_NEXT_BYTES, next_size

    authorized = []
    for i in range(40):
        link = longest(kind, i)
        assert next_size(link) == MAX_NEXT_BYTES
        authorized.append((link, await authorize(upstream, await start(client, link))))
        state_cookies = [c for c in client.cookies.jar if c.name != SESSION_COOKIE]
        assert [c.name for c in state_cookies] == [COOKIE], i
        # nginx's large_client_header_buffers is 8 KB, a browser keeps a cookie up to 4 KB.
        assert len(cookie_header(client)) < 3000, i
        assert len(cookie_header(client, "/oauth/login")) < 3000, i
    # The newest logins complete, in any order, each leaving the others in place.
    for link, back in reversed(authorized[-LOGINS_KEPT:]):
        r = await client.get(back.path, params=dict(back.params))
        assert r.status_code == 303, r.text
        assert unquote(r.headers["location"]) == unquote(link)  # as Starlette quotes it
    assert not [c for c in client.cookies.jar if c.name == COOKIE]  # the last one cleared it
    # An older one was let go, and says so.
    _, back = authorized[-LOGINS_KEPT - 1]
    r = await client.get(back.path, params=dict(back.params))
    assert_friendly(r, status=403)
    assert sandbox.calls["/sns/oauth2/access_token"] == LOGINS_KEPT


async def test_two_tabs_signing_in_at_once_both_complete(client, upstream):
    first = await authorize(upstream, await start(client, "/tab-one"))
    second = await authorize(upstream, await start(client, "/tab-two"))
    r1 = await client.get(first.path, params=dict(first.params))
    r2 = await client.get(second.path, params=dict(second.params))
    assert (r1.headers["location"], r2.headers["location"]) == ("/tab-one", "/tab-two")


@pytest.mark.parametrize("too_long", [
    "/" + "a" * 512, "/" + "文" * 171, '/"' + '"' * 255 + "a", "/x?" + "y" * 3000,
    "https://evil.example/" + "a" * 600])
async def test_a_next_over_512_bytes_is_refused_with_a_clear_page(client, too_long):
    r = await client.get("/oauth/login", params={"next": too_long})
    assert_friendly(r, status=400)
    assert "Sign-in link too long" in r.text and "512 bytes" in r.text
    assert "set-cookie" not in r.headers
    assert safe_next(too_long) == DEFAULT_NEXT


def signed_by_hand(secret: str, purpose: str, data: dict[str, Any]) -> str:
    """A value in the format this server signed its cookies in before itsdangerous."""
    import base64
    import hashlib
    import hmac
    import json

    body = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    mac = hmac.new(secret.encode(), f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def test_a_cookie_this_server_did_not_sign_for_its_use_is_refused_cleanly(
        make_app, make_settings, upstream):
    from wxhook.server.oauth_state import COOKIE

    app = make_app()
    oauth = app.state.oauth
    secret = app.state.settings.session_secret.get_secret_value()
    other = make_app(settings=make_settings(SESSION_SECRET="another-secret-" * 3))
    async with client_for(app) as browser:
        await sign_in(browser, upstream)
        session = browser.cookies[SESSION_COOKIE]
        state = (await start(browser)).params["state"]
    async with client_for(other) as browser:
        await sign_in(browser, upstream)
        foreign_session = browser.cookies[SESSION_COOKIE]
    now = int(time.time())
    sessions = {
        "valid": session,
        "another secret": foreign_session,
        "signed for the login cookie": oauth.logins.signed.dumps({"o": OPENID, "st": "s"}),
        "the former format": signed_by_hand(secret, "session", {"o": OPENID, "st": "s",
                                                                "t": now}),
    }
    for what, value in sessions.items():
        async with client_for(app) as browser:
            browser.cookies.set(SESSION_COOKIE, value)
            me = await browser.get("/me")
            assert me.status_code == 200, what
            assert ("/oauth/login?next=%2Fme" in me.text) == (what != "valid"), what
    login = [[state, "/x", "snsapi_userinfo", now]]
    logins = {"signed for the session cookie": oauth.sessions.dumps({"l": login}),
              "the former format": signed_by_hand(secret, "state", {"t": now, "l": login})}
    for what, value in logins.items():
        async with client_for(app) as browser:
            browser.cookies.set(COOKIE, value, path="/oauth/")
            r = await browser.get("/oauth/callback", params={"state": state, "code": "c"})
            assert r.status_code == 400 and "took too long" in r.text, what  # sign in again


async def test_a_session_lasts_seven_days(client, upstream, app):
    from wxhook.server.oauth import SESSION_TTL

    r, _ = await sign_in(client, upstream)
    assert r.status_code == 303
    now = time.time()
    for offset, signed_in in ((SESSION_TTL - 5, True), (SESSION_TTL + 5, False),
                              (-60, False)):  # signed "in the future": another host's clock
        app.state.oauth.clock = lambda offset=offset: now + offset
        me = await client.get("/me")
        assert ("Hello, 刺猬宝宝" in me.text) == signed_in, offset
