"""Many accounts through the real routes: /wechat/{name}, each verified, answered and keyed
as if it ran alone, against one sandbox standing in for all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.support import started
from wxhook.context import Context
from wxhook.messages import TextMessage
from wxhook.router import Router
from wxhook.server.app import create_app
from wxhook.server.config import load_settings
from wxhook.server.crypto import MessageCrypto
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.tools.sandbox import DEMO_OPENID, Fault, SandboxState, create_sandbox
from wxhook.tools.simulate import Push, decode_reply, push_xml, sign_push

SHOP = {"name": "shop", "app_id": "wxshop00000000001", "secret": "shop-secret-1",
        "token": "shopToken1", "aes": None}
NEWS = {"name": "news", "app_id": "wxnews00000000002", "secret": "news-secret-2",
        "token": "newsToken2", "aes": "N" * 18 + "ews0123456789abcdefghijkl"}
assert len(str(NEWS["aes"])) == 43
HANG = 1000.0  # a fault latency meaning "until the test lets go"


def accounts_yaml(tmp_path: Path, *, rules: bool = False) -> str:
    """shop: plain, secret from the environment; news: safe mode, literal values."""
    if rules:
        for acct in ("shop", "news"):
            (tmp_path / f"{acct}.rules.yaml").write_text(
                f"keywords: [{{name: price, equal: price, replies: ['{acct} price list']}}]\n",
                encoding="utf-8")
    text = f"""\
accounts:
  - name: shop
    app_id: {SHOP["app_id"]}
    app_secret: ${{SHOP_APP_SECRET}}
    token: ${{SHOP_TOKEN}}
    message_mode: plain
{"    rules: shop.rules.yaml" if rules else ""}
  - name: news
    app_id: {NEWS["app_id"]}
    app_secret: {NEWS["secret"]}
    token: {NEWS["token"]}
    encoding_aes_key: {NEWS["aes"]}
    message_mode: safe
{"    rules: news.rules.yaml" if rules else ""}
"""
    path = tmp_path / "accounts.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def crypto_of(acct: dict[str, Any]) -> MessageCrypto:
    return MessageCrypto(str(acct["token"]), [str(acct["aes"])], str(acct["app_id"]))


def push_for(acct: dict[str, Any], kind: str = "subscribe", *, openid: str = DEMO_OPENID,
             aes: bool | None = None, **kw: Any) -> Push:
    """A push as WeChat signs it for `acct` (encrypted when the account has a key)."""
    encrypt = acct["aes"] is not None if aes is None else aes
    return sign_push(push_xml(kind, openid=openid, **kw), token=str(acct["token"]),
                     openid=openid, crypto=crypto_of(acct) if encrypt else None)


@pytest.fixture
def release() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def sandbox_app(release: asyncio.Event) -> Any:
    async def sleep(delay: float) -> None:
        if delay >= HANG:
            await release.wait()
        else:
            await asyncio.sleep(delay)

    app = create_sandbox(appid=str(SHOP["app_id"]), secret=str(SHOP["secret"]), sleep=sleep)
    app.state.sandbox.add_account(str(NEWS["app_id"]), str(NEWS["secret"]))
    return app


@pytest.fixture
def sandbox(sandbox_app: Any) -> SandboxState:
    state: SandboxState = sandbox_app.state.sandbox
    return state


@pytest.fixture
def build(tmp_path: Path, upstream: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
          ) -> Callable[..., Any]:
    monkeypatch.setenv("SHOP_APP_SECRET", str(SHOP["secret"]))
    monkeypatch.setenv("SHOP_TOKEN", str(SHOP["token"]))

    def make(path: str | None = None, *, rules: bool = False, **kw: Any) -> Any:
        settings = load_settings(
            _env_file=None, WXHOOK_ACCOUNTS=path or accounts_yaml(tmp_path, rules=rules),
            WECHAT_API_BASE="http://sandbox", WXHOOK_DEADLINE=kw.pop("deadline", 4.0))
        kw.setdefault("http", upstream)
        kw.setdefault("store", MemoryStore())
        kw.setdefault("metrics", Metrics())
        return create_app(settings, **kw)
    return make


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[Any], Awaitable[httpx.AsyncClient]]]:
    clients: list[httpx.AsyncClient] = []

    async def make(app: Any) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://testserver")
        clients.append(client)
        return client
    yield make
    for client in clients:
        await client.aclose()


async def send(client: httpx.AsyncClient, url: str, push: Push) -> httpx.Response:
    return await client.post(url, params=push.params, content=push.body)


def reply_of(resp: httpx.Response, acct: dict[str, Any]) -> dict[str, str]:
    assert resp.status_code == 200, resp.text
    return decode_reply(resp.content, crypto=crypto_of(acct) if acct["aes"] else None)


async def test_each_account_is_answered_at_its_own_url(build, connect, sandbox) -> None:
    client = await connect(build())
    shop = reply_of(await send(client, "/wechat/shop", push_for(SHOP)), SHOP)
    assert shop["Content"] == "Welcome, 刺猬宝宝!"  # the nickname: the shop's own token
    resp = await send(client, "/wechat/news", push_for(NEWS))
    assert b"<Encrypt>" in resp.content  # safe mode: sealed under the news key
    assert reply_of(resp, NEWS)["Content"] == "Welcome, 刺猬宝宝!"
    assert dict(sandbox.token_calls) == {SHOP["app_id"]: 1, NEWS["app_id"]: 1}


# Every way a push meant for one account can reach the other's URL: signed with the other
# token, plain or sealed with the other key, or signed with the right token but sealed with
# the wrong key.
CROSS = [
    ("/wechat/shop", lambda: push_for(NEWS)),
    ("/wechat/shop", lambda: push_for(NEWS, aes=False)),
    ("/wechat/news", lambda: push_for(SHOP)),
    ("/wechat/news", lambda: sign_push(push_xml("text", openid=DEMO_OPENID),
                                       token=str(SHOP["token"]), openid=DEMO_OPENID,
                                       crypto=MessageCrypto(str(SHOP["token"]),
                                                            [str(NEWS["aes"])],
                                                            str(NEWS["app_id"])))),
    ("/wechat/news", lambda: sign_push(push_xml("text", openid=DEMO_OPENID),
                                       token=str(NEWS["token"]), openid=DEMO_OPENID,
                                       crypto=MessageCrypto(str(NEWS["token"]), ["S" * 43],
                                                            str(NEWS["app_id"])))),
]


@pytest.mark.parametrize(("url", "make"), CROSS)
async def test_a_push_for_one_account_is_refused_at_the_other(build, connect, sandbox, url,
                                                              make) -> None:
    client = await connect(build())
    resp = await send(client, url, make())
    assert resp.status_code in (400, 403), resp.text
    assert sandbox.calls == {}  # no handler ran: no profile, no token


@pytest.mark.parametrize(("url", "token"), [("/wechat/shop", NEWS["token"]),
                                            ("/wechat/news", SHOP["token"])])
async def test_url_verification_is_per_account(build, connect, url, token) -> None:
    client = await connect(build())
    push = sign_push(b"", token=str(token), openid="")
    params = {k: push.params[k] for k in ("signature", "timestamp", "nonce")}
    assert (await client.get(url, params={**params, "echostr": "e1"})).status_code == 403
    own = NEWS["token"] if token == SHOP["token"] else SHOP["token"]
    push = sign_push(b"", token=str(own), openid="")
    params = {k: push.params[k] for k in ("signature", "timestamp", "nonce")}
    resp = await client.get(url, params={**params, "echostr": "e2"})
    assert (resp.status_code, resp.text) == (200, "e2")


@pytest.mark.parametrize("url", ["/wechat", "/wechat/", "/wechat/nope", "/wechat/shop/x",
                                 "/wechat/SHOP", "/wechat/" + "a" * 5000])
async def test_an_unknown_account_is_404_with_bounded_lines(build, connect, url) -> None:
    client = await connect(build(clock=lambda: 0.0))  # one second for all 50 requests
    with capture_logs() as logs:
        for _ in range(50):
            resp = await send(client, url, push_for(SHOP))
            assert resp.status_code == 404
    assert len(logs) <= 10  # LimitedLog's per-reason bound, not one line per request
    assert not any("a" * 100 in str(line) for line in logs)


async def test_a_concurrent_cold_start_fetches_one_token_per_account(build, connect,
                                                                    sandbox) -> None:
    client = await connect(build())
    pushes = [send(client, f"/wechat/{acct['name']}",
                   push_for(acct, openid=f"oFollower{acct['name']}{i:017d}"[:28]))
              for i in range(20) for acct in (SHOP, NEWS)]
    answers = await asyncio.gather(*pushes)
    assert all(r.status_code == 200 for r in answers)
    assert dict(sandbox.token_calls) == {SHOP["app_id"]: 1, NEWS["app_id"]: 1}


async def test_each_account_answers_from_its_own_rules(build, connect) -> None:
    client = await connect(build(rules=True))
    for acct in (SHOP, NEWS):
        push = push_for(acct, "text", text="price")
        assert reply_of(await send(client, f"/wechat/{acct['name']}", push),
                        acct)["Content"] == f"{acct['name']} price list"


def counting_router() -> Router:
    router = Router()

    @router.text()
    async def count(msg: TextMessage, ctx: Context) -> str:
        state = await ctx.state()
        state["n"] = state.get("n", 0) + 1
        return f"{ctx.account}:{ctx.settings.app_id}:{state['n']}"
    return router


async def test_context_and_state_are_per_account(build, connect) -> None:
    client = await connect(build(router=counting_router()))
    seen = []
    for acct in (SHOP, SHOP, NEWS, SHOP, NEWS):
        push = push_for(acct, "text", text="hi")  # the same follower openid at both
        seen.append(reply_of(await send(client, f"/wechat/{acct['name']}", push),
                             acct)["Content"])
    assert seen == [f"shop:{SHOP['app_id']}:1", f"shop:{SHOP['app_id']}:2",
                    f"news:{NEWS['app_id']}:1", f"shop:{SHOP['app_id']}:3",
                    f"news:{NEWS['app_id']}:2"]


async def test_push_lines_name_the_account(build, connect) -> None:
    client = await connect(build())
    with capture_logs() as logs:
        await send(client, "/wechat/shop", push_for(SHOP))
        await send(client, "/wechat/news", push_for(NEWS))
        await send(client, "/wechat/news", push_for(SHOP))  # refused
    pushes = [(line["event"], line["account"]) for line in logs
              if line["event"] in ("push", "push_refused")]
    assert pushes == [("push", "shop"), ("push", "news"), ("push_refused", "news")]


async def test_one_account_hanging_upstream_does_not_delay_another(build, connect, sandbox,
                                                                   release) -> None:
    sandbox.add_fault(Fault(path="*", latency=HANG, appid=str(NEWS["app_id"])))
    app = build(deadline=1.0)
    client = await connect(app)
    async with started(app):
        news = asyncio.create_task(send(client, "/wechat/news", push_for(NEWS)))
        await asyncio.sleep(0.05)  # news's token fetch is now hanging
        assert sandbox.calls["/cgi-bin/stable_token"] == 1
        shop = await send(client, "/wechat/shop", push_for(SHOP))
        assert not news.done()  # shop greeted by name while news still waits
        assert reply_of(shop, SHOP)["Content"] == "Welcome, 刺猬宝宝!"
        # news answers within its own deadline, without the name it could not fetch
        assert reply_of(await news, NEWS)["Content"] == "Welcome!"
        release.set()


async def test_a_thousand_accounts_start_without_asking_wechat(tmp_path, build, connect,
                                                               sandbox) -> None:
    lines = ["accounts:"]
    for i in range(1000):
        lines += [f"  - name: acct{i:04d}", f"    app_id: wxgen{i:012d}",
                  f"    app_secret: secret-{i}", f"    token: token{i:04d}"]
    path = tmp_path / "many.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    app = build(str(path))
    client = await connect(app)
    async with started(app):
        assert sandbox.calls == {} and app.state.hub.built == {}
        sandbox.add_account("wxgen000000000999", "secret-999")
        last = {"name": "acct0999", "app_id": "wxgen000000000999", "token": "token0999",
                "aes": None}
        resp = await send(client, "/wechat/acct0999", push_for(last))
        assert reply_of(resp, last)["Content"] == "Welcome, 刺猬宝宝!"
        assert list(app.state.hub.built) == ["acct0999"]
        assert dict(sandbox.token_calls) == {"wxgen000000000999": 1}


async def test_without_an_accounts_file_wechat_is_the_default_account(make_app, make_push
                                                                      ) -> None:
    app = make_app(router=counting_router())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        push = make_push("text", text="hi")
        resp = await client.post("/wechat", params=push.params, content=push.body)
        assert decode_reply(resp.content, crypto=None)["Content"].startswith("default:")
        assert (await client.post("/wechat/default", params=push.params,
                                  content=push.body)).status_code == 404


async def test_refusals_spread_over_many_accounts_share_one_bound(tmp_path, build,
                                                                  connect) -> None:
    lines = ["accounts:"]
    for i in range(30):
        lines += [f"  - name: a{i}", f"    app_id: wxflood{i:04d}", "    app_secret: s",
                  "    token: tokenA"]
    path = tmp_path / "flood.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    client = await connect(build(str(path), clock=lambda: 0.0))
    with capture_logs() as logs:
        for i in range(30):  # a bad signature at every account's URL
            resp = await send(client, f"/wechat/a{i}", push_for(NEWS))
            assert resp.status_code == 403
    assert len([line for line in logs if line["event"] == "push_refused"]) <= 10


async def test_two_instances_on_redis_fetch_one_token_per_account(build, connect, sandbox,
                                                                  redis_url) -> None:
    from wxhook.server.store.redis import RedisStore

    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    try:
        clients = [await connect(build(store=store)) for store in stores]
        pushes = [send(client, f"/wechat/{acct['name']}",
                       push_for(acct, openid=f"oRedis{acct['name']}{i:022d}"[:28]))
                  for i in range(10) for acct in (SHOP, NEWS) for client in clients]
        answers = await asyncio.gather(*pushes)
        assert all(r.status_code == 200 for r in answers)
        assert dict(sandbox.token_calls) == {SHOP["app_id"]: 1, NEWS["app_id"]: 1}
    finally:
        for store in stores:
            await store.aclose()


async def test_saved_profiles_are_per_account_in_one_file_and_thread(tmp_path, build, connect,
                                                                     sandbox) -> None:
    import threading

    from wxhook.server.store.sqlite import SqliteProfileRepo

    sandbox.empty_nicknames = True  # user/info names nobody: the saved profile is all
    seed = SqliteProfileRepo(tmp_path / "var" / "profiles.sqlite3", appid=str(SHOP["app_id"]))
    await seed.put(DEMO_OPENID, {"nickname": "ShopFan"})
    await seed.aclose()
    app = build()
    client = await connect(app)
    async with started(app):
        shop = reply_of(await send(client, "/wechat/shop", push_for(SHOP)), SHOP)
        news = reply_of(await send(client, "/wechat/news", push_for(NEWS)), NEWS)
        # aiosqlite's threads, one a connection, are named after the function they run.
        threads = [t for t in threading.enumerate()
                   if t.name.endswith("(_connection_worker_thread)")]
    assert (shop["Content"], news["Content"]) == ("Welcome, ShopFan!", "Welcome!")
    assert len(threads) == 1  # one connection for every account, not one each


async def test_one_account_rules_reload_leaves_the_other_alone(tmp_path, build,
                                                               connect) -> None:
    app = build(rules=True)
    client = await connect(app)

    async def price(acct: dict[str, Any]) -> str:
        push = push_for(acct, "text", text="price")
        return reply_of(await send(client, f"/wechat/{acct['name']}", push), acct)["Content"]

    shop_rules = tmp_path / "shop.rules.yaml"
    shop_rules.write_text("keywords: [{name: p, equal: price, replies: ['shop v2']}]\n",
                          encoding="utf-8")
    assert app.state.hub.rules[str(shop_rules)].reload("SIGHUP")
    assert (await price(SHOP), await price(NEWS)) == ("shop v2", "news price list")
    shop_rules.write_text("keywords: [{name: p, regex: ['('], replies: []}]\n",
                          encoding="utf-8")
    assert not app.state.hub.rules[str(shop_rules)].reload("SIGHUP")  # broken: kept
    assert (await price(SHOP), await price(NEWS)) == ("shop v2", "news price list")


async def test_probes_and_metrics_answer_with_an_accounts_file(build, connect) -> None:
    app = build()
    client = await connect(app)
    async with started(app):
        await send(client, "/wechat/shop", push_for(SHOP))
        assert (await client.get("/healthz")).json() == {"status": "alive"}
        assert (await client.get("/readyz")).json() == {"ready": True}
        assert "wxhook_pushes_total" in (await client.get("/metrics")).text
        assert (await client.get("/oauth/login")).status_code == 404  # /oauth/{name}/ only


async def test_metrics_carry_the_account_of_the_file(build, connect) -> None:
    metrics = Metrics()
    app = build(metrics=metrics)
    client = await connect(app)
    async with started(app):
        await send(client, "/wechat/shop", push_for(SHOP))
        await send(client, "/wechat/shop", push_for(SHOP, "text", text="help"))
        await send(client, "/wechat/news", push_for(SHOP))  # refused at news
        for _ in range(3):
            await send(client, "/wechat/nobody", push_for(SHOP))  # 404: no series of its own

    def value(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0
    pushes = "wxhook_pushes_total"
    assert value(pushes, account="shop", msg_type="event", event="subscribe",
                 outcome="replied") == 1
    assert value(pushes, account="shop", msg_type="text", event="", outcome="replied") == 1
    assert value(pushes, account="news", msg_type="", event="", outcome="rejected") == 1
    assert value("wxhook_guard_failures_total", account="news", reason="signature") == 1
    assert value("wxhook_push_latency_seconds_count", account="shop") == 2
    # shop's greeting fetched shop's token and profile; news never asked WeChat.
    assert value("wxhook_token_refreshes_total", account="shop", reason="cold",
                 result="ok") == 1
    assert value("wxhook_upstream_calls_total", account="shop", api="user_info",
                 errcode="0") == 1
    names = {s.labels["account"] for m in metrics.registry.collect() for s in m.samples
             if "account" in s.labels}
    assert names == {"shop", "news"}  # no `default`, no `nobody`


async def test_one_account_without_a_file_is_the_default_account_in_metrics(
        make_app, make_push) -> None:
    metrics = Metrics()
    app = make_app(metrics=metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        push = make_push("subscribe")
        assert (await client.post("/wechat", params=push.params,
                                  content=push.body)).status_code == 200
    assert metrics.registry.get_sample_value("wxhook_pushes_total", {
        "account": "default", "msg_type": "event", "event": "subscribe",
        "outcome": "replied"}) == 1
    names = {s.labels["account"] for m in metrics.registry.collect() for s in m.samples
             if "account" in s.labels}
    assert names == {"default"}
