"""The 5-second window: every push answered once, in time; a late reply arrives exactly once.

Budgets here are shortened (WXHOOK_DEADLINE=0.5) so the suite stays fast; the logic is the
same as with the default 4.0 s, which test_faults_e2e.py exercises against a real process.

"In time" is shown by the order of events, not by a wall clock: the deadline's timer and a
handler's sleep are both timers of one event loop, which fires them in the order they are
due however busy the machine is. So a push whose handler overruns by JUST_OVER_BY answered
"success" while that handler had not finished was answered within JUST_OVER_BY of its
deadline.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.support import TOKEN
from wxhook.defaults import default_router
from wxhook.messages import InboundMessage
from wxhook.replies import SUCCESS, Reply, TextReply, TransferCustomerService
from wxhook.router import Context, Router
from wxhook.server.metrics import Metrics
from wxhook.tools.sandbox import Fault
from wxhook.tools.simulate import Push, decode_reply, push_xml, sign_push

DEADLINE = 0.5
JUST_OVER_BY = 0.1
JUST_OVER = DEADLINE + JUST_OVER_BY  # a handler that overruns the deadline by a little
SLOW_ANSWER = TextReply("the slow answer")


def new_openid() -> str:
    return "o" + secrets.token_hex(14)[:27]


class Slow:
    """A router whose text handler takes `delay` s, counts its runs and can fail."""

    def __init__(self, delay: float, *, reply: Reply | None = SLOW_ANSWER,
                 error: Exception | None = None) -> None:
        self.delay, self.reply, self.error = delay, reply, error
        self.runs = 0
        self.finished = 0
        self.router = Router()
        self.router.register(self.handle, msg_types=("text",))
        self.router.include(default_router())

    async def handle(self, msg: InboundMessage, ctx: Context) -> Reply | None:
        self.runs += 1  # the side effect that must happen once per push
        await asyncio.sleep(self.delay)
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.reply


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def build(make_app: Callable[..., Any], make_settings: Callable[..., Any],
          metrics: Metrics) -> Callable[..., Any]:
    def build(router: Router | None = None, *, clock: Callable[[], float] | None = None,
              **env: str) -> Any:
        env.setdefault("WXHOOK_DEADLINE", str(DEADLINE))
        # The wall clock (push timestamps, nonces) moves with the virtual one, from a whole
        # second: the nonce memory counts in whole seconds.
        offset = int(time.time()) - clock() if clock is not None else 0.0
        extra = {} if clock is None else {"clock": clock,
                                          "wall_clock": lambda: offset + clock()}
        return make_app(settings=make_settings(**env), router=router, metrics=metrics, **extra)
    return build


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[Any], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def connect(app: Any) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        clients.append(c)
        return c
    yield connect
    for c in clients:
        await c.aclose()


def text_push(openid: str, text: str = "anything") -> Push:
    return sign_push(push_xml("text", openid=openid, text=text), token=TOKEN, openid=openid)


async def post(client: httpx.AsyncClient, push: Push) -> httpx.Response:
    return await client.post("/wechat", params=push.params, content=push.body)


def slow_answer_to(openid: str) -> dict[str, Any]:
    """SLOW_ANSWER as late delivery sends it (customer-service message)."""
    return {"touser": openid, "msgtype": "text", "text": {"content": SLOW_ANSWER.content}}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"account": "default", **labels}) or 0.0


# -- overrun: "success" in time, the reply later, exactly once ----------------------------------

async def test_overrun_answers_success_in_time_and_delivers_exactly_once(
        build, connect, sandbox, metrics):
    slow = Slow(JUST_OVER)
    app = build(slow.router)
    client = connect(app)
    openid = new_openid()
    r = await post(client, text_push(openid))
    assert r.status_code == 200 and r.content == SUCCESS
    assert slow.finished == 0  # answered at the deadline, not when the handler was done
    assert sandbox.sent == []  # not yet: the handler is still running
    assert await app.state.delivery.drain(5) == 0
    assert sandbox.sent == [slow_answer_to(openid)]
    assert slow.runs == 1
    assert sample(metrics, "wxhook_deadline_fallbacks_total") == 1
    assert sample(metrics, "wxhook_late_deliveries_total", result="sent") == 1


async def test_retries_of_an_overrun_push_are_answered_and_never_send_twice(
        build, connect, sandbox):
    slow = Slow(JUST_OVER)
    app = build(slow.router)
    client = connect(app)
    openid = new_openid()
    push = text_push(openid)
    first = asyncio.create_task(post(client, push))
    await asyncio.sleep(0.1)
    concurrent = await post(client, push)                # while the first try is running
    r1 = await first
    started = time.monotonic()
    later = await post(client, push)                     # after the first was answered
    waited = time.monotonic() - started
    assert [r1.content, concurrent.content, later.content] == [SUCCESS] * 3
    # The deadline settled the claim: a later retry is answered at once. One that waited
    # for the claim would be answered at its own deadline, never sooner than DEADLINE.
    assert waited < DEADLINE
    await app.state.delivery.drain(5)
    assert len(sandbox.sent) == 1 and slow.runs == 1


async def test_greeting_with_a_slow_lookup_says_welcome_in_time_and_nothing_later(
        build, connect, sandbox):
    # Policy for the greeting: "Welcome!" in time beats "Welcome, name!" through custom/send.
    sandbox.add_fault(Fault("/cgi-bin/user/info", latency=2.0))
    app = build()
    client = connect(app)
    openid = new_openid()
    push = sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid)
    r = await post(client, push)
    # The handler's own answer, not the deadline's "success": it gave up on the lookup in time.
    assert decode_reply(r.content, crypto=None)["Content"] == "Welcome!"
    assert app.state.delivery.pending == 0
    await asyncio.sleep(0.3)
    assert sandbox.sent == [] and sandbox.calls["/cgi-bin/message/custom/send"] == 0


async def test_handler_that_overruns_and_then_fails_sends_nothing_and_logs(
        build, connect, sandbox, metrics, capsys):
    app = build(Slow(0.8, error=RuntimeError("boom")).router)
    r = await post(connect(app), text_push(new_openid()))
    assert r.status_code == 200 and r.content == SUCCESS
    await app.state.delivery.drain(5)
    assert sandbox.sent == []
    assert sample(metrics, "wxhook_late_deliveries_total", result="failed") == 1
    assert "late_delivery_failed" in capsys.readouterr().out


async def test_handler_that_overruns_and_returns_none_sends_nothing(build, connect, sandbox):
    app = build(Slow(0.8, reply=None).router)
    r = await post(connect(app), text_push(new_openid()))
    assert r.content == SUCCESS
    await app.state.delivery.drain(5)
    assert sandbox.calls["/cgi-bin/message/custom/send"] == 0


async def test_a_late_reply_with_no_customer_service_form_is_logged_not_lost_silently(
        build, connect, sandbox, metrics, capsys):
    app = build(Slow(0.8, reply=TransferCustomerService()).router)
    await post(connect(app), text_push(new_openid()))
    await app.state.delivery.drain(5)
    assert sandbox.sent == []
    assert sample(metrics, "wxhook_late_deliveries_total", result="failed") == 1
    assert "no customer-service form" in capsys.readouterr().out


async def test_handler_errors_in_time_are_answered_success_not_5xx(build, connect):
    app = build(Slow(0.0, error=ValueError("bug")).router)
    r = await post(connect(app), text_push(new_openid()))
    assert r.status_code == 200 and r.content == SUCCESS


# -- custom/send faults: refused is final, "not sent" is repeated, "maybe sent" is not --------

@pytest.mark.parametrize("errcode", [45015, 45047])
async def test_wechat_refusing_the_late_reply_is_final(build, connect, sandbox, metrics, errcode):
    sandbox.add_fault(Fault("/cgi-bin/message/custom/send", errcode=errcode))
    app = build(Slow(0.7).router)
    await post(connect(app), text_push(new_openid()))
    await app.state.delivery.drain(5)
    assert sandbox.calls["/cgi-bin/message/custom/send"] == 1
    assert sample(metrics, "wxhook_late_deliveries_total", result="refused") == 1


@pytest.mark.parametrize("fault", [Fault("/cgi-bin/message/custom/send", http_status=502, times=1),
                                   Fault("/cgi-bin/message/custom/send", errcode=-1, times=3)],
                         ids=["http-502-once", "busy-three-times"])
async def test_a_send_that_did_not_arrive_is_repeated_once_delivered(build, connect, sandbox,
                                                                    fault):
    sandbox.add_fault(fault)
    app = build(Slow(0.7).router)
    openid = new_openid()
    await post(connect(app), text_push(openid))
    await app.state.delivery.drain(10)
    assert [m["touser"] for m in sandbox.sent] == [openid]


async def test_a_send_that_may_have_arrived_is_not_repeated(build, connect, sandbox, metrics):
    # A timeout after sending: WeChat may have delivered it; a second send could be a duplicate.
    sandbox.add_fault(Fault("/cgi-bin/message/custom/send", latency=1.0, times=1))
    app = build(Slow(0.6).router, WXHOOK_HTTP_TIMEOUT="0.3")
    await post(connect(app), text_push(new_openid()))
    await app.state.delivery.drain(5)
    assert sandbox.calls["/cgi-bin/message/custom/send"] == 1
    assert sample(metrics, "wxhook_late_deliveries_total", result="failed") == 1


async def test_persistent_send_failure_is_bounded(build, connect, sandbox):
    sandbox.add_fault(Fault("/cgi-bin/message/custom/send", http_status=500))
    app = build(Slow(0.6).router)
    await post(connect(app), text_push(new_openid()))
    await app.state.delivery.drain(10)
    assert sandbox.calls["/cgi-bin/message/custom/send"] == 3  # _SEND_TRIES


# -- retries across time and side effects -------------------------------------------------------

async def test_side_effects_happen_once_across_concurrent_and_later_tries(build, connect):
    counting = Slow(0.1, reply=TextReply("counted"))
    app = build(counting.router)
    client = connect(app)
    push = text_push(new_openid())
    answers = await asyncio.gather(*(client.post("/wechat", params=push.params,
                                                 content=push.body) for _ in range(3)))
    later = await client.post("/wechat", params=push.params, content=push.body)
    bodies = {a.content for a in [*answers, later]}
    assert len(bodies) == 1 and b"counted" in bodies.pop()
    assert counting.runs == 1


class VirtualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_dedup_keys_live_at_least_30_seconds(build, connect):
    clock = VirtualClock()
    counting = Slow(0.0, reply=TextReply("once"))
    app = build(counting.router, WXHOOK_DEDUP_TTL="30", clock=clock)
    client = connect(app)
    push = text_push(new_openid())
    first = await client.post("/wechat", params=push.params, content=push.body)
    clock.now += 29.9  # WeChat's third try comes ~10-15 s after the first
    again = await client.post("/wechat", params=push.params, content=push.body)
    assert again.content == first.content and counting.runs == 1
    clock.now += 0.2  # past the TTL: the reply is forgotten, so a repeat is a replay
    late = await client.post("/wechat", params=push.params, content=push.body)
    assert late.status_code == 403 and late.content.startswith(b"replay")
    assert counting.runs == 1


async def test_retry_after_the_first_connection_dropped_gets_the_first_reply(build, connect):
    # The first try's client gives up (WeChat drops it at 5 s) and the in-process transport
    # even cancels the request; the handler still finishes once and the retry gets its bytes.
    counting = Slow(0.3, reply=TextReply("first try's reply"))
    app = build(counting.router, WXHOOK_DEADLINE="1.0")
    client = connect(app)
    push = text_push(new_openid())
    first = asyncio.create_task(client.post("/wechat", params=push.params, content=push.body))
    await asyncio.sleep(0.05)
    first.cancel()
    retry = await client.post("/wechat", params=push.params, content=push.body)
    assert decode_reply(retry.content, crypto=None)["Content"] == "first try's reply"
    assert counting.runs == 1


async def test_dropped_greeting_retry_costs_one_lookup(build, connect, sandbox):
    sandbox.add_fault(Fault("/cgi-bin/user/info", latency=0.25))
    app = build(WXHOOK_DEADLINE="1.0")
    client = connect(app)
    openid = "oDroppedFollower000000000001"
    sandbox.users[openid] = {"nickname": "Dropped"}
    push = sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid)
    first = asyncio.create_task(client.post("/wechat", params=push.params, content=push.body))
    await asyncio.sleep(0.05)
    first.cancel()
    retry = await client.post("/wechat", params=push.params, content=push.body)
    assert decode_reply(retry.content, crypto=None)["Content"] == "Welcome, Dropped!"
    assert sandbox.calls["/cgi-bin/user/info"] == 1


async def test_encrypted_retry_replays_identical_bytes(build, connect, crypto):
    app = build()
    client = connect(app)
    openid = new_openid()
    push = sign_push(push_xml("subscribe", openid=openid), token=TOKEN, openid=openid,
                     crypto=crypto)
    a = await client.post("/wechat", params=push.params, content=push.body)
    b = await client.post("/wechat", params=push.params, content=push.body)
    assert a.content == b.content and b"<Encrypt>" in a.content
    assert decode_reply(a.content, crypto=crypto)["Content"].startswith("Welcome")


async def test_many_slow_pushes_each_answered_in_time(build, connect, sandbox):
    slow = Slow(JUST_OVER)  # "success" for each: its deadline came before its handler's end
    app = build(slow.router)
    client = connect(app)
    openids = [new_openid() for _ in range(30)]
    results = await asyncio.gather(*(post(client, text_push(o)) for o in openids))
    assert all(r.content == SUCCESS for r in results)
    await app.state.delivery.drain(10)
    assert sorted(m["touser"] for m in sandbox.sent) == sorted(openids)
    assert slow.runs == 30
