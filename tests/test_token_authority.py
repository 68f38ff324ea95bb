"""The token authority (/internal/accounts/{name}/token): the key, compare-and-expire, back-off,
instances agreeing on one token, limits, labels and logs, through the real routes against
the sandbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from structlog.testing import capture_logs

from tests.support import (
    SANDBOX_APP_ID,
    SANDBOX_SECRET,
    TOKEN,
    WXHOOK,
    free_port,
    isolated_redis,
    redis_server,
    sandbox_process,
    server_process,
)
from wxhook.errors import SettingsError
from wxhook.server import authority as authority_module
from wxhook.server.app import create_app
from wxhook.server.config import load_settings
from wxhook.server.metrics import Metrics
from wxhook.server.store.memory import MemoryStore
from wxhook.tools.sandbox import SandboxState
from wxhook.tools.simulate import Push, decode_reply, push_xml, sign_push

KEY = "k3y-for-the-token-authority-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOKEN_URL = "/internal/accounts/default/token"
INVALID_URL = "/internal/accounts/default/token/invalid"
SHOP = {"name": "shop", "app_id": "wxshop00000000001", "secret": "shop-secret-1"}
NEWS = {"name": "news", "app_id": "wxnews00000000002", "secret": "news-secret-2"}


@pytest.fixture
def keyed(make_settings: Callable[..., Any]) -> Any:
    """Settings with the token authority on."""
    return make_settings(WXHOOK_INTERNAL_KEY=KEY)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """connect(app, client=("10.0.0.9", 4000)): an in-process client from that address."""
    clients: list[httpx.AsyncClient] = []

    def make(app: Any, client: tuple[str, int] = ("127.0.0.1", 123)) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=client),
                              base_url="http://wxhook", timeout=30)
        clients.append(c)
        return c
    yield make
    for c in clients:
        await c.aclose()


@pytest.fixture
async def redis_stores(redis_url: str) -> AsyncIterator[Callable[[int], list[Any]]]:
    """redis_stores(n): n clients of one Redis (n instances), closed after the test."""
    from wxhook.server.store.redis import RedisStore

    made: list[RedisStore] = []

    def make(n: int) -> list[RedisStore]:
        made.extend(RedisStore(redis_url) for _ in range(n))
        return made[-n:]
    yield make
    for store in made:
        await store.aclose()


def counted(app: Any, **labels: str) -> float:
    """wxhook_internal_token_requests_total for those labels (0 when never counted)."""
    value = app.state.metrics.registry.get_sample_value(
        "wxhook_internal_token_requests_total", labels)
    return float(value or 0.0)


def greeting(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return decode_reply(resp.content, crypto=None).get("Content", resp.text)


async def push(client: httpx.AsyncClient, p: Push) -> httpx.Response:
    return await client.post("/wechat", params=p.params, content=p.body)


# ------------------------------------------------------------------------------ settings


def test_the_key_is_a_secret_of_32_characters_or_more(make_settings) -> None:
    s = make_settings(WXHOOK_INTERNAL_KEY=KEY)
    assert s.internal_key is not None and s.internal_key.get_secret_value() == KEY
    assert KEY not in repr(s) + str(s.summary())
    assert s.summary()["internal_key"] == f"***({len(KEY)})"
    with pytest.raises(SettingsError) as short:
        make_settings(WXHOOK_INTERNAL_KEY="tooShortKey123")
    assert "WXHOOK_INTERNAL_KEY: must be at least 32" in str(short.value)
    assert "tooShortKey123" not in str(short.value)
    with pytest.raises(SettingsError, match="WXHOOK_INTERNAL_KEY: may contain only"):
        make_settings(WXHOOK_INTERNAL_KEY="a key with spaces " + "x" * 32)
    assert make_settings(WXHOOK_INTERNAL_KEY="").internal_key is None  # blank: off


# ------------------------------------------------------------------------------ the key


@pytest.mark.parametrize("path", [TOKEN_URL, "/internal/docs", "/internal/openapi.json"])
async def test_without_a_key_the_routes_do_not_exist(make_app, connect, path) -> None:
    client = connect(make_app())
    assert (await client.get(path, headers=AUTH)).status_code == 404
    resp = await client.post(INVALID_URL, headers=AUTH, json={"access_token": "x"})
    assert resp.status_code == 404


@pytest.mark.parametrize("header", [
    None,                                    # missing
    f"Bearer {KEY[:-1]}X",                   # same length, last character wrong
    f"Bearer {KEY[:-1]}",                    # one shorter
    f"Bearer {KEY}0",                        # one longer
    f"Bearer {KEY[:8]}",                     # a prefix
    f"Bearer {'x' * 4000}",                  # far longer
    f"Basic {KEY}",                          # another scheme
    KEY,                                     # no scheme
    "Bearer",                                # a scheme alone
    "Bearer ",
])
async def test_a_wrong_or_missing_key_is_401_and_costs_nothing(make_app, keyed, connect,
                                                              sandbox, header) -> None:
    app = make_app(settings=keyed)
    client = connect(app)
    headers = {} if header is None else {"Authorization": header}
    for resp in (await client.get(TOKEN_URL, headers=headers),
                 await client.post(INVALID_URL, headers=headers, json={"access_token": "t"}),
                 # Refused before the body is read: not a 422 for a body that is no JSON.
                 await client.post(INVALID_URL, headers=headers, content=b"{not json")):
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"
        assert "access_token" not in resp.text
    assert sandbox.token_requests == 0
    assert counted(app, account="default", caller="other", action="get",
                   outcome="unauthorized") == 1


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_right_key_gets_the_token_wxhook_uses(make_app, keyed, connect, sandbox,
                                                        make_push, scheme) -> None:
    app = make_app(settings=keyed)
    client = connect(app)
    resp = await client.get(TOKEN_URL, headers={"Authorization": f"{scheme} {KEY}"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"access_token", "expires_in"}
    assert 7100 < body["expires_in"] <= 7200
    assert body["access_token"] == app.state.tokens.current
    # wxhook's own calls use the same token: a greeting needs user/info, and no new fetch.
    assert greeting(await push(client, make_push("subscribe"))) == "Welcome, 刺猬宝宝!"
    assert sandbox.token_requests == 1
    assert counted(app, account="default", caller="other", action="get", outcome="ok") == 1


async def test_expires_in_is_the_seconds_the_token_has_left(make_app, keyed, connect,
                                                          sandbox) -> None:
    now = [1_000_000.0]
    client = connect(make_app(settings=keyed, wall_clock=lambda: now[0]))
    first = (await client.get(TOKEN_URL, headers=AUTH)).json()
    assert first["expires_in"] == 7200
    now[0] += 1000
    later = (await client.get(TOKEN_URL, headers=AUTH)).json()
    assert later == {"access_token": first["access_token"], "expires_in": 6200}
    assert sandbox.token_requests == 1


async def test_the_key_is_compared_as_digests_of_one_length(make_app, keyed, connect,
                                                            monkeypatch) -> None:
    # No length leak: whatever length was sent, two 32-byte digests are compared, in
    # constant time (hmac.compare_digest).
    seen: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(authority_module.hmac, "compare_digest", recording)
    client = connect(make_app(settings=keyed))
    for given in ("", "x", KEY[:-1], KEY, KEY + "x" * 100):
        await client.get(TOKEN_URL, headers={"Authorization": f"Bearer {given}"})
    assert seen == [(32, 32)] * 5


# ------------------------------------------------------------------------ compare-and-expire


async def test_a_stale_report_leaves_the_current_token_alone(make_app, keyed, connect,
                                                             sandbox) -> None:
    reads: list[str] = []

    class Counting(MemoryStore):
        async def get(self, key: str) -> bytes | None:
            reads.append(key)
            return await super().get(key)

    client = connect(make_app(settings=keyed, store=Counting()))
    current = (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    near = current[:-1] + ("x" if current[-1] != "x" else "y")  # one character off
    for stale in ("an-old-token-from-yesterday", near):
        reads.clear()
        resp = await client.post(INVALID_URL, headers=AUTH, json={"access_token": stale})
        assert resp.status_code == 200, resp.text
        assert resp.json()["access_token"] == current
        assert [k for k in reads if k.endswith(":token")] == [f"wxhook:{SANDBOX_APP_ID}:token"]
    assert sandbox.token_requests == 1


async def test_reporting_the_current_token_refreshes_once(make_app, keyed, connect, sandbox,
                                                          make_push) -> None:
    app = make_app(settings=keyed)
    client = connect(app)
    old = (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    sandbox.invalidate_tokens()  # someone else's force_refresh: WeChat answers 40001 now
    # Five callers report it at once: one refresh for all of them.
    answers = await asyncio.gather(*(
        client.post(INVALID_URL, headers={**AUTH, "X-Wxhook-Caller": f"crm-{i}"},
                    json={"access_token": old}) for i in range(5)))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    new = {r.json()["access_token"] for r in answers}
    assert len(new) == 1 and old not in new
    assert sandbox.token_requests == 2
    # A late report of the old token (a caller's stale copy) fetches nothing more.
    late = await client.post(INVALID_URL, headers=AUTH, json={"access_token": old})
    assert late.json()["access_token"] in new
    # ... and wxhook's own calls use the new one: the greeting needs user/info.
    assert greeting(await push(client, make_push("subscribe"))) == "Welcome, 刺猬宝宝!"
    assert sandbox.token_requests == 2
    outcomes = {o: sum(counted(app, account="default", caller=f"crm-{i}", action="invalid",
                               outcome=o) for i in range(5)) for o in ("expired", "stale")}
    assert outcomes == {"expired": 1, "stale": 4}  # the first report expired it


async def test_a_token_rejected_right_after_a_refresh_backs_off(make_app, keyed, connect,
                                                                sandbox) -> None:
    now = [1_000_000.0]
    app = make_app(settings=keyed, wall_clock=lambda: now[0])
    client = connect(app)
    first = (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    sandbox.invalidate_tokens()  # WeChat rejects it (stable_token would hand it out again)
    second = (await client.post(INVALID_URL, headers=AUTH,
                                json={"access_token": first})).json()["access_token"]
    assert second != first and sandbox.token_requests == 2
    now[0] += 5  # its successor rejected too, seconds after it was fetched: pause
    sandbox.invalidate_tokens()
    resp = await client.post(INVALID_URL, headers=AUTH, json={"access_token": second})
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "30"
    assert resp.json()["errcode"] == 40001 and "access_token" not in resp.json()
    now[0] += 20  # still inside the pause: nothing fetched, for GET either
    resp = await client.get(TOKEN_URL, headers=AUTH)
    assert resp.status_code == 503 and resp.headers["retry-after"] == "10"
    assert sandbox.token_requests == 2
    now[0] += 11  # the pause is over: one fetch
    resp = await client.get(TOKEN_URL, headers=AUTH)
    assert resp.status_code == 200 and resp.json()["access_token"] not in (first, second)
    assert sandbox.token_requests == 3
    assert counted(app, account="default", caller="other", action="invalid",
                   outcome="backoff") == 1


async def test_a_failing_upstream_is_503_with_when_to_ask_again(make_app, keyed, connect,
                                                                sandbox) -> None:
    sandbox.ip_whitelisted = False  # 40164: a configuration error, 20 s between attempts
    client = connect(make_app(settings=keyed))
    resp = await client.get(TOKEN_URL, headers=AUTH)
    assert resp.status_code == 503
    assert resp.json()["errcode"] == 40164
    assert 1 <= int(resp.headers["retry-after"]) <= 20


async def test_a_closed_http_client_is_503_not_a_crash(make_app, keyed, connect,
                                                      sandbox) -> None:
    # Whatever closes an account's client under a request (shutdown, a reload), the answer
    # is "no token now", never a 500.
    closed = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    await closed.aclose()
    app = make_app(settings=keyed, http=closed)
    resp = await connect(app).get(TOKEN_URL, headers=AUTH)
    assert resp.status_code == 503, resp.text
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert counted(app, account="default", caller="other", action="get",
                   outcome="unavailable") == 1


async def test_a_report_body_over_4_kib_is_413_unread(make_app, keyed, connect,
                                                     sandbox) -> None:
    app = make_app(settings=keyed)
    client = connect(app)
    token = (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    read: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read until the cap
        for _ in range(1000):
            read.append(1)
            yield b" " * 1024
    big = b'{"access_token": "' + b"x" * 5000 + b'"}'
    for body in (big, chunks()):
        resp = await client.post(INVALID_URL, headers={**AUTH, "content-type":
                                                       "application/json"}, content=body)
        assert resp.status_code == 413, resp.text
        assert "x" * 16 not in resp.text and token not in resp.text
    assert len(read) <= 6  # stopped a little past 4 KiB, not read whole
    assert counted(app, account="default", caller="other", action="invalid",
                   outcome="too_large") == 2
    # Just under the cap is read: a report with whitespace around it is answered.
    fits = b'{"access_token": "' + token.encode() + b'"}' + b" " * 3900
    resp = await client.post(INVALID_URL, headers={**AUTH, "content-type": "application/json"},
                             content=fits)
    assert resp.status_code == 200, resp.text
    assert sandbox.token_requests == 2  # it was the current one: expired and fetched again


@pytest.mark.parametrize("how", ["stalls", "leaves", "bad_length"])
async def test_a_report_body_that_stalls_or_leaves_gets_no_5xx(make_app, keyed, monkeypatch,
                                                              how) -> None:
    # Read as a push's body is: bounded in time, a client that leaves is no error.
    monkeypatch.setattr(authority_module, "BODY_WAIT", 0.2)
    app = make_app(settings=keyed)
    length = b"12x" if how == "bad_length" else b"40"
    scope = {"type": "http", "method": "POST", "path": INVALID_URL, "raw_path":
             INVALID_URL.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("wxhook", 80), "client": ("127.0.0.1", 123), "http_version": "1.1",
             "headers": [(b"authorization", AUTH["Authorization"].encode()),
                         (b"content-type", b"application/json"),
                         (b"content-length", length)]}
    first = [{"type": "http.request", "body": b'{"access_token": ', "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if first:
            return first.pop()
        if how == "leaves":
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 5)
    status = sent[0]["status"]
    assert status == {"stalls": 408, "leaves": 400, "bad_length": 400}[how], sent
    if how == "stalls":
        assert counted(app, account="default", caller="other", action="invalid",
                       outcome="slow_body") == 1


@pytest.mark.parametrize("body", [
    b'{"access_token": ["TOKEN"]}', b'{"access_token": {"value": "TOKEN"}}',
    b'{"token": "TOKEN"}', b'{"access_token": "TOKEN", ', b'"TOKEN"'])
async def test_a_bad_report_is_422_without_its_body(make_app, keyed, connect, sandbox,
                                                    body) -> None:
    app = make_app(settings=keyed)
    client = connect(app)
    token = (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    resp = await client.post(INVALID_URL, headers={**AUTH, "content-type": "application/json"},
                             content=body.replace(b"TOKEN", token.encode()))
    assert resp.status_code == 422, resp.text
    assert token not in resp.text and token[:16] not in resp.text
    problems = resp.json()["detail"]
    assert problems and all(set(p) == {"loc", "msg", "type"} for p in problems)
    assert counted(app, account="default", caller="other", action="invalid",
                   outcome="bad_request") == 1
    assert sandbox.token_requests == 1  # nothing expired


async def test_the_apps_other_routes_keep_their_own_answers(make_app, keyed, connect) -> None:
    # The internal router's own 413 and 422 leave the app's handlers as they were.
    app = make_app(settings=keyed)
    assert RequestValidationError in app.exception_handlers
    assert app.exception_handlers[RequestValidationError] is \
        FastAPI().exception_handlers[RequestValidationError]


# ------------------------------------------------------------------- two instances, one Redis


@pytest.mark.redis
async def test_two_instances_and_a_caller_share_one_upstream_fetch(make_app, keyed, connect,
                                                                   sandbox, make_push,
                                                                   redis_stores) -> None:
    stores = redis_stores(2)
    apps = [make_app(settings=keyed, store=store) for store in stores]
    clients = [connect(app) for app in apps]
    sandbox.latency = 0.03  # an upstream that takes a while: the fetches would overlap

    def subscribes(tag: str) -> list[Any]:
        return [push(clients[i % 2], make_push("subscribe",
                                               openid=f"o{tag}{i:0{27 - len(tag)}d}"))
                for i in range(20)]

    def fetches() -> list[Any]:
        return [c.get(TOKEN_URL, headers={**AUTH, "X-Wxhook-Caller": "crm"})
                for c in clients for _ in range(5)]

    # Pushes through /wechat on both instances while the CRM asks both for the token.
    results = await asyncio.gather(*subscribes("Before"), *fetches())
    replies, answers = results[:20], results[20:]
    assert all(greeting(r).startswith("Welcome, Follower-") for r in replies)
    assert {r.status_code for r in answers} == {200}
    first = {r.json()["access_token"] for r in answers}
    assert len(first) == 1
    assert sandbox.token_requests == 1

    # WeChat kills it (another system's force_refresh); the CRM reports it at A.
    sandbox.invalidate_tokens()
    (old,) = first
    resp = await clients[0].post(INVALID_URL, headers=AUTH, json={"access_token": old})
    new = resp.json()["access_token"]
    assert new != old and sandbox.token_requests == 2
    # B hands out the new token too (it follows the store), and its pushes, whose
    # first call still carries the old one, adopt it without a fetch.
    results = await asyncio.gather(*subscribes("After"), *fetches())
    assert all(greeting(r).startswith("Welcome, Follower-") for r in results[:20])
    assert {r.json()["access_token"] for r in results[20:]} == {new}
    assert sandbox.token_requests == 2


@pytest.mark.redis
async def test_a_report_at_another_instance_compares_with_the_stored_token(
        make_app, keyed, connect, sandbox, redis_stores) -> None:
    now = [1_000_000.0]  # one clock for both instances, as NTP gives them
    stores = redis_stores(2)
    apps = [make_app(settings=keyed, store=store, wall_clock=lambda: now[0])
            for store in stores]
    a, b = (connect(app) for app in apps)
    first = (await a.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    assert (await b.get(TOKEN_URL, headers=AUTH)).json()["access_token"] == first
    sandbox.invalidate_tokens()
    second = (await a.post(INVALID_URL, headers=AUTH,
                           json={"access_token": first})).json()["access_token"]
    assert sandbox.token_requests == 2
    # B still holds the first in memory; the second, A's, is rejected an hour later and
    # reported at B: it is the current one for the deployment, so B expires it and
    # fetches once.
    now[0] += 3600
    sandbox.invalidate_tokens()
    resp = await b.post(INVALID_URL, headers=AUTH, json={"access_token": second})
    third = resp.json()["access_token"]
    assert third not in (first, second) and sandbox.token_requests == 3
    assert counted(apps[1], account="default", caller="other", action="invalid",
                   outcome="expired") == 1
    # A hands out B's token without a fetch of its own.
    assert (await a.get(TOKEN_URL, headers=AUTH)).json()["access_token"] == third
    assert sandbox.token_requests == 3


@pytest.mark.redis
async def test_a_token_rejected_right_after_a_refresh_pauses_every_instance(
        make_app, keyed, connect, sandbox, redis_stores) -> None:
    now = [1_000_000.0]  # one clock for the three instances, as NTP gives them
    stores = redis_stores(3)
    apps = [make_app(settings=keyed, store=store, wall_clock=lambda: now[0])
            for store in stores]
    a, b, c = (connect(app) for app in apps)
    first = (await a.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    sandbox.invalidate_tokens()
    second = (await a.post(INVALID_URL, headers=AUTH,
                           json={"access_token": first})).json()["access_token"]
    assert sandbox.token_requests == 2  # rejected once: refreshed at once
    assert (await b.get(TOKEN_URL, headers=AUTH)).json()["access_token"] == second
    # Its successor is rejected too, seconds after A fetched it, and reported at B: the
    # second in a row for the deployment, though the first B sees. B pauses.
    now[0] += 5
    sandbox.invalidate_tokens()
    resp = await b.post(INVALID_URL, headers=AUTH, json={"access_token": second})
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "30"
    assert counted(apps[1], account="default", caller="other", action="invalid",
                   outcome="backoff") == 1
    # A (which holds the rejected token) and C (which never had one) pause as well:
    # nothing is fetched anywhere until the pause is over.
    now[0] += 10
    for client in (a, c):
        resp = await client.get(TOKEN_URL, headers=AUTH)
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "20"
    assert sandbox.token_requests == 2
    for app in (apps[0], apps[2]):
        status = app.state.tokens.status()
        assert status["error"]["errcode"] == 40001 and status["retry_in_s"] == 20
    now[0] += 21  # over: one fetch for the deployment
    third = (await c.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
    assert third not in (first, second)
    for client in (a, b):
        assert (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"] == third
    assert sandbox.token_requests == 3
    # Rejected at once again, at A this time: the run goes on, the pause doubles.
    now[0] += 5
    sandbox.invalidate_tokens()
    resp = await a.post(INVALID_URL, headers=AUTH, json={"access_token": third})
    assert resp.status_code == 503 and resp.headers["retry-after"] == "60"
    assert (await b.get(TOKEN_URL, headers=AUTH)).headers["retry-after"] == "60"
    assert sandbox.token_requests == 3


@pytest.mark.redis
async def test_a_token_redis_lost_is_put_back_not_fetched_again(make_app, keyed, connect,
                                                               sandbox, tmp_path) -> None:
    """Redis down (each instance on its own memory), then back empty: no instance fetches
    another token, which would cut the others' copies short; the one they hold is the
    deployment's again."""
    from wxhook.server.store.redis import RedisStore

    with redis_server(tmp_path) as srv:
        stores = [RedisStore(f"redis://127.0.0.1:{srv.port}/0", probe_interval=0.05)
                  for _ in range(2)]
        try:
            apps = [make_app(settings=keyed, store=store) for store in stores]
            a, b = (connect(app) for app in apps)
            first = (await a.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
            assert (await b.get(TOKEN_URL, headers=AUTH)).json()["access_token"] == first
            srv.stop()
            assert (await a.get(TOKEN_URL, headers=AUTH)).json()["access_token"] == first
            assert stores[0].down_since is not None  # served from its own memory
            srv.start()  # empty: --save ""
            for _ in range(100):
                if stores[0].down_since is None:
                    break
                await asyncio.sleep(0.05)
            for client in (b, a):
                assert (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"] \
                    == first
            assert sandbox.token_requests == 1
            stored = await stores[1].get(f"wxhook:{SANDBOX_APP_ID}:token")
            assert stores[1].down_since is None
            assert stored is not None and stored.decode().startswith(first + "|")
        finally:
            for store in stores:
                await store.aclose()


# --------------------------------------------------------------------------- many accounts


async def test_each_account_of_the_file_by_its_name(tmp_path: Path, upstream, sandbox_app,
                                                    connect, monkeypatch) -> None:
    state: SandboxState = sandbox_app.state.sandbox
    for acct in (SHOP, NEWS):
        state.add_account(acct["app_id"], acct["secret"])
    path = tmp_path / "accounts.yaml"
    path.write_text("accounts:\n" + "".join(
        f"  - {{name: {a['name']}, app_id: {a['app_id']}, app_secret: {a['secret']}, "
        f"token: tok{a['name']}}}\n" for a in (SHOP, NEWS)), encoding="utf-8")
    settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(path),
                             WECHAT_API_BASE="http://sandbox", WXHOOK_INTERNAL_KEY=KEY)
    app = create_app(settings, http=upstream, store=MemoryStore(), metrics=Metrics())
    client = connect(app)
    tokens = {}
    for acct in (SHOP, NEWS):
        resp = await client.get(f"/internal/accounts/{acct['name']}/token", headers=AUTH)
        assert resp.status_code == 200, resp.text
        tokens[acct["app_id"]] = resp.json()["access_token"]
        # The token wxhook's own calls for that account use.
        assert app.state.hub.bundle(acct["name"]).tokens.current == tokens[acct["app_id"]]
    assert len(set(tokens.values())) == 2
    assert dict(state.token_calls) == {SHOP["app_id"]: 1, NEWS["app_id"]: 1}
    for unknown in ("default", "nosuch", "x" * 300):
        with capture_logs() as logs:
            resp = await client.get(f"/internal/accounts/{unknown}/token", headers=AUTH)
        assert resp.status_code == 404
        assert unknown not in str(logs)  # the name is the caller's: its length only
    # Without the key, a name is not even looked up: 401 whether it exists or not.
    for name in ("shop", "attacker-chosen"):
        assert (await client.get(f"/internal/accounts/{name}/token")).status_code == 401
    # Labels: the file's names, and "other" for anything else.
    assert counted(app, account="other", caller="other", action="get",
                   outcome="unauthorized") == 1
    assert counted(app, account="shop", caller="other", action="get", outcome="ok") == 1
    assert counted(app, account="other", caller="other", action="get",
                   outcome="unknown_account") == 3
    families = {s.labels["account"] for f in app.state.metrics.registry.collect()
                for s in f.samples if s.name == "wxhook_internal_token_requests_total"}
    assert families == {"shop", "news", "other"}


async def test_the_accounts_app_is_off_without_a_key(tmp_path, upstream, connect) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text(f"accounts:\n  - {{name: shop, app_id: {SHOP['app_id']}, "
                    f"app_secret: {SHOP['secret']}, token: tokshop}}\n", encoding="utf-8")
    settings = load_settings(_env_file=None, WXHOOK_ACCOUNTS=str(path),
                             WECHAT_API_BASE="http://sandbox")
    client = connect(create_app(settings, http=upstream, store=MemoryStore()))
    for url in ("/internal/accounts/shop/token", "/internal/docs", "/internal/openapi.json"):
        assert (await client.get(url, headers=AUTH)).status_code == 404


# ---------------------------------------------------------------- limits, labels and logs


async def test_more_than_the_limit_from_one_address_is_429(make_app, make_settings, connect,
                                                           sandbox) -> None:
    app = make_app(settings=make_settings(WXHOOK_INTERNAL_KEY=KEY, WXHOOK_INTERNAL_LIMIT=3))
    client = connect(app, client=("10.1.2.3", 5000))
    assert (await client.get(TOKEN_URL, headers={"Authorization": "Bearer wrong"})
            ).status_code == 401  # wrong keys count too: no guessing at full speed
    for _ in range(2):
        assert (await client.get(TOKEN_URL, headers=AUTH)).status_code == 200
    refused = await client.get(TOKEN_URL, headers=AUTH)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "access_token" not in refused.text
    # Another address has its own count.
    assert (await connect(app, client=("10.1.2.4", 5000)).get(TOKEN_URL, headers=AUTH)
            ).status_code == 200
    assert counted(app, account="default", caller="other", action="get",
                   outcome="rate_limited") == 1


async def test_the_caller_label_is_bounded(make_app, keyed, connect) -> None:
    app = make_app(settings=keyed)
    client = connect(app)

    async def ask(caller: str, headers: dict[str, str] = AUTH) -> None:
        await client.get(TOKEN_URL, headers={**headers, "X-Wxhook-Caller": caller})

    await ask("crm")
    await ask("Not A Name!")
    await ask("x" * 33)
    await ask("intruder", headers={"Authorization": "Bearer nope"})  # no key: no label
    for i in range(authority_module.MAX_CALLERS + 5):
        await ask(f"bulk-{i}")
    callers = {s.labels["caller"] for f in app.state.metrics.registry.collect()
               for s in f.samples if s.name == "wxhook_internal_token_requests_total"}
    assert "crm" in callers and "intruder" not in callers
    assert callers <= {"other"} | {f"bulk-{i}" for i in range(40)} | {"crm"}
    assert len(callers - {"other"}) == authority_module.MAX_CALLERS


async def test_no_token_or_key_in_the_logs_and_refusals_are_bounded(make_app, keyed, connect,
                                                                    sandbox) -> None:
    app = make_app(settings=keyed)
    client = connect(app)
    with capture_logs() as logs:
        token = (await client.get(TOKEN_URL, headers=AUTH)).json()["access_token"]
        sandbox.invalidate_tokens()
        new = (await client.post(INVALID_URL, headers=AUTH,
                                 json={"access_token": token})).json()["access_token"]
        await client.post(INVALID_URL, headers=AUTH, json={"access_token": "stale-" + token})
        for _ in range(40):  # a flood of wrong keys, each sending a token-like value
            await client.get(TOKEN_URL, headers={"Authorization": f"Bearer {token}"})
    text = str(logs)
    for secret in (token, new, KEY, token[:16], new[:16]):
        assert secret not in text
    assert any(line["event"] == "internal_token_reported_invalid" for line in logs)
    assert len([line for line in logs if line["event"] == "internal_unauthorized"]) <= 10


async def test_the_docs_are_there_only_with_the_key(make_app, keyed, connect) -> None:
    app = make_app(settings=keyed)
    client = connect(app)
    for path in ("/internal/docs", "/internal/openapi.json"):
        resp = await client.get(path)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert (await client.get(path, headers={"Authorization": "Bearer " + "k" * 44})
                ).status_code == 401
    docs = await client.get("/internal/docs", headers=AUTH)
    assert docs.status_code == 200 and "/internal/openapi.json" in docs.text
    spec = (await client.get("/internal/openapi.json", headers=AUTH)).json()
    assert set(spec["paths"]) == {"/internal/accounts/{name}/token",
                                  "/internal/accounts/{name}/token/invalid"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["TokenAnswer"]["properties"]) == {"access_token", "expires_in"}
    assert schemas["InvalidReport"]["required"] == ["access_token"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    report = spec["paths"]["/internal/accounts/{name}/token/invalid"]["post"]["responses"]
    assert {"413", "422"} <= set(report)
    assert set(schemas["BadField"]["properties"]) == {"loc", "msg", "type"}  # no input
    # Counted like the token routes: refused and answered.
    assert counted(app, account="-", caller="other", action="docs", outcome="ok") == 2
    assert counted(app, account="-", caller="other", action="docs",
                   outcome="unauthorized") == 4
    # The app's own docs stay off.
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert (await client.get(path, headers=AUTH)).status_code == 404


# ------------------------------------------------------------------ real servers, the CLI


@pytest.mark.slow
@pytest.mark.redis
async def test_two_servers_one_redis_a_crm_and_one_fetch(tmp_path: Path) -> None:
    # What an owner runs: two `wxhook serve` on one Redis, WeChat pushing to both, and a CRM
    # asking both for the token; then WeChat kills the token and the CRM reports it.
    def subscribe(openid: str) -> Push:
        return sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid)

    with isolated_redis(tmp_path) as redis, sandbox_process(latency="0.03") as sb, \
            server_process(sb, REDIS_URL=redis, WXHOOK_INTERNAL_KEY=KEY) as a, \
            server_process(sb, REDIS_URL=redis, WXHOOK_INTERNAL_KEY=KEY) as b:
        crm = {**AUTH, "X-Wxhook-Caller": "crm"}
        async with httpx.AsyncClient(timeout=20) as c:
            async def wave(tag: str) -> set[str]:
                pushes = [c.post(f"{(a, b)[i % 2]}/wechat", params=p.params, content=p.body)
                          for i, p in enumerate(subscribe(f"o{tag}{i:0{27 - len(tag)}d}")
                                                for i in range(20))]
                asks = [c.get(base + TOKEN_URL, headers=crm) for base in (a, b) * 5]
                answers = await asyncio.gather(*pushes, *asks)
                for r in answers[:20]:
                    assert greeting(r).startswith("Welcome, Follower-"), r.text
                assert {r.status_code for r in answers[20:]} == {200}
                return {r.json()["access_token"] for r in answers[20:]}

            async def token_requests() -> int:
                return int((await c.get(sb + "/_sandbox/stats")).json()["token_requests"])

            (first,) = await wave("Before")
            assert await token_requests() == 1
            await c.post(sb + "/_sandbox/invalidate")
            resp = await c.post(a + INVALID_URL, headers=crm, json={"access_token": first})
            assert resp.status_code == 200 and resp.json()["access_token"] != first
            assert await wave("After") == {resp.json()["access_token"]}
            assert await token_requests() == 2
            for base in (a, b):
                wrong = await c.get(base + TOKEN_URL, headers={"Authorization": "Bearer no"})
                assert wrong.status_code == 401


def run_cli(*args: str, key: str = KEY, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`wxhook token ...` as an operator runs it (in an empty directory: no .env)."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
           "WXHOOK_INTERNAL_KEY": key}
    return subprocess.run([WXHOOK, "token", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.slow
def test_wxhook_token_against_a_running_server(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with sandbox_process(appid=SANDBOX_APP_ID, secret=SANDBOX_SECRET) as sb, \
            server_process(sb, log_path=log, WXHOOK_INTERNAL_KEY=KEY) as url:
        shown = run_cli("show", "--url", url)
        assert shown.returncode == 0, shown.stderr
        token = shown.stdout.strip()
        assert len(token) > 20 and "expires in" in shown.stderr
        again = run_cli("show", "--url", url, "--account", "default")
        assert again.stdout.strip() == token
        # WeChat kills it (another system's force_refresh); reported, read from standard
        # input, the one to use now is a new one.
        httpx.post(sb + "/_sandbox/invalidate").raise_for_status()
        done = run_cli("invalidate", "--url", url, "-", stdin=token + "\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() not in ("", token)
        stats = httpx.get(sb + "/_sandbox/stats").json()
        assert stats["token_requests"] == 2
        wrong = run_cli("show", "--url", url, key="w" * 40)
        assert wrong.returncode == 2 and "refused the key" in wrong.stderr
        unknown = run_cli("show", "--url", url, "--account", "nosuch")
        assert unknown.returncode == 2 and "no account 'nosuch'" in unknown.stderr
        assert run_cli("show", "--url", url, key="").returncode == 2  # no key at all
        down = run_cli("show", "--url", f"http://127.0.0.1:{free_port()}")
        assert down.returncode == 1 and "cannot reach" in down.stderr
        metrics = httpx.get(url + "/metrics").text
        assert ('wxhook_internal_token_requests_total{account="default",action="get",'
                'caller="wxhook-cli",outcome="ok"} 2.0') in metrics
    server_log = log.read_text(errors="replace")
    assert token not in server_log and KEY not in server_log
    assert hashlib.sha256(KEY.encode()).hexdigest() not in server_log
