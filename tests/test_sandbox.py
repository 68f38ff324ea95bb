"""Tests for the sandbox WeChat API: it must fail the way WeChat fails, or it proves nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from wxhook.tools.sandbox import DEMO_OPENID, Fault, SandboxState, create_sandbox

APPID, SECRET = "wx0123456789abcdef", "s3cr3t-sandbox-secret"
OPENID = "oAbCdEfGhIjKlMnOpQrStUv_wxyz"  # 28 chars, well formed
OTHER = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Starlette:
    return create_sandbox(appid=APPID, secret=SECRET, clock=clock)


@pytest.fixture
def state(app: Starlette) -> SandboxState:
    st: SandboxState = app.state.sandbox
    return st


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
        yield c


async def get_token(client: httpx.AsyncClient) -> str:
    r = await client.get("/cgi-bin/token", params={
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET})
    token: str = r.json()["access_token"]
    return token


async def stable(client: httpx.AsyncClient, force: bool = False) -> dict[str, Any]:
    r = await client.post("/cgi-bin/stable_token", json={
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET,
        "force_refresh": force})
    body: dict[str, Any] = r.json()
    return body


async def user_info(client: httpx.AsyncClient, token: str, openid: str = OPENID) -> dict[str, Any]:
    r = await client.get("/cgi-bin/user/info",
                         params={"access_token": token, "openid": openid, "lang": "zh_CN"})
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def errcode(client: httpx.AsyncClient, token: str, openid: str = OPENID) -> int:
    return int((await user_info(client, token, openid)).get("errcode", 0))


# -- credentials and global tokens ------------------------------------------------------

@pytest.mark.parametrize(("params", "code", "msg"), [
    ({"grant_type": "password", "appid": APPID, "secret": SECRET}, 40002, "invalid grant_type"),
    ({"grant_type": "client_credential", "appid": "wxnope", "secret": SECRET}, 40013,
     "invalid appid"),
    ({"grant_type": "client_credential", "appid": APPID, "secret": "wrong"}, 40125,
     "invalid appsecret"),
])
async def test_token_credential_errors(client: httpx.AsyncClient, state: SandboxState,
                                       params: dict[str, str], code: int, msg: str) -> None:
    body = (await client.get("/cgi-bin/token", params=params)).json()
    assert body["errcode"] == code
    assert body["errmsg"].startswith(msg)
    assert state.token_requests == 1  # failed token calls still count against the quota


async def test_stable_token_credential_errors(client: httpx.AsyncClient) -> None:
    r = await client.post("/cgi-bin/stable_token", json={
        "grant_type": "client_credential", "appid": APPID, "secret": "bad"})
    assert r.json()["errcode"] == 40125
    r = await client.post("/cgi-bin/stable_token", content=b"not json")
    assert r.json()["errcode"] == 47001


async def test_ip_not_whitelisted(client: httpx.AsyncClient, state: SandboxState) -> None:
    state.ip_whitelisted = False
    body = (await client.get("/cgi-bin/token", params={
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET})).json()
    assert body["errcode"] == 40164
    assert body["errmsg"].startswith("invalid ip 1.2.3.4 ipv6 ::ffff:1.2.3.4, not in whitelist")
    assert (await stable(client))["errcode"] == 40164


async def test_token_issues_new_and_old_survives_grace(client: httpx.AsyncClient,
                                                       clock: FakeClock) -> None:
    first = await get_token(client)
    assert await errcode(client, first) == 0
    second = await get_token(client)
    assert second != first
    clock.now += 299
    assert await errcode(client, first) == 0  # still inside the ~5 minute grace
    clock.now += 2
    assert await errcode(client, first) == 40001
    assert await errcode(client, second) == 0


async def test_token_expiry_is_42001(client: httpx.AsyncClient, clock: FakeClock) -> None:
    token = await get_token(client)
    clock.now += 7199
    assert await errcode(client, token) == 0
    clock.now += 1
    assert await errcode(client, token) == 42001


async def test_token_missing_and_unknown(client: httpx.AsyncClient) -> None:
    r = await client.get("/cgi-bin/user/info", params={"openid": OPENID})
    assert r.json()["errcode"] == 41001
    body = await user_info(client, "made-up")
    assert body["errcode"] == 40001
    assert body["errmsg"].startswith("invalid credential, access_token is invalid or not latest")


async def test_stable_token_same_while_valid_then_renewed(client: httpx.AsyncClient,
                                                          clock: FakeClock) -> None:
    first = await stable(client)
    assert first["expires_in"] == 7200
    clock.now += 1000
    again = await stable(client)
    assert again == {"access_token": first["access_token"], "expires_in": 6200}
    clock.now += 6000  # 200 s left: inside the 5 minute renewal window
    renewed = await stable(client)
    assert renewed["access_token"] != first["access_token"]
    assert renewed["expires_in"] == 7200
    assert await errcode(client, first["access_token"]) == 0  # not killed, just replaced


async def test_stable_force_refresh_kills_previous(client: httpx.AsyncClient) -> None:
    first = (await stable(client))["access_token"]
    basic = await get_token(client)
    forced = (await stable(client, force=True))["access_token"]
    assert forced != first
    assert await errcode(client, first) == 40001
    assert await errcode(client, forced) == 0
    assert await errcode(client, basic) == 0  # separate pool: untouched
    assert (await stable(client))["access_token"] == forced


async def test_cgi_token_does_not_touch_stable(client: httpx.AsyncClient,
                                               clock: FakeClock) -> None:
    st = (await stable(client))["access_token"]
    await get_token(client)
    await get_token(client)
    clock.now += 400
    assert await errcode(client, st) == 0


async def test_invalidate_tokens(client: httpx.AsyncClient, state: SandboxState) -> None:
    basic, st = await get_token(client), (await stable(client))["access_token"]
    state.invalidate_tokens()
    assert await errcode(client, basic) == 40001
    assert await errcode(client, st) == 40001
    fresh = (await stable(client))["access_token"]
    assert fresh != st and await errcode(client, fresh) == 0


# -- users and messages ------------------------------------------------------------------

async def test_user_info_nickname(client: httpx.AsyncClient, state: SandboxState) -> None:
    token = await get_token(client)
    info = await user_info(client, token)
    assert info["subscribe"] == 1 and info["openid"] == OPENID
    assert info["nickname"] == "Follower-v_wxyz"
    assert info["headimgurl"].startswith("https://")
    assert info["subscribe_scene"] == "ADD_SCENE_QR_CODE" and info["tagid_list"] == []
    assert (await user_info(client, token))["unionid"] == info["unionid"]  # deterministic
    assert (await user_info(client, token, DEMO_OPENID))["nickname"] == "刺猬宝宝"
    state.users[OTHER] = {"nickname": "Alice"}
    assert (await user_info(client, token, OTHER))["nickname"] == "Alice"


async def test_user_info_empty_nicknames(client: httpx.AsyncClient, state: SandboxState) -> None:
    state.empty_nicknames = True
    token = await get_token(client)
    info = await user_info(client, token, DEMO_OPENID)
    assert info["nickname"] == "" and info["headimgurl"] == ""
    assert info["subscribe"] == 1


async def test_user_info_unsubscribed(client: httpx.AsyncClient, state: SandboxState) -> None:
    state.users[OTHER] = {"subscribe": 0, "nickname": "Gone"}
    assert await user_info(client, await get_token(client), OTHER) == {
        "subscribe": 0, "openid": OTHER}


@pytest.mark.parametrize("openid", ["", "xAbCdEfGhIjKlMnOpQrStUv_wxyz", "oShort", OPENID + "1",
                                    "oAbCdEfGhIjKlMnOpQrStUv wxyz"])
async def test_user_info_invalid_openid(client: httpx.AsyncClient, openid: str) -> None:
    assert await errcode(client, await get_token(client), openid) == 40003


async def test_batchget(client: httpx.AsyncClient) -> None:
    token = await get_token(client)
    url = f"/cgi-bin/user/info/batchget?access_token={token}"
    r = await client.post(url, json={"user_list": [{"openid": OPENID, "lang": "zh_CN"},
                                                   {"openid": DEMO_OPENID}]})
    infos = r.json()["user_info_list"]
    assert [i["openid"] for i in infos] == [OPENID, DEMO_OPENID]
    assert infos[1]["nickname"] == "刺猬宝宝"
    hundred = [{"openid": OPENID}] * 100
    infos = (await client.post(url, json={"user_list": hundred})).json()["user_info_list"]
    assert len(infos) == 100
    too_many = (await client.post(url, json={"user_list": [*hundred, {"openid": OPENID}]})).json()
    assert too_many["errcode"] == 40032 and "100" in too_many["errmsg"]
    bad = await client.post(url, json={"user_list": [{"openid": OPENID}, {"openid": "nope"}]})
    assert bad.json()["errcode"] == 40003


async def test_custom_send_recorded(client: httpx.AsyncClient, state: SandboxState) -> None:
    url = f"/cgi-bin/message/custom/send?access_token={await get_token(client)}"
    msg = {"touser": OPENID, "msgtype": "text", "text": {"content": "Welcome, 刺猬宝宝!"}}
    assert (await client.post(url, json=msg)).json() == {"errcode": 0, "errmsg": "ok"}
    assert state.sent == [msg]
    assert (await client.post(url, json={**msg, "touser": "bad"})).json()["errcode"] == 40003
    assert (await client.post(url, json={**msg, "msgtype": "nope"})).json()["errcode"] == 40008
    no_token = await client.post("/cgi-bin/message/custom/send", json=msg)
    assert no_token.json()["errcode"] == 41001
    assert len(state.sent) == 1


async def test_callback_ip(client: httpx.AsyncClient) -> None:
    r = await client.get("/cgi-bin/getcallbackip", params={"access_token": await get_token(client)})
    assert "101.226.103.0/25" in r.json()["ip_list"]
    assert (await client.get("/cgi-bin/getcallbackip")).json()["errcode"] == 41001


async def test_unknown_path_is_404(client: httpx.AsyncClient, state: SandboxState) -> None:
    assert (await client.get("/cgi-bin/nope")).status_code == 404
    assert (await client.get("/")).text.startswith("wxhook sandbox WeChat API")


# -- OAuth -------------------------------------------------------------------------------

async def web_token(client: httpx.AsyncClient, code: str) -> dict[str, Any]:
    r = await client.get("/sns/oauth2/access_token", params={
        "appid": APPID, "secret": SECRET, "code": code, "grant_type": "authorization_code"})
    body: dict[str, Any] = r.json()
    return body


async def test_authorize_redirects_with_code(client: httpx.AsyncClient) -> None:
    r = await client.get("/connect/oauth2/authorize", params={
        "appid": APPID, "redirect_uri": "https://example.com/oauth/callback?x=1",
        "response_type": "code", "scope": "snsapi_userinfo", "state": "abc123"})
    assert r.status_code == 302
    url = urlsplit(r.headers["location"])
    assert (url.scheme, url.netloc, url.path) == ("https", "example.com", "/oauth/callback")
    query = parse_qs(url.query)
    assert query["x"] == ["1"] and query["state"] == ["abc123"]
    token = await web_token(client, query["code"][0])
    assert token["openid"] == DEMO_OPENID and token["scope"] == "snsapi_userinfo"
    assert token["expires_in"] == 7200 and token["refresh_token"]


@pytest.mark.parametrize(("change", "status"), [
    ({"appid": "wxother"}, 400), ({"scope": "snsapi_login"}, 400), ({"openid": "bad"}, 400),
    ({"openid": OTHER}, 302)])
async def test_authorize_checks(client: httpx.AsyncClient, change: dict[str, str],
                                status: int) -> None:
    params = {"appid": APPID, "redirect_uri": "https://example.com/cb", "response_type": "code",
              "scope": "snsapi_base", "state": "s", **change}
    assert (await client.get("/connect/oauth2/authorize", params=params)).status_code == status


async def test_oauth_code_single_use(client: httpx.AsyncClient, state: SandboxState) -> None:
    code = state.mint_oauth_code(OPENID)
    first = await web_token(client, code)
    assert first["openid"] == OPENID and first["access_token"]
    assert (await web_token(client, code))["errcode"] == 40163


async def test_an_oauth_code_is_one_accounts(client: httpx.AsyncClient,
                                              state: SandboxState) -> None:
    state.add_account("wxother0000000001", "other-secret")
    code = state.mint_oauth_code(OPENID, appid=APPID)
    r = await client.get("/sns/oauth2/access_token", params={
        "appid": "wxother0000000001", "secret": "other-secret", "code": code,
        "grant_type": "authorization_code"})
    assert r.json()["errcode"] == 40029  # issued for APPID: another account cannot spend it
    assert (await web_token(client, code))["openid"] == OPENID


async def test_oauth_code_expired_and_unknown(client: httpx.AsyncClient, state: SandboxState,
                                              clock: FakeClock) -> None:
    code = state.mint_oauth_code(OPENID)
    clock.now += 301
    assert (await web_token(client, code))["errcode"] == 42003
    assert (await web_token(client, "0123456789abcdef"))["errcode"] == 40029
    r = await client.get("/sns/oauth2/access_token", params={
        "appid": APPID, "secret": "wrong", "code": state.mint_oauth_code(OPENID),
        "grant_type": "authorization_code"})
    assert r.json()["errcode"] == 40125


async def test_sns_userinfo_keeps_real_nickname(client: httpx.AsyncClient,
                                                state: SandboxState) -> None:
    state.empty_nicknames = True  # user/info is emptied; sns/userinfo is not
    token = await web_token(client, state.mint_oauth_code(DEMO_OPENID))
    r = await client.get("/sns/userinfo", params={
        "access_token": token["access_token"], "openid": DEMO_OPENID, "lang": "zh_CN"})
    info = r.json()
    assert info["nickname"] == "刺猬宝宝"
    assert info["headimgurl"] == "https://thirdwx.qlogo.cn/mmopen/demo/132"
    assert info["privilege"] == [] and "subscribe" not in info
    wrong_user = await client.get("/sns/userinfo", params={
        "access_token": token["access_token"], "openid": OPENID})
    assert wrong_user.json()["errcode"] == 40001


async def test_sns_userinfo_base_scope_48001(client: httpx.AsyncClient,
                                             state: SandboxState) -> None:
    token = await web_token(client, state.mint_oauth_code(OPENID, "snsapi_base"))
    r = await client.get("/sns/userinfo",
                         params={"access_token": token["access_token"], "openid": OPENID})
    assert r.json()["errcode"] == 48001
    # the web token is not a global token
    assert await errcode(client, token["access_token"]) == 40001


async def test_sns_refresh_and_auth(client: httpx.AsyncClient, state: SandboxState,
                                    clock: FakeClock) -> None:
    first = await web_token(client, state.mint_oauth_code(OPENID))
    auth = {"access_token": first["access_token"], "openid": OPENID}
    assert (await client.get("/sns/auth", params=auth)).json()["errcode"] == 0
    clock.now += 7200
    assert (await client.get("/sns/auth", params=auth)).json()["errcode"] == 42001
    params = {"appid": APPID, "grant_type": "refresh_token",
              "refresh_token": first["refresh_token"]}
    refreshed = (await client.get("/sns/oauth2/refresh_token", params=params)).json()
    assert refreshed["access_token"] != first["access_token"] and refreshed["openid"] == OPENID
    new_auth = {"access_token": refreshed["access_token"], "openid": OPENID}
    assert (await client.get("/sns/auth", params=new_auth)).json()["errcode"] == 0
    bad = await client.get("/sns/oauth2/refresh_token", params={**params, "refresh_token": "x"})
    assert bad.json()["errcode"] == 40030
    clock.now += 30 * 86400
    old = await client.get("/sns/oauth2/refresh_token", params=params)
    assert old.json()["errcode"] == 42002


# -- faults --------------------------------------------------------------------------------

async def test_fault_errcode_once_then_normal(client: httpx.AsyncClient,
                                              state: SandboxState) -> None:
    token = await get_token(client)
    state.add_fault(Fault(path="/cgi-bin/user/info", errcode=-1, times=1))
    assert await errcode(client, token) == -1
    assert await errcode(client, token) == 0
    assert state.calls["/cgi-bin/user/info"] == 2


async def test_fault_http_status_and_times(client: httpx.AsyncClient,
                                           state: SandboxState) -> None:
    state.add_fault(Fault(path="*", http_status=500, times=2))
    params = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    for _ in range(2):
        r = await client.get("/cgi-bin/token", params=params)
        assert r.status_code == 500 and "access_token" not in r.text
    assert (await client.get("/cgi-bin/token", params=params)).status_code == 200
    assert state.token_requests == 3


async def test_fault_first_match_wins_and_clear(client: httpx.AsyncClient,
                                                state: SandboxState) -> None:
    token = await get_token(client)
    state.add_fault(Fault(path="/sns/userinfo", errcode=45009))
    state.add_fault(Fault(path="/cgi-bin/user/info", errcode=45011))
    state.add_fault(Fault(path="*", errcode=-1))
    assert await errcode(client, token) == 45011
    assert await errcode(client, token) == 45011  # times=None: until cleared
    state.clear_faults()
    assert await errcode(client, token) == 0


async def test_fault_latency() -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    app = create_sandbox(appid=APPID, secret=SECRET, sleep=fake_sleep)
    state: SandboxState = app.state.sandbox
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://sandbox") as client:
        token = await get_token(client)
        assert slept == []
        state.latency = 0.03
        state.add_fault(Fault(path="/cgi-bin/user/info", latency=2.0, times=1))
        assert await errcode(client, token) == 0
        assert await errcode(client, token) == 0
    assert slept == [pytest.approx(2.03), pytest.approx(0.03)]


async def test_reset(client: httpx.AsyncClient, state: SandboxState) -> None:
    token = await get_token(client)
    state.add_fault(Fault(path="*", errcode=-1))
    state.reset()
    assert state.calls == {} and state.faults == [] and state.sent == []
    assert await errcode(client, token) == 40001
    assert state.users[DEMO_OPENID]["nickname"] == "刺猬宝宝"  # configuration kept


# -- control API over HTTP ---------------------------------------------------------------

async def test_control_api(client: httpx.AsyncClient, state: SandboxState) -> None:
    token = await get_token(client)
    r = await client.post("/_sandbox/faults",
                          json={"path": "/cgi-bin/user/info", "errcode": 40001, "times": 1})
    assert r.status_code == 200
    assert await errcode(client, token) == 40001
    assert await errcode(client, token) == 0
    for bad in ({"path": "*", "bogus": 1}, {"path": "*", "times": "x"}):
        assert (await client.post("/_sandbox/faults", json=bad)).status_code == 400

    await client.post("/_sandbox/faults", json={"path": "*", "http_status": 503})
    assert (await client.get("/cgi-bin/user/info")).status_code == 503
    assert (await client.delete("/_sandbox/faults")).status_code == 200
    assert await errcode(client, token) == 0

    stats = (await client.get("/_sandbox/stats")).json()
    assert stats["token_requests"] == 1 and stats["sent"] == []
    assert stats["calls"] == {"/cgi-bin/token": 1, "/cgi-bin/user/info": 4}

    r = await client.post("/_sandbox/config", json={
        "empty_nicknames": True, "latency": 0, "ip_whitelisted": False,
        "users": {OTHER: {"nickname": "Bob"}}})
    assert r.json()["ip_whitelisted"] is False
    assert state.empty_nicknames and state.users[OTHER]["nickname"] == "Bob"
    assert state.users[DEMO_OPENID]["nickname"] == "刺猬宝宝"  # merged, not replaced
    assert (await client.post("/_sandbox/config", json={"nope": 1})).status_code == 400

    await client.post("/_sandbox/invalidate")
    assert await errcode(client, token) == 40001

    code = (await client.post("/_sandbox/oauth/code",
                              json={"openid": OPENID, "scope": "snsapi_base"})).json()["code"]
    assert (await web_token(client, code))["scope"] == "snsapi_base"
    assert (await client.post("/_sandbox/oauth/code", json={"openid": "x"})).status_code == 400

    await client.post("/_sandbox/reset")
    assert (await client.get("/_sandbox/stats")).json() == {
        "calls": {}, "token_requests": 0, "sent": []}
