"""OAuth per account of the accounts file, through the real routes against the sandbox:
/oauth/{name}/login, /oauth/{name}/callback and /me/{name}, each with its own appid,
secret, signing key and cookies; a sign-in started for one account is refused at another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests import test_accounts_routes as routes
from tests.support import started
from tests.test_accounts_routes import NEWS, SHOP
from wxhook.server.oauth import SESSION_COOKIE
from wxhook.server.oauth_state import COOKIE

# The two-account set-up of test_accounts_routes (shop: plain, news: safe mode).
release, sandbox_app, sandbox, build, connect = (
    routes.release, routes.sandbox_app, routes.sandbox, routes.build, routes.connect)
JAR = "testserver.local"  # the domain httpx files the test server's cookies under


@pytest.fixture
async def client(build, connect) -> AsyncIterator[httpx.AsyncClient]:
    """A browser on the two-account app, between its start-up and its shutdown."""
    app = build()
    async with started(app):
        yield await connect(app)


async def start(client: httpx.AsyncClient, name: str, next_path: str = "/page") -> httpx.URL:
    r = await client.get(f"/oauth/{name}/login", params={"next": next_path})
    assert r.status_code == 302, r.text
    return httpx.URL(r.headers["location"])


async def authorize(upstream: httpx.AsyncClient, url: httpx.URL) -> httpx.URL:
    """What WeChat does in the browser: the follower agrees, WeChat redirects back."""
    r = await upstream.get("http://sandbox/connect/oauth2/authorize", params=dict(url.params))
    assert r.status_code == 302, r.text
    return httpx.URL(r.headers["location"])


def cookie(client: httpx.AsyncClient, name: str) -> Any:
    found = [c for c in client.cookies.jar if c.name == name]
    assert len(found) == 1, [c.name for c in client.cookies.jar]
    return found[0]


async def test_each_account_signs_in_with_its_own_app(client, upstream,
                                                      sandbox) -> None:
    for acct in (SHOP, NEWS):
        name = str(acct["name"])
        url = await start(client, name, f"/{name}-page")
        assert url.params["appid"] == acct["app_id"]
        assert url.params["redirect_uri"] == f"http://127.0.0.1:8000/oauth/{name}/callback"
        assert cookie(client, f"{COOKIE}_{name}").path == f"/oauth/{name}/"
        back = await authorize(upstream, url)
        assert back.path == f"/oauth/{name}/callback"
        with capture_logs() as logs:
            r = await client.get(back.path, params=dict(back.params))
        assert (r.status_code, r.headers["location"]) == (303, f"/{name}-page")
        assert [line["account"] for line in logs if line["event"] == "oauth_login"] == [name]
        assert cookie(client, f"{SESSION_COOKIE}_{name}").path == "/"
        assert "Hello, 刺猬宝宝" in (await client.get(f"/me/{name}")).text
    # The sandbox exchanged each code with the appid and secret it was issued for.
    assert sandbox.calls["/sns/oauth2/access_token"] == 2


async def test_me_knows_only_the_accounts_signed_in(client, upstream) -> None:
    back = await authorize(upstream, await start(client, "shop"))
    assert (await client.get(back.path, params=dict(back.params))).status_code == 303
    assert "Hello, 刺猬宝宝" in (await client.get("/me/shop")).text
    news = await client.get("/me/news")
    assert "Sign in with WeChat" in news.text
    assert "/oauth/news/login?next=%2Fme%2Fnews" in news.text
    # shop's session cookie under news's name: signed with another key, not news's follower.
    async with httpx.AsyncClient(transport=client._transport,
                                 base_url="http://testserver") as thief:
        thief.cookies.set(f"{SESSION_COOKIE}_news",
                          cookie(client, f"{SESSION_COOKIE}_shop").value, domain=JAR, path="/")
        assert "Sign in with WeChat" in (await thief.get("/me/news")).text


async def test_a_state_of_one_account_is_refused_at_another(client, upstream,
                                                            sandbox) -> None:
    back = await authorize(upstream, await start(client, "news"))
    params = dict(back.params)
    # The browser keeps news's cookie to news's paths: at shop's callback it has none.
    r = await client.get("/oauth/shop/callback", params=params)
    assert r.status_code == 403
    # Even carried there under shop's cookie name, news's signed state is not shop's.
    client.cookies.set(f"{COOKIE}_shop", cookie(client, f"{COOKIE}_news").value,
                       domain=JAR, path="/oauth/shop/")
    r = await client.get("/oauth/shop/callback", params=params)
    assert r.status_code in (400, 403), r.text
    assert f"{SESSION_COOKIE}_shop" not in r.headers.get("set-cookie", "")
    assert sandbox.calls["/sns/oauth2/access_token"] == 0  # refused before spending the code
    # The sign-in still completes where it began.
    r = await client.get("/oauth/news/callback", params=params)
    assert (r.status_code, r.headers["location"]) == (303, "/page")


async def test_oauth_routes_are_per_account_only(client) -> None:
    for path in ("/oauth/login", "/oauth/callback", "/me", "/oauth/nobody/login",
                 "/oauth/nobody/callback", "/me/nobody", "/oauth/SHOP/login"):
        assert (await client.get(path)).status_code == 404, path
    assert (await client.get("/oauth/shop/login")).status_code == 302
    with capture_logs() as logs:  # anyone can ask for any name: the lines are bounded
        for i in range(50):
            assert (await client.get(f"/oauth/n{i}/callback")).status_code == 404
    assert 1 <= len([line for line in logs if line["event"] == "oauth_refused"]) <= 10
