"""Without Redis, the accounts of one process share one retry memory and one nonce memory,
bounded for the process: a thousand accounts hold what one busy account would. Sharing
must not let one account's push stand in for another's."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest

from tests.support import started
from wxhook.context import Context
from wxhook.messages import TextMessage
from wxhook.router import Router
from wxhook.server.app import create_app
from wxhook.server.config import load_settings
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.server.xmldoc import reply_fields

ACCOUNTS = {"shop": ("wxshop00000000001", "shopToken1"),
            "news": ("wxnews00000000002", "newsToken2")}


def accounts_file(tmp_path: Path) -> str:
    lines = ["accounts:"]
    for name, (app_id, token) in ACCOUNTS.items():
        lines += [f"  - name: {name}", f"    app_id: {app_id}",
                  f"    app_secret: {name}-secret", f"    token: {token}"]
    path = tmp_path / "accounts.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def router() -> Router:
    r = Router()

    @r.message("text")
    async def answer(msg: TextMessage, ctx: Context) -> str:
        return f"{ctx.account} ran for {msg.content}"
    return r


@pytest.fixture
def app(tmp_path: Path) -> object:
    settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=accounts_file(tmp_path),
                             WECHAT_API_BASE="http://sandbox")
    return create_app(settings, store=MemoryStore(), metrics=Metrics(), router=router())


async def post(client: httpx.AsyncClient, name: str, *, ts: str, nonce: str, msg_id: int,
               openid: str = "oSameFollower000000000000001") -> httpx.Response:
    token = ACCOUNTS[name][1]
    sig = hashlib.sha1("".join(sorted((token, ts, nonce))).encode()).hexdigest()
    body = (f"<xml><ToUserName><![CDATA[gh_{name}]]></ToUserName>"
            f"<FromUserName><![CDATA[{openid}]]></FromUserName><CreateTime>{ts}</CreateTime>"
            f"<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi {name}]]></Content>"
            f"<MsgId>{msg_id}</MsgId></xml>")
    return await client.post(f"/wechat/{name}",
                             params={"signature": sig, "timestamp": ts, "nonce": nonce},
                             content=body.encode())


async def test_accounts_share_the_memories_without_sharing_entries(app) -> None:
    ts = str(int(time.time()))
    async with started(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                               base_url="http://testserver") as client:
        # The same timestamp, nonce and MsgId at both accounts (each signed with its own
        # token, its own body): two pushes, each answered by its own account's handler.
        shop = await post(client, "shop", ts=ts, nonce="4242", msg_id=777)
        news = await post(client, "news", ts=ts, nonce="4242", msg_id=777)
        assert shop.status_code == 200, shop.text
        assert news.status_code == 200, news.text
        assert reply_fields(shop.content)["Content"] == "shop ran for hi shop"
        assert reply_fields(news.content)["Content"] == "news ran for hi news"
        # Within one account the memories still work: WeChat's retry gets the first
        # reply, and the query with another body is a replay.
        again = await post(client, "news", ts=ts, nonce="4242", msg_id=777)
        assert reply_fields(again.content)["Content"] == "news ran for hi news"
        forged = await post(client, "news", ts=ts, nonce="4242", msg_id=778)
        assert forged.status_code in (401, 403), forged.text
        hub = app.state.hub  # type: ignore[attr-defined]
        a, b = (hub.built[name].webhook for name in ACCOUNTS)
        assert a.dedup.local is b.dedup.local is not None
        assert a.guard.nonces is b.guard.nonces
