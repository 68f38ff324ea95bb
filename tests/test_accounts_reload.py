"""Reloading the accounts file in one process (AccountHub, AccountsSource) through the real
routes: accounts added, removed and changed, a bad set refused whole, the last good copy.
A real `wxhook serve` (SIGHUP, file change, several workers) is in
test_accounts_reload_process.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from structlog.testing import capture_logs

from tests.support import free_port, started
from tests.test_accounts_routes import (  # noqa: F401 - fixtures
    NEWS,
    SHOP,
    build,
    connect,
    push_for,
    release,
    reply_of,
    sandbox,
    sandbox_app,
    send,
)
from wxhook.context import Context
from wxhook.errors import SettingsError
from wxhook.messages import TextMessage
from wxhook.router import Router
from wxhook.server.accounts_source import AccountsSource
from wxhook.server.config import load_settings
from wxhook.server.metrics import Metrics

THIRD = {"name": "third", "app_id": "wxthird0000000003", "secret": "third-secret-3",
         "token": "thirdToken3", "aes": None}
SECRETS = ("shop-secret-1", "shopToken1", "news-secret-2", "newsToken2", "third-secret-3",
           "thirdToken3", str(NEWS["aes"]))


def entry(acct: dict[str, Any], **extra: str) -> str:
    lines = [f"  - name: {acct['name']}", f"    app_id: {acct['app_id']}",
             f"    app_secret: {acct['secret']}", f"    token: {acct['token']}"]
    if acct["aes"]:
        lines += [f"    encoding_aes_key: {acct['aes']}", "    message_mode: safe"]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def write(path: Path, *entries: str) -> str:
    path.write_text("accounts:\n" + "".join(entries), encoding="utf-8")
    return str(path)


@pytest.fixture
def accounts(tmp_path: Path, sandbox: Any) -> Path:
    sandbox.add_account(str(THIRD["app_id"]), str(THIRD["secret"]))
    path = tmp_path / "accounts.yaml"
    write(path, entry(SHOP), entry(NEWS))
    return path


async def greet(client: httpx.AsyncClient, acct: dict[str, Any]) -> str:
    resp = await send(client, f"/wechat/{acct['name']}", push_for(acct))
    return reply_of(resp, acct)["Content"]


def value(metrics: Metrics, result: str) -> float:
    return metrics.registry.get_sample_value("wxhook_accounts_reloads_total",
                                             {"result": result}) or 0.0


async def test_an_added_account_is_served_and_a_removed_one_is_404(accounts, build, connect,
                                                                  sandbox) -> None:
    metrics = Metrics()
    app = build(str(accounts), metrics=metrics)
    client = await connect(app)
    async with started(app):
        assert await greet(client, NEWS) == "Welcome, 刺猬宝宝!"
        assert (await send(client, "/wechat/third", push_for(THIRD))).status_code == 404
        write(accounts, entry(SHOP), entry(THIRD))
        with capture_logs() as logs:
            assert app.state.accounts.reload("SIGHUP")
        assert await greet(client, THIRD) == "Welcome, 刺猬宝宝!"
        assert (await send(client, "/wechat/news", push_for(NEWS))).status_code == 404
        assert "news" not in app.state.hub.built
        assert value(metrics, "ok") == 1 and value(metrics, "failed") == 0
    (line,) = [x for x in logs if x["event"] == "accounts_reloaded"]
    assert (line["added"], line["removed"], line["changed"]) == (["third"], ["news"], [])
    assert line["accounts"] == 2 and line["why"] == "SIGHUP"


async def test_a_changed_account_is_rebuilt_and_the_others_keep_theirs(accounts, build, connect,
                                                                      sandbox) -> None:
    app = build(str(accounts))
    client = await connect(app)
    hub = app.state.hub
    async with started(app):
        assert await greet(client, SHOP) == await greet(client, NEWS) == "Welcome, 刺猬宝宝!"
        news_bundle, shop_bundle = hub.built["news"], hub.built["shop"]
        calls = dict(sandbox.token_calls)
        new_shop = {**SHOP, "token": "shopToken2"}
        write(accounts, entry(new_shop), entry(NEWS))
        assert app.state.accounts.reload("file changed")
        assert "shop" not in hub.built  # built again on its next push, not before
        # The old token is refused, the new one answered by new pieces.
        assert (await send(client, "/wechat/shop", push_for(SHOP))).status_code == 403
        assert await greet(client, new_shop) == "Welcome, 刺猬宝宝!"
        assert hub.built["shop"] is not shop_bundle
        # news: the very same pieces (token manager included), no token fetched again.
        assert await greet(client, NEWS) == "Welcome, 刺猬宝宝!"
        assert hub.built["news"] is news_bundle
        assert sandbox.token_calls[NEWS["app_id"]] == calls[NEWS["app_id"]] == 1


def slow_router(gate: asyncio.Event) -> Router:
    router = Router()

    @router.text()
    async def slow(msg: TextMessage, ctx: Context) -> str:
        await gate.wait()
        return f"{ctx.account} answered {msg.content}"
    return router


async def test_a_push_in_flight_finishes_on_the_pieces_it_started_on(accounts, build,
                                                                    connect) -> None:
    gate = asyncio.Event()
    app = build(str(accounts), router=slow_router(gate))
    client = await connect(app)
    async with started(app):
        inside = asyncio.create_task(send(client, "/wechat/shop",
                                          push_for(SHOP, "text", text="one")))
        await asyncio.sleep(0.1)
        old = app.state.hub.built["shop"]
        assert old.busy == 1
        write(accounts, entry({**SHOP, "token": "shopToken2"}), entry(NEWS))
        with capture_logs() as logs:
            assert app.state.accounts.reload("SIGHUP")
            await asyncio.sleep(0.3)
            # Not closed under the push: it waits (no late delivery holds it open).
            assert not old.webhook.delivery.pending and not inside.done()
            assert list(app.state.hub.retiring.values()) == [old]
            assert not [x for x in logs if x["event"] == "account_retired"]
            gate.set()
            assert reply_of(await inside, SHOP)["Content"] == "shop answered one"
            for _ in range(40):
                if not app.state.hub.retiring:
                    break
                await asyncio.sleep(0.05)
        assert old.busy == 0 and not app.state.hub.retiring
        assert [x["account"] for x in logs if x["event"] == "account_retired"] == ["shop"]


@contextlib.asynccontextmanager
async def listening(asgi: Any) -> AsyncIterator[str]:
    """`asgi` served on a real port in this loop (the hub's own HTTP clients reach it)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port,
                                           log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_removed_account_delivers_its_late_replies_then_closes_its_client(
        accounts, build, connect, sandbox_app, sandbox) -> None:
    gate = asyncio.Event()
    async with listening(sandbox_app) as base:
        settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(accounts),
                                 WECHAT_API_BASE=base, WXHOOK_DEADLINE=0.3)
        from wxhook.server.app import create_app
        from wxhook.server.store.memory import MemoryStore

        app = create_app(settings, store=MemoryStore(), metrics=Metrics(),
                         router=slow_router(gate))  # no http given: each account its own
        client = await connect(app)
        async with started(app):
            resp = await send(client, "/wechat/shop", push_for(SHOP, "text", text="late"))
            assert resp.content == b"success"  # past the deadline: the reply goes later
            old = app.state.hub.built["shop"]
            assert old.delivery.pending == 1 and old.http is not None
            write(accounts, entry(NEWS))
            with capture_logs() as logs:
                assert app.state.accounts.reload("SIGHUP")
                assert (await send(client, "/wechat/shop", push_for(SHOP))).status_code == 404
                await asyncio.sleep(0.2)
                assert not old.http.is_closed  # its late reply has not gone out yet
                gate.set()
                for _ in range(100):
                    if old.http.is_closed:
                        break
                    await asyncio.sleep(0.05)
            assert old.http.is_closed
            assert [m["text"]["content"] for m in sandbox.sent] == ["shop answered late"]
            assert not app.state.hub.retiring
    (line,) = [x for x in logs if x["event"] == "account_retired"]
    assert (line["account"], line["late_deliveries_abandoned"]) == ("shop", 0)


def handlers_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "acct_reload_broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "acct_reload_broken:router"


# Every way a reloaded set can be bad: the file itself, a ${VAR} not set, a rules file or a
# handlers module a new account names.
BAD = {
    "yaml": lambda tmp, mp: "accounts: [\n",
    "shape": lambda tmp, mp: "accounts:\n" + entry(SHOP) + entry({**NEWS, "name": "shop"}),
    "unset_var": lambda tmp, mp: "accounts:\n" + entry(SHOP) + entry(
        {**THIRD, "secret": "${THIRD_SECRET_NOT_SET}"}),
    "rules": lambda tmp, mp: (tmp / "bad.rules.yaml").write_text(
        "keywords: [{name: p, regex: ['('], replies: []}]\n") and "accounts:\n" + entry(
        SHOP) + entry(THIRD, rules="bad.rules.yaml"),
    "handlers": lambda tmp, mp: "accounts:\n" + entry(SHOP) + entry(
        THIRD, handlers=handlers_module(tmp, mp)),
    "missing": lambda tmp, mp: None,
}


@pytest.mark.parametrize("kind", list(BAD))
async def test_a_bad_set_keeps_the_last_good_one(kind, tmp_path, accounts, build, connect,
                                                 monkeypatch) -> None:
    metrics = Metrics()
    app = build(str(accounts), metrics=metrics)
    client = await connect(app)
    async with started(app):
        assert await greet(client, SHOP) == "Welcome, 刺猬宝宝!"
        bundle = app.state.hub.built["shop"]
        text = BAD[kind](tmp_path, monkeypatch)
        if text is None:
            accounts.unlink()
        else:
            accounts.write_text(text, encoding="utf-8")
        with capture_logs() as logs:
            assert not app.state.accounts.reload("file changed")
        # Still both accounts, the same pieces, and no third.
        assert await greet(client, SHOP) == await greet(client, NEWS) == "Welcome, 刺猬宝宝!"
        assert app.state.hub.built["shop"] is bundle
        assert (await send(client, "/wechat/third", push_for(THIRD))).status_code == 404
        status = app.state.accounts.status()
        assert status["accounts"] == 2 and status["loaded_by"] == "start"
        assert status["last_error"]
    assert value(metrics, "failed") == 1 and value(metrics, "ok") == 0
    (line,) = [x for x in logs if x["log_level"] == "error"]
    assert line["event"] == "accounts_reload_failed" and line["accounts"] == 2
    assert not any(secret in str(x) for x in logs for secret in SECRETS)


async def test_vars_are_read_again_at_reload(accounts, build, connect, monkeypatch) -> None:
    app = build(str(accounts))
    client = await connect(app)
    async with started(app):
        write(accounts, entry(SHOP), entry(NEWS),
              entry({**THIRD, "secret": "${THIRD_SECRET}", "token": "${THIRD_TOKEN}"}))
        assert not app.state.accounts.reload("SIGHUP")  # not set yet
        assert "${THIRD_SECRET} is not set" in str(app.state.accounts.last_error)
        monkeypatch.setenv("THIRD_SECRET", str(THIRD["secret"]))
        monkeypatch.setenv("THIRD_TOKEN", str(THIRD["token"]))
        assert app.state.accounts.reload("SIGHUP")
        assert await greet(client, THIRD) == "Welcome, 刺猬宝宝!"


async def test_a_dotenv_in_the_working_directory_is_read_at_reload(
        accounts, build, connect, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    app = build(str(accounts))
    client = await connect(app)
    async with started(app):
        write(accounts, entry(SHOP), entry({**THIRD, "token": "${THIRD_TOKEN}"}))
        # Saved in another encoding: refused with the reason, the last good set serves on.
        (tmp_path / ".env").write_bytes(f"THIRD_TOKEN={THIRD['token']}\n# 第三\n".encode("gbk"))
        assert not app.state.accounts.reload("SIGHUP")
        assert ".env is not UTF-8 text" in str(app.state.accounts.last_error)
        assert await greet(client, NEWS) == "Welcome, 刺猬宝宝!"
        (tmp_path / ".env").write_text(f"THIRD_TOKEN={THIRD['token']}\n# 第三\n",
                                       encoding="utf-8")
        assert app.state.accounts.reload("SIGHUP")
        assert await greet(client, THIRD) == "Welcome, 刺猬宝宝!"


async def test_rules_files_follow_the_accounts_that_name_them(accounts, build, connect,
                                                              tmp_path) -> None:
    (tmp_path / "third.rules.yaml").write_text(
        "keywords: [{name: p, equal: price, replies: ['third v1']}]\n")
    app = build(str(accounts))
    client = await connect(app)
    hub = app.state.hub

    async def price() -> str:
        push = push_for(THIRD, "text", text="price")
        return reply_of(await send(client, "/wechat/third", push), THIRD)["Content"]

    async with started(app):
        write(accounts, entry(SHOP), entry(THIRD, rules="third.rules.yaml"))
        assert app.state.accounts.reload("SIGHUP")
        assert await price() == "third v1"
        # The new rules file is watched from now on (poll: what the watcher runs each second).
        (tmp_path / "third.rules.yaml").write_text(
            "keywords: [{name: p, equal: price, replies: ['third v2!']}]\n")
        app.state.accounts.poll()
        assert await price() == "third v2!"
        write(accounts, entry(SHOP), entry(NEWS))
        app.state.accounts.poll()
        assert hub.rules == {}


async def test_a_worker_started_while_the_file_is_broken_runs_the_last_good_copy(
        tmp_path, accounts, build, connect, monkeypatch) -> None:
    copy = tmp_path / "metrics" / "accounts.last-good"
    copy.parent.mkdir()
    monkeypatch.setenv("WXHOOK_ACCOUNTS_LAST_GOOD", str(copy))
    first = build(str(accounts))  # the worker that ran: its good set is the copy
    write(accounts, entry(SHOP), entry(THIRD))
    async with started(first):
        assert first.state.accounts.reload("SIGHUP")
    accounts.write_text("accounts: [\n")
    metrics = Metrics()
    again = build(str(accounts), metrics=metrics)  # a worker started again: no refusal
    status = again.state.accounts.status()
    assert status["loaded_by"] == "last good copy" and "not valid YAML" in status["last_error"]
    assert value(metrics, "failed") == 1
    client = await connect(again)
    assert await greet(client, THIRD) == "Welcome, 刺猬宝宝!"
    assert (await send(client, "/wechat/news", push_for(NEWS))).status_code == 404
    # Without a copy (the first start) a broken file still refuses to start.
    monkeypatch.delenv("WXHOOK_ACCOUNTS_LAST_GOOD")
    with pytest.raises(SettingsError, match="not valid YAML"):
        build(str(accounts))


def test_status_names_no_secret(accounts, monkeypatch) -> None:
    settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(accounts))
    source = AccountsSource(settings, metrics=Metrics())
    assert not any(secret in str(source.status()) for secret in SECRETS)
    assert source.status()["accounts"] == 2



async def test_a_worker_started_while_a_rules_file_is_broken_runs_its_last_good_rules(
        tmp_path, accounts, build, connect, monkeypatch) -> None:
    copy = tmp_path / "metrics" / "accounts.last-good"
    copy.parent.mkdir()
    monkeypatch.setenv("WXHOOK_ACCOUNTS_LAST_GOOD", str(copy))
    rules = tmp_path / "shop.rules.yaml"
    rules.write_text("keywords: [{name: p, equal: price, replies: ['shop v1']}]\n")
    write(accounts, entry(SHOP, rules="shop.rules.yaml"), entry(NEWS))
    build(str(accounts))  # the worker that ran: each rules file's copy beside the accounts'
    rules.write_text("keywords: [{name: p, regex: ['('], replies: []}]\n")
    again = build(str(accounts))  # started again: no refusal, the rules it had
    client = await connect(again)
    push = push_for(SHOP, "text", text="price")
    assert reply_of(await send(client, "/wechat/shop", push), SHOP)["Content"] == "shop v1"
    assert "bad regex" in again.state.hub.rules[str(rules)].status()["last_error"]
    monkeypatch.delenv("WXHOOK_ACCOUNTS_LAST_GOOD")
    with pytest.raises(SettingsError, match="bad regex"):
        build(str(accounts))


async def test_shutdown_closes_an_account_still_retiring(accounts, build, connect, sandbox_app,
                                                         monkeypatch) -> None:
    from wxhook.server import app as app_module
    from wxhook.server.app import create_app
    from wxhook.server.store.memory import MemoryStore

    monkeypatch.setattr(app_module, "SHUTDOWN_GRACE", 0.3)
    never = asyncio.Event()  # the handler never finishes: its late delivery is abandoned
    async with listening(sandbox_app) as base:
        settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(accounts),
                                 WECHAT_API_BASE=base, WXHOOK_DEADLINE=0.3)
        app = create_app(settings, store=MemoryStore(), metrics=Metrics(),
                         router=slow_router(never))
        client = await connect(app)
        with capture_logs() as logs:
            async with started(app):
                resp = await send(client, "/wechat/shop", push_for(SHOP, "text", text="x"))
                assert resp.content == b"success"
                old = app.state.hub.built["shop"]
                write(accounts, entry(NEWS))
                assert app.state.accounts.reload("SIGHUP")
                assert list(app.state.hub.retiring.values()) == [old]
            # The lifespan ended in its grace, the retiring account's client closed with it.
            assert old.http is not None and old.http.is_closed
    (line,) = [x for x in logs if x["event"] == "shutdown"]
    assert line["late_deliveries_abandoned"] == 1


async def test_a_token_request_in_flight_finishes_before_its_account_is_closed(
        accounts, connect, sandbox_app, sandbox) -> None:
    # A CRM asks the token authority for shop's token while a peer holds the refresh lock;
    # a reload changes shop meanwhile. The request goes on with the pieces it started on:
    # their client is closed only after it has its answer.
    from wxhook.server.app import create_app
    from wxhook.server.store.memory import MemoryStore
    from wxhook.store import same_slot

    key = "k3y-for-the-token-authority-0123456789abcdef"
    auth = {"Authorization": f"Bearer {key}"}
    async with listening(sandbox_app) as base:
        settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(accounts),
                                 WECHAT_API_BASE=base, WXHOOK_INTERNAL_KEY=key)
        store = MemoryStore()
        app = create_app(settings, store=store, metrics=Metrics())  # each account its client
        client = await connect(app)
        lock = same_slot(f"wxhook:{SHOP['app_id']}:token", ":lock")
        async with started(app):
            assert await store.set(lock, b"a-peer", ttl=30, nx=True)  # a peer refreshes
            inside = asyncio.create_task(client.get("/internal/accounts/shop/token",
                                                    headers=auth))
            await asyncio.sleep(0.2)
            old = app.state.hub.built["shop"]
            assert old.busy == 1 and not inside.done()
            write(accounts, entry({**SHOP, "secret": "shop-secret-rotated"}), entry(NEWS))
            assert app.state.accounts.reload("SIGHUP")
            await asyncio.sleep(0.3)
            assert old.http is not None and not old.http.is_closed  # not under the request
            await store.delete(lock)  # the peer died without a token: this one fetches
            resp = await inside
            assert resp.status_code == 200, resp.text
            assert resp.json()["access_token"]
            for _ in range(40):
                if not app.state.hub.retiring:
                    break
                await asyncio.sleep(0.05)
            assert old.busy == 0 and old.http.is_closed and not app.state.hub.retiring
