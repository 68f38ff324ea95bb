"""Upstream faults: every push still answered in time, and what each fault costs upstream.

The cost matters as much as the answer: a fault must not turn into a retry storm against an
API that is already failing (or against a quota that is already spent).

"In time" needs no clock here: the deadline's own answer is "success", so a push answered
"Welcome!" was answered by the greeting, before the deadline. "At once" (the fault itself
answered the lookup, not the greeting giving up on it) keeps a wall-clock bound, AT_ONCE,
which only a push that waited can miss: timers never fire early, so one that waited for the
give-up takes at least GIVE_UP.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support import SANDBOX_APP_ID, SANDBOX_SECRET, TOKEN, free_port
from wxhook.server.metrics import Metrics
from wxhook.tools.sandbox import DEMO_OPENID, Fault, create_sandbox
from wxhook.tools.simulate import Push, decode_reply, push_xml, sign_push

USER_INFO = "/cgi-bin/user/info"
GIVE_UP = 4.0 - 0.25  # the greeting's lookup ends this long after a push (default deadline)
AT_ONCE = GIVE_UP / 2  # seconds: far more than an in-process push needs, however busy


def new_openid() -> str:
    return "o" + secrets.token_hex(14)[:27]


def subscribe(openid: str) -> Push:
    return sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


class Latency:
    """The sandbox's injected latency: a real sleep, counting the calls abandoned during it."""

    def __init__(self) -> None:
        self.abandoned = 0

    async def __call__(self, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:  # the caller gave up on this call
            self.abandoned += 1
            raise


@pytest.fixture
def latency() -> Latency:
    return Latency()


@pytest.fixture
def sandbox_app(latency: Latency) -> Any:
    """conftest's sandbox, with its latency observed."""
    return create_sandbox(appid=SANDBOX_APP_ID, secret=SANDBOX_SECRET, sleep=latency)


@pytest.fixture
async def serve(make_app: Callable[..., Any], make_settings: Callable[..., Any],
                metrics: Metrics) -> AsyncIterator[Callable[..., Any]]:
    """serve(**env) -> (app, client): an app against the sandbox with env overrides."""
    clients: list[httpx.AsyncClient] = []

    def serve(http: httpx.AsyncClient | None = None,
              wall_clock: Callable[[], float] | None = None,
              **env: str) -> tuple[Any, httpx.AsyncClient]:
        kw: dict[str, Any] = {"settings": make_settings(**env), "metrics": metrics}
        if http is not None:
            kw["http"] = http
        if wall_clock is not None:
            kw["wall_clock"] = wall_clock
        app = make_app(**kw)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        clients.append(client)
        return app, client
    yield serve
    for c in clients:
        await c.aclose()


async def greet(client: httpx.AsyncClient, openid: str | None = None) -> tuple[str, float]:
    """Send a subscribe; return the greeting text and how long the answer took."""
    push = subscribe(openid or new_openid())
    started = time.monotonic()
    r = await client.post("/wechat", params=push.params, content=push.body)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    return decode_reply(r.content, crypto=None)["Content"], took


def total_calls(sandbox: Any) -> int:
    return sum(sandbox.calls.values())


# -- errcode -1: bounded backoff inside the budget ------------------------------------------

async def test_busy_once_is_retried_and_the_follower_is_named(serve, sandbox):
    _, client = serve()
    sandbox.add_fault(Fault(USER_INFO, errcode=-1, times=1))
    text, _ = await greet(client, DEMO_OPENID)
    assert text == "Welcome, 刺猬宝宝!"
    assert sandbox.calls[USER_INFO] == 2


async def test_busy_forever_costs_three_calls_and_still_greets_in_time(serve, sandbox):
    _, client = serve()
    sandbox.add_fault(Fault(USER_INFO, errcode=-1))
    text, _ = await greet(client)
    assert text == "Welcome!"  # in time: the deadline's answer would be "success"
    assert sandbox.calls[USER_INFO] == 3  # one try plus two backed-off retries


async def test_busy_backoff_never_runs_past_the_deadline(serve, sandbox):
    # The lookup has 0.35 s (the deadline less the reply's margin): a try, a 0.1 s pause, a
    # second try; the next pause (0.2 s) would end past it, so the lookup ends there, before
    # the greeting's give-up, instead of sleeping through it.
    app, client = serve(WXHOOK_DEADLINE="0.6")
    sandbox.add_fault(Fault(USER_INFO, errcode=-1, latency=0.05))
    text, _ = await greet(client)
    assert text == "Welcome!"
    assert app.state.profiles.in_flight == 0  # the lookup had ended when the answer went out
    assert sandbox.calls[USER_INFO] <= 2


# -- HTTP 5xx, timeouts, refused connections: degrade, do not retry -------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 404])
async def test_http_errors_degrade_to_welcome_one_call_per_push(serve, sandbox, status):
    _, client = serve()
    sandbox.add_fault(Fault(USER_INFO, http_status=status))
    results = [await greet(client) for _ in range(5)]
    assert all(text == "Welcome!" and took < AT_ONCE for text, took in results)
    assert sandbox.calls[USER_INFO] == 5


async def test_a_hanging_upstream_degrades_within_the_budget(serve, sandbox, latency):
    _, client = serve(WXHOOK_DEADLINE="0.8")
    sandbox.add_fault(Fault(USER_INFO, latency=8.0))
    text, _ = await greet(client)
    assert text == "Welcome!"  # in time: the deadline's answer would be "success"
    assert sandbox.calls[USER_INFO] == 1
    assert latency.abandoned == 1  # the hanging call was given up on, not left to run 8 s


async def test_a_hanging_token_endpoint_degrades_within_the_budget(serve, sandbox):
    _, client = serve(WXHOOK_DEADLINE="0.8")
    sandbox.add_fault(Fault("/cgi-bin/stable_token", latency=8.0))
    results = await asyncio.gather(*(greet(client) for _ in range(10)))
    assert all(text == "Welcome!" for text, _ in results)  # not the deadline's "success"
    assert sandbox.token_requests == 1  # single flight, even while it hangs


async def test_refused_connections_degrade_at_once(serve, make_settings):
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    async with httpx.AsyncClient() as http:
        _, client = serve(http=http, WECHAT_API_BASE=dead)
        results = await asyncio.gather(*(greet(client) for _ in range(5)))
    assert all(text == "Welcome!" and took < AT_ONCE for text, took in results)


async def test_token_endpoint_5xx_is_not_hammered(serve, sandbox):
    _, client = serve()
    sandbox.add_fault(Fault("/cgi-bin/stable_token", http_status=500))
    results = await asyncio.gather(*(greet(client) for _ in range(20)))
    results += [await greet(client) for _ in range(5)]
    assert all(text == "Welcome!" for text, _ in results)
    assert sandbox.token_requests == 1  # a short backoff after a failure, then one retry


# -- quota errors open a circuit ------------------------------------------------------------

@pytest.mark.parametrize("errcode", [45009, 45011])
async def test_quota_errors_open_a_circuit(serve, sandbox, metrics, capsys, errcode):
    _, client = serve()
    sandbox.add_fault(Fault(USER_INFO, errcode=errcode))
    results = [await greet(client) for _ in range(10)]
    assert all(text == "Welcome!" and took < AT_ONCE for text, took in results)
    assert sandbox.calls[USER_INFO] == 1  # no retry storm against a spent quota
    assert metrics.registry.get_sample_value("wxhook_circuit_open",
                                             {"account": "default", "api": "user_info"}) == 1
    out = capsys.readouterr().out
    assert "circuit_open" in out and str(errcode) in out
    ready = await client.get("/readyz?verbose")
    assert "user_info" in ready.json()["checks"].get("circuits_open", {})
    assert "circuits_open" in ready.json()["degraded"]


async def test_a_circuit_is_per_api(serve, sandbox):
    app, client = serve()
    sandbox.add_fault(Fault(USER_INFO, errcode=45009))
    await greet(client)
    # Other APIs are unaffected: a late delivery still goes out.
    await app.state.api.send_custom({"touser": DEMO_OPENID, "msgtype": "text",
                                     "text": {"content": "hi"}})
    assert len(sandbox.sent) == 1


# -- dead tokens and the bound on one push's upstream cost ----------------------------------

async def test_a_dead_token_is_replaced_once(serve, sandbox):
    _, client = serve()
    await greet(client)  # warm: token cached
    before = sandbox.token_requests
    sandbox.invalidate_tokens()
    text, _ = await greet(client, DEMO_OPENID)
    assert text == "Welcome, 刺猬宝宝!"
    assert sandbox.token_requests == before + 1


@pytest.mark.parametrize("faults", [
    [Fault(USER_INFO, errcode=40001)],
    [Fault(USER_INFO, errcode=40001, times=1), Fault(USER_INFO, errcode=-1)],
    [Fault(USER_INFO, errcode=-1, times=2), Fault(USER_INFO, errcode=40001)],
    [Fault(USER_INFO, errcode=42001, times=1), Fault(USER_INFO, http_status=500)],
    [Fault("*", errcode=-1)],
], ids=["dead-forever", "dead-then-busy", "busy-then-dead", "expired-then-500", "all-busy"])
async def test_the_upstream_cost_of_one_push_is_bounded(serve, sandbox, faults):
    # Worst case for one greeting: 2 token requests and 4 user/info calls (one token retry,
    # two busy retries); the answer is still in time.
    _, client = serve()
    for fault in faults:
        sandbox.add_fault(fault)
    text, _ = await greet(client)
    assert text == "Welcome!"  # in time: the deadline's answer would be "success"
    assert sandbox.calls[USER_INFO] <= 4
    assert sandbox.token_requests <= 2
    assert total_calls(sandbox) <= 6


async def test_a_token_rejected_right_after_a_refresh_backs_off_instead_of_looping(
        serve, sandbox, metrics):
    # WeChat answers 40001 for every token, fresh ones included (another system replacing
    # it, a stale copy upstream): refreshing again at once would spend the account's token
    # quota two calls a push.
    _, client = serve()
    sandbox.add_fault(Fault(USER_INFO, errcode=40001))
    sandbox.add_fault(Fault(USER_INFO + "/batchget", errcode=40001))
    results = await asyncio.gather(*(greet(client) for _ in range(20)))
    results += [await greet(client) for _ in range(20)]
    assert all(text == "Welcome!" and took < AT_ONCE for text, took in results), results
    # The cold fetch, one refresh after its token was rejected, then the back-off.
    assert sandbox.calls["/cgi-bin/stable_token"] == 2
    assert sandbox.calls[USER_INFO] + sandbox.calls[USER_INFO + "/batchget"] == 2
    assert metrics.registry.get_sample_value(
        "wxhook_token_refreshes_total",
        {"account": "default", "reason": "rejected_again", "result": "backoff"}) == 1
    ready = (await client.get("/readyz?verbose")).json()
    token = ready["checks"]["token"]
    assert "token" in ready["degraded"] and token["ok"] is False
    assert token["error"]["errcode"] == 40001 and 0 < token["retry_in_s"] <= 30
    assert sandbox.calls["/cgi-bin/stable_token"] == 2  # /readyz did not refresh either


async def test_the_back_off_ends_and_a_token_that_works_clears_it(serve, sandbox):
    now = [time.time()]
    app, client = serve(wall_clock=lambda: now[0])
    sandbox.add_fault(Fault(USER_INFO, errcode=40001, times=2))
    assert (await greet(client))[0] == "Welcome!"
    assert app.state.tokens.status()["retry_in_s"] == 30  # the default first pause
    now[0] += 30.1
    text, _ = await greet(client, DEMO_OPENID)
    assert text == "Welcome, 刺猬宝宝!"
    assert sandbox.calls["/cgi-bin/stable_token"] == 3
    assert "error" not in app.state.tokens.status()


# -- wrong credentials, IP not whitelisted --------------------------------------------------

@pytest.mark.parametrize("setup, errcode, hint", [
    ("secret", 40125, "WECHAT_APP_SECRET"),
    ("whitelist", 40164, "whitelist"),
])
async def test_configuration_errors_still_greet_and_do_not_storm(serve, sandbox, setup, errcode,
                                                                 hint):
    if setup == "secret":
        _, client = serve(WECHAT_APP_SECRET="this-is-the-wrong-secret")
    else:
        sandbox.ip_whitelisted = False
        _, client = serve()
    results = await asyncio.gather(*(greet(client) for _ in range(20)))
    assert all(text == "Welcome!" and took < AT_ONCE for text, took in results)
    for _ in range(5):
        ready = (await client.get("/readyz?verbose")).json()
        assert "token" in ready["degraded"]
    token = ready["checks"]["token"]
    assert token["ok"] is False and token["error"]["errcode"] == errcode
    assert hint in token["fix"]
    more = [await greet(client) for _ in range(5)]
    assert all(text == "Welcome!" for text, _ in more)
    assert sandbox.token_requests == 1  # the next try only after the 20 s backoff
    assert sandbox.calls[USER_INFO] == 0


async def test_a_spent_token_quota_backs_off_like_a_configuration_error(serve, sandbox):
    _, client = serve()
    sandbox.add_fault(Fault("/cgi-bin/stable_token", errcode=45009))
    first = await asyncio.gather(*(greet(client) for _ in range(10)))
    await asyncio.sleep(1.1)  # past the short backoff used for transient failures
    later = [await greet(client) for _ in range(3)]
    assert all(text == "Welcome!" for text, _ in [*first, *later])
    assert sandbox.token_requests == 1
