"""The accounts file's `root:`: one account keeps the URLs of a one-account deployment
(/wechat, /oauth/login, /me), so adding a second account changes nothing in the first one's
console or pages. Through the real routes against the sandbox."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from tests import test_accounts_routes as routes
from tests.support import started
from tests.test_accounts_oauth import authorize
from tests.test_accounts_reload import SECRETS, entry
from tests.test_accounts_routes import NEWS, SHOP, push_for, reply_of, send
from wxhook.server.accounts import AccountsError, load_accounts
from wxhook.tools.simulate import sign_push

# The two-account set-up of test_accounts_routes (shop: plain, news: safe mode).
release, sandbox_app, sandbox, build, connect = (
    routes.release, routes.sandbox_app, routes.sandbox, routes.build, routes.connect)


def write(path: Path, root: str | None) -> str:
    head = f"root: {root}\n" if root is not None else ""
    path.write_text(head + "accounts:\n" + entry(SHOP) + entry(NEWS), encoding="utf-8")
    return str(path)


@pytest.fixture
def accounts(tmp_path: Path) -> Path:
    path = tmp_path / "accounts.yaml"
    write(path, "shop")
    return path


async def test_the_root_account_answers_at_wechat_and_at_its_own_url(accounts, build,
                                                                      connect) -> None:
    client = await connect(build(str(accounts)))
    for url in ("/wechat", "/wechat/shop"):
        assert reply_of(await send(client, url, push_for(SHOP)), SHOP)["Content"] == \
            "Welcome, 刺猬宝宝!"
    # The other account only at its own URL, and its pushes are refused at /wechat.
    assert reply_of(await send(client, "/wechat/news", push_for(NEWS)), NEWS)["Content"] == \
        "Welcome, 刺猬宝宝!"
    for push in (push_for(NEWS), push_for(NEWS, aes=False)):
        assert (await send(client, "/wechat", push)).status_code in (400, 403)


async def test_url_verification_at_wechat_uses_the_root_accounts_token(accounts, build,
                                                                        connect) -> None:
    client = await connect(build(str(accounts)))
    for token, status in ((NEWS["token"], 403), (SHOP["token"], 200)):
        push = sign_push(b"", token=str(token), openid="")
        params = {k: push.params[k] for k in ("signature", "timestamp", "nonce")}
        resp = await client.get("/wechat", params={**params, "echostr": "e1"})
        assert resp.status_code == status, resp.text


async def test_without_root_the_one_account_urls_are_404(tmp_path, build, connect) -> None:
    client = await connect(build(write(tmp_path / "accounts.yaml", None)))
    assert (await send(client, "/wechat", push_for(SHOP))).status_code == 404
    for path in ("/oauth/login", "/me"):
        assert (await client.get(path)).status_code == 404, path


async def test_oauth_login_and_me_are_the_root_accounts(accounts, build, connect,
                                                        upstream) -> None:
    app = build(str(accounts))
    async with started(app):
        client = await connect(app)
        r = await client.get("/oauth/login", params={"next": "/page"})
        assert r.status_code == 302, r.text
        url = httpx.URL(r.headers["location"])
        # The root account's app, and its own callback (where its state cookie is scoped).
        assert url.params["appid"] == SHOP["app_id"]
        assert url.params["redirect_uri"].endswith("/oauth/shop/callback")
        back = await authorize(upstream, url)
        r = await client.get(back.path, params=dict(back.params))
        assert (r.status_code, r.headers["location"]) == (303, "/page")
        assert "Hello, 刺猬宝宝" in (await client.get("/me")).text
        assert "Hello, 刺猬宝宝" in (await client.get("/me/shop")).text
        assert "Sign in with WeChat" in (await client.get("/me/news")).text


async def test_a_reload_moves_root(accounts, build, connect) -> None:
    app = build(str(accounts))
    client = await connect(app)
    async with started(app):
        assert (await send(client, "/wechat", push_for(SHOP))).status_code == 200
        shop = app.state.hub.built["shop"]
        write(accounts, "news")
        with capture_logs() as logs:
            assert app.state.accounts.reload("SIGHUP")
        # Moving root changes no account: shop keeps its pieces (its token, its work).
        (line,) = [x for x in logs if x["event"] == "accounts_reloaded"]
        assert line["changed"] == [] and app.state.hub.built["shop"] is shop
        assert reply_of(await send(client, "/wechat", push_for(NEWS)), NEWS)["Content"] == \
            "Welcome, 刺猬宝宝!"
        assert (await send(client, "/wechat", push_for(SHOP))).status_code in (400, 403)
        write(accounts, None)
        assert app.state.accounts.reload("SIGHUP")
        assert (await send(client, "/wechat", push_for(NEWS))).status_code == 404
        # A root naming no account is refused whole: the last good set (no root) stays.
        write(accounts, "nobody")
        with capture_logs():
            assert not app.state.accounts.reload("SIGHUP")
        assert (await send(client, "/wechat", push_for(NEWS))).status_code == 404
        assert reply_of(await send(client, "/wechat/news", push_for(NEWS)), NEWS)["Content"] \
            == "Welcome, 刺猬宝宝!"


@pytest.mark.parametrize(("root", "why"), [
    ("nobody", "'nobody' is not the name of an account of the file"),
    ("[shop]", "must be the name of an account of the file"),
    ("{a: b}", "must be the name of an account of the file"),
    ("true", "must be the name of an account of the file"),
    ("12", "must be the name of an account of the file"),
    ("''", "'' is not the name of an account of the file"),
    ("${SHOP_TOKEN}", "is not the name of an account of the file"),
])
def test_a_root_that_names_no_account_is_refused_with_its_line(tmp_path, root, why) -> None:
    path = tmp_path / "accounts.yaml"
    text = "accounts:\n" + entry(SHOP) + entry(NEWS)
    path.write_text(text + f"root: {root}\n", encoding="utf-8")
    with pytest.raises(AccountsError) as caught:
        load_accounts(str(path), environ={"SHOP_TOKEN": "shopToken1"})
    (problem,) = caught.value.problems
    line = len(text.splitlines()) + 1
    assert problem.startswith(f"{path}:{line}: root: ") and why in problem, problem
    assert not any(secret in str(caught.value) for secret in SECRETS)


def test_root_marks_exactly_one_account(tmp_path) -> None:
    loaded = load_accounts(write(tmp_path / "accounts.yaml", "news"), environ={})
    assert [name for name, account in loaded.items() if account.root] == ["news"]
    loaded = load_accounts(write(tmp_path / "accounts.yaml", None), environ={})
    assert not any(account.root for account in loaded.values())


async def test_check_and_dev_name_the_root(accounts, upstream) -> None:
    from wxhook.server.config import load_settings
    from wxhook.tools.check_accounts import check_accounts
    from wxhook.tools.sandbox.accounts import dev_text

    settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(accounts),
                             WECHAT_API_BASE="http://127.0.0.1:9")
    _, lines = await check_accounts(settings)
    assert lines[0].endswith("accounts: 2 in " + str(accounts) + ", shop also at /wechat (root)")
    text = dev_text(load_accounts(str(accounts), environ={}), str(accounts),
                    url="http://127.0.0.1:8000", base="http://127.0.0.1:8001", rules="")
    assert "(shop also at http://127.0.0.1:8000/wechat: the file's root)" in text
